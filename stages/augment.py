"""Stage augment: build the albumentations training pipeline from params, save it, draw a preview."""
import argparse
import sys

from lungseg import augment, data, figures, stage, tables
from lungseg.runtime import files
from lungseg.config import load_params

PREVIEW_SIZE = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--preview", required=True)
    args = parser.parse_args()

    params = load_params(args.params)
    pipeline = augment.build_augmentations(params.augment)
    augment.save_pipeline(pipeline, args.pipeline)

    manifest = tables.read_manifest(args.manifest)
    sample = tables.split_rows(manifest, "train").head(params.augment.preview_count)
    images, masks = data.load_arrays(sample, PREVIEW_SIZE)
    preview = figures.augmentation_preview(
        images, masks, augment.load_pipeline(args.pipeline), params.augment.preview_count, params.seed
    )
    files.write_jpeg(args.preview, preview)


if __name__ == "__main__":
    sys.exit(stage.run(main, "augment"))
