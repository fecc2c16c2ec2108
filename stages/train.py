"""Stage train: fit the U-Net on the train split, keep the checkpoint that train.keep_weights names, log to MLflow.

dvc.yaml runs it under torchrun (train.nproc processes); only the main process writes the outputs below.
"""
import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from lungseg import checkpoint, distributed, figures, stage, tables, tracking, trainer
from lungseg.config import load_params
from lungseg.runtime import files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "manifest", "pipeline", "checkpoint", "state", "history", "curves", "metrics"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    args = parser.parse_args()

    distributed.die_with_launcher(os.environ)
    params = load_params(args.params)
    result = trainer.train(params, trainer.TrainInputs(args.params, args.manifest, args.pipeline),
                           checkpoint.Destinations(args.checkpoint, args.state, {}), os.environ, Path.cwd())
    if result is None:  # not the main process
        return
    tables.write_csv(args.history, pd.DataFrame(result.history))
    figures.training_curves(result.history, args.curves)
    files.write_json(args.metrics, result.summary)
    with tracking.open_run(result.tracking_uri, run_id=result.run_id):
        tracking.log_metrics(result.summary)
        tracking.log_artifacts([args.history, args.curves, args.metrics, args.checkpoint])


if __name__ == "__main__":
    sys.exit(stage.run(main, "train"))
