"""Reading whatever X-ray file a user has: by content, with the bit depth kept and the pixel limit enforced."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from lungseg.runtime import limits
from lungseg.runtime.decode import ImageReadError, NotAnImage, decode_xray, read_xray


def test_twelve_bit_data_in_a_sixteen_bit_png_keeps_its_levels(tmp_path, real_xray):
    image = real_xray[0]
    twelve = image.astype(np.uint16) * 16  # 0..4080: 12 significant bits
    Image.fromarray(twelve).save(tmp_path / "twelve.png")
    xray = read_xray(tmp_path / "twelve.png")
    assert xray.bits_stored == 12
    assert len(np.unique(xray.pixels)) > 240  # not squeezed into the 17 levels of a 16-bit scaling
    assert np.abs(xray.pixels.astype(int) - image.astype(int)).max() <= 1


def test_formats_are_recognised_by_content_not_by_name(tmp_path, real_xray):
    image = real_xray[0]
    Image.fromarray(image).save(tmp_path / "film", format="PNG")  # no extension
    Image.fromarray(image).save(tmp_path / "film.tif", format="TIFF")
    Image.fromarray(image).save(tmp_path / "misnamed.png", format="JPEG", quality=95)
    assert np.array_equal(read_xray(tmp_path / "film").pixels, image)
    assert read_xray(tmp_path / "film.tif").source_format == "tiff"
    assert read_xray(tmp_path / "misnamed.png").source_format == "jpeg"
    # other formats PIL could decode are not read through an image's name, as the service refuses them (415)
    for kind, name in (("BMP", "bmp_named.png"), ("GIF", "gif_named.jpg"), ("WEBP", "webp_named.tif")):
        Image.fromarray(image).save(tmp_path / name, format=kind)
        with pytest.raises(ImageReadError, match=f"{name}: not an image file"):
            read_xray(tmp_path / name)
        with pytest.raises(ImageReadError, match="not an image file"):
            decode_xray((tmp_path / name).read_bytes(), "upload")


def test_files_that_are_not_images_are_told_apart_from_broken_images(tmp_path, real_xray):
    (tmp_path / "README").write_text("export notes")
    with pytest.raises(NotAnImage, match="README: not an image"):
        read_xray(tmp_path / "README")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ImageReadError, match="broken.png: unreadable or truncated") as caught:
        read_xray(tmp_path / "broken.png")
    assert not isinstance(caught.value, NotAnImage)


def test_an_empty_or_cut_file_is_named_for_what_it_is(tmp_path, real_xray):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty.png: empty file \(0 bytes\)"):
        read_xray(tmp_path / "empty.png")
    with pytest.raises(ImageReadError, match=r"upload: empty file \(0 bytes\)"):
        decode_xray(b"", "upload")
    buffer = io.BytesIO()
    Image.fromarray(real_xray[0]).save(buffer, format="JPEG", quality=95)
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    with pytest.raises(ImageReadError, match=r"cut.jpg: truncated image file \(the data ends before the image does\)$"):
        read_xray(tmp_path / "cut.jpg")


def test_the_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buffer, format="PNG")  # 16 megapixels in a few kilobytes
    monkeypatch.setattr(limits, "MAX_PIXELS", 10_000_000)
    monkeypatch.setattr("lungseg.runtime.decode.MAX_PIXELS", 10_000_000)
    with pytest.raises(ImageReadError, match="16,000,000 pixels is over the limit of 10,000,000"):
        decode_xray(buffer.getvalue(), "upload")


def test_a_colour_pixel_counts_once_against_the_pixel_limit(monkeypatch):
    buffer = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buffer, format="PNG")  # 10,000 pixels, 30,000 values
    monkeypatch.setattr("lungseg.runtime.decode.MAX_PIXELS", 20_000)
    assert decode_xray(buffer.getvalue(), "upload").pixels.shape == (100, 100)


def test_float_and_rgb_images(tmp_path, real_xray):
    image = real_xray[0]
    Image.fromarray(image.astype(np.float32) * 4.0).save(tmp_path / "float.tif")  # 0..1020: stretched
    stretched = read_xray(tmp_path / "float.tif").pixels
    assert stretched.min() == 0 and stretched.max() == 255
    Image.fromarray(np.stack([image] * 3, -1)).save(tmp_path / "rgb.png")
    assert np.array_equal(read_xray(tmp_path / "rgb.png").pixels, image)
