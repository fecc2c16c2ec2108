"""A pydicom decoder plugin on imagecodecs (BSD; libjpeg-turbo 3) for the JPEG transfer syntaxes of 12-bit
CR/DX: JPEG Baseline (1.2.840.10008.1.2.4.50), Extended 12-bit (.51) and Lossless (.57, .70).

pydicom's own plugins leave 12-bit JPEG Extended to pylibjpeg-libjpeg, which is GPL-3; this keeps the
`[dicom]` extra permissive (pylibjpeg-openjpeg, pylibjpeg-rle, pyjpegls, imagecodecs). Registered by
lungseg.runtime.dicom when imagecodecs is installed; without it those syntaxes fail by name like any other
undecodable file.
"""
from __future__ import annotations

from pydicom import uid

try:
    import imagecodecs

    AVAILABLE = bool(imagecodecs.JPEG8.available)
except Exception:  # not installed, or a build without the JPEG codec
    AVAILABLE = False

JPEG_SYNTAXES = (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1)
DECODER_DEPENDENCIES = {syntax: ("imagecodecs",) for syntax in JPEG_SYNTAXES}
PLUGIN = "lungseg-imagecodecs"


def is_available(transfer_syntax: str) -> bool:
    return AVAILABLE and transfer_syntax in DECODER_DEPENDENCIES


def _decode_frame(source: bytes, runner) -> bytes:
    if runner.samples_per_pixel != 1:
        raise NotImplementedError("lungseg's imagecodecs plugin decodes grayscale JPEG only")
    pixels = imagecodecs.jpeg8_decode(source)  # uint8 up to 8 bits, uint16 for 9-16 bits
    return pixels.astype("<u2" if runner.bits_allocated == 16 else "u1", copy=False).tobytes()


def register() -> None:
    """Add the plugin to pydicom's JPEG decoders once (pydicom refuses a second registration)."""
    if not AVAILABLE:
        return
    from pydicom.pixels.decoders import (JPEGBaseline8BitDecoder, JPEGExtended12BitDecoder, JPEGLosslessDecoder,
                                         JPEGLosslessSV1Decoder)

    for decoder in (JPEGBaseline8BitDecoder, JPEGExtended12BitDecoder, JPEGLosslessDecoder, JPEGLosslessSV1Decoder):
        if PLUGIN not in decoder.available_plugins and PLUGIN not in getattr(decoder, "_available", {}):
            try:
                decoder.add_plugin(PLUGIN, (__name__, "_decode_frame"))
            except ValueError:  # already registered
                pass
