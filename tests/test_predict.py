import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungseg.cli import main
from conftest import shipped_image

@pytest.fixture
def inputs(tmp_path, real_xray):
    """Real X-rays as users hand them over: several sizes and aspect ratios, RGB, 16-bit, JPEG."""
    folder = tmp_path / "in"
    folder.mkdir()
    image, _ = real_xray
    Image.fromarray(image).save(folder / "plain.png")
    Image.fromarray(image).convert("RGB").save(folder / "plain_rgb.png")
    Image.fromarray(image).resize((300, 420)).save(folder / "tall.png")
    Image.fromarray(image).resize((700, 333)).convert("RGB").save(folder / "wide_rgb.png")
    Image.fromarray(image.astype(np.uint16) * 257).save(folder / "deep16.png")
    Image.fromarray(image).convert("RGB").save(folder / "photo.jpg", quality=90)
    shutil.copy(shipped_image("shenzhen", "CHNCXR_0001_0"), folder / "CHNCXR_0001_0.jpg")
    return folder


def masks_in(folder):
    return [p for p in folder.glob("*.png") if not p.stem.endswith(("_labels", "_overlay", "_probability"))]


def sizes(folder):
    return {p.stem: Image.open(p).size for p in folder.iterdir() if p.suffix in (".png", ".jpg")
            and not p.stem.endswith(("_labels", "_overlay", "_probability"))}


def test_one_binary_mask_per_input_with_the_input_size(tiny_onnx, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(inputs), "--model", str(tiny_onnx), "--output", str(out), "--quiet"]) == 0
    expected = sizes(inputs)
    assert sizes(out) == expected
    for path in masks_in(out):
        mask = np.asarray(Image.open(path))
        assert Image.open(path).mode == "L"
        assert set(np.unique(mask)) <= {0, 255}
    assert "7 masks written, 0 failed" in capsys.readouterr().out


def test_16_bit_and_rgb_inputs_give_the_same_mask_as_8_bit(tiny_onnx, inputs, tmp_path):
    out = tmp_path / "out"
    main(["predict", str(inputs), "--model", str(tiny_onnx), "--output", str(out), "--quiet"])
    plain = np.asarray(Image.open(out / "plain.png"))
    assert np.array_equal(np.asarray(Image.open(out / "deep16.png")), plain)
    assert np.array_equal(np.asarray(Image.open(out / "plain_rgb.png")), plain)


def test_a_corrupt_file_is_reported_and_the_others_still_written(tiny_onnx, inputs, tmp_path, capsys):
    (inputs / "broken.png").write_bytes((inputs / "plain.png").read_bytes()[:300])
    (inputs / "notes.jpg").write_text("not an image")
    out = tmp_path / "out"
    code = main(["predict", str(inputs), "--model", str(tiny_onnx), "--output", str(out), "--quiet"])
    assert code == 1
    assert len(masks_in(out)) == 7
    report = pd.read_csv(out / "report.csv")
    assert len(report) == 9 and report["status"].str.startswith("error").sum() == 2
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "notes.jpg" in captured.err
    assert "7 masks written, 2 failed" in captured.out


def test_missing_model_is_a_clear_error(tmp_path, inputs, capsys):
    code = main(["predict", str(inputs), "--model", str(tmp_path / "none.onnx"), "--output", str(tmp_path / "o")])
    assert code == 3
    assert "none.onnx: model file not found" in capsys.readouterr().err


def test_two_inputs_with_the_same_stem_do_not_overwrite_each_other(tiny_onnx, inputs, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "plain.png").write_bytes((inputs / "tall.png").read_bytes())
    out = tmp_path / "out"
    code = main(["predict", str(inputs / "plain.png"), str(other / "plain.png"), "--model", str(tiny_onnx),
                 "--output", str(out), "--quiet"])
    assert code == 1
    assert Image.open(out / "plain.png").size == (512, 512)  # the first one's mask, kept
    assert "would overwrite" in capsys.readouterr().err


def test_overlay_probabilities_and_report(tiny_onnx, inputs, tmp_path):
    out = tmp_path / "out"
    code = main(["predict", str(inputs / "tall.png"), "--model", str(tiny_onnx), "--output", str(out),
                 "--overlay", "--probabilities", "--quiet"])
    assert code == 0
    overlay = Image.open(out / "tall_overlay.png")
    assert overlay.mode == "RGB" and overlay.size == (300, 420)
    probability = Image.open(out / "tall_probability.png")
    assert probability.size == (300, 420) and probability.mode.startswith("I")
    mask = np.asarray(Image.open(out / "tall.png")) > 0
    assert np.array_equal(np.asarray(probability) / 65535 > 0.5, mask)
    report = pd.read_csv(out / "report.csv")
    assert list(report["file"]) == [str(inputs / "tall.png")]
    row = report.iloc[0]
    assert (row["width"], row["height"]) == (300, 420)
    assert row["lung_fraction"] == pytest.approx(mask.mean(), abs=1e-4)
    assert row["status"] in ("ok", "review")


def test_cuda_device_without_the_cuda_provider_fails_clearly(tiny_onnx, inputs, tmp_path, capsys, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    code = main(["predict", str(inputs), "--model", str(tiny_onnx), "--output", str(tmp_path / "o"),
                 "--device", "cuda"])
    assert code == 3
    assert "no CUDA provider" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_auto_device_names_the_provider_that_ran(tiny_onnx, inputs, tmp_path, capsys):
    main(["predict", str(inputs / "plain.png"), "--model", str(tiny_onnx), "--output", str(tmp_path / "o"),
          "--quiet"])
    assert "on CPUExecutionProvider" in capsys.readouterr().out


def test_a_model_whose_card_asks_for_a_second_pass_segments_a_small_thorax_at_full_input_resolution():
    from lungseg.runtime.decode import Xray
    from lungseg.runtime.predict import Segmenter

    class BrightIsLung:  # the runtime's view of a model: a card's settings and a run function
        image_size, intensity, threshold, postprocess = 32, "none", 0.5, True
        lung_fraction_range, lung_box_share_range = (0.05, 0.6), None

        def __init__(self, lung_crop_margin):
            self.inputs, self.lung_crop_margin = [], lung_crop_margin

        def run(self, inputs):
            self.inputs.append(inputs)
            return np.where(inputs[:, 0] > 0.5, 4.0, -4.0).astype(np.float32)

    pixels = np.zeros((800, 800), np.uint8)
    pixels[300:500, 290:380] = pixels[300:500, 420:510] = 230  # two lungs, a quarter of the film's height
    truth = pixels > 0
    dice = lambda mask: 2 * (mask & truth).sum() / (mask.sum() + truth.sum())  # noqa: E731
    one_pass, two_pass = BrightIsLung(None), BrightIsLung(0.1)
    first, second = (Segmenter(model).predict(Xray(pixels, "png")) for model in (one_pass, two_pass))
    assert len(one_pass.inputs) == 1 and len(two_pass.inputs) == 2
    assert (two_pass.inputs[1] > 0.5).mean() > 3 * (two_pass.inputs[0] > 0.5).mean()
    # At 32 px one input pixel covers 25 film pixels; on the lungs' box (264 px wide) 8.25.
    assert dice(first.mask) < 0.92 and dice(second.mask) > 0.95  # measured: 0.901 and 0.957
    assert second.fields["regions"] == 2 and second.probabilities.shape == (800, 800)
