"""Re-encode the shipped X-rays (data/sources/*/images/*.png) as JPEG, in place, to keep the repository small.

Each 8-bit grayscale PNG becomes <name>.jpg at the given quality (single channel, so no chroma subsampling;
Huffman tables optimised), and the PNG is removed. Masks are never touched: they stay lossless PNG. Prints,
per source, the bytes before and after and the grey-level error of the decoded JPEG against the PNG (mean
absolute and maximum). Re-running it finds no PNG images left and changes nothing.

    .venv/bin/python tools/reencode_jpeg.py --quality 94 data/sources/montgomery data/sources/shenzhen
"""
import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image


def reencode(png: Path, quality: int) -> tuple[int, int, float, int]:
    """PNG -> JPEG beside it, PNG removed; returns (PNG bytes, JPEG bytes, mean abs error, max abs error)."""
    pixels = np.asarray(Image.open(png))
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise SystemExit(f"{png}: expected 8-bit grayscale, got {pixels.dtype} {pixels.shape}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality, optimize=True)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue()))).astype(np.int16)
    error = np.abs(decoded - pixels.astype(np.int16))
    png.with_suffix(".jpg").write_bytes(buffer.getvalue())
    size = png.stat().st_size
    png.unlink()
    return size, len(buffer.getvalue()), float(error.mean()), int(error.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", type=Path, help="source folders holding images/")
    parser.add_argument("--quality", type=int, default=94)
    args = parser.parse_args()
    for source in args.sources:
        results = [reencode(png, args.quality) for png in sorted((source / "images").glob("*.png"))]
        if not results:
            print(f"{source}: no PNG images left to re-encode")
            continue
        before, after = sum(r[0] for r in results), sum(r[1] for r in results)
        print(f"{source}: {len(results)} images, {before / 1e6:.1f} MB PNG -> {after / 1e6:.1f} MB JPEG "
              f"(quality {args.quality}, {after / len(results) / 1e3:.0f} KB each); grey-level error: mean "
              f"{np.mean([r[2] for r in results]):.2f}, max {max(r[3] for r in results)}")


if __name__ == "__main__":
    main()
