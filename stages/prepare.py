"""Stage prepare: validate every image/mask pair in the source folders, split them, write the manifest."""
import argparse
import sys
from pathlib import Path

from lungseg import data, stage, tables
from lungseg.runtime import files
from lungseg.config import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--problems", required=True, help="list of skipped pairs (on_bad_pair: skip)")
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()

    params = load_params(args.params)
    records, problems = data.collect_records(
        [Path(s) for s in params.prepare.sources], skip_bad=params.prepare.on_bad_pair == "skip"
    )
    records["split"] = data.assign_splits(records, params.prepare.split.model_dump(), params.seed)
    tables.write_manifest(args.manifest, records)
    files.write_text(args.problems, "".join(f"{problem}\n" for problem in problems))
    files.write_json(args.metrics, {**data.split_counts(records), "skipped_pairs": len(problems)})
    if problems:
        print(f"prepare: skipped {len(problems)} bad pairs, listed in {args.problems}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(stage.run(main, "prepare"))
