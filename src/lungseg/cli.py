"""The `lungseg` command.

`predict` and `serve` run an exported model and import only the runtime (no torch, DVC or MLflow unless the
model is named by an MLflow URI); `promote` sets a registry alias; `ui` and `tracking-server` are for the
training side.

Exit codes: 0 all went well; 1 some inputs failed (each named on stderr and in report.csv) or no X-ray was
found among them; 2 usage errors (argparse); 3 an unusable model or output location (another predict writing
there included), or --seg without its extra (nothing was done), or a failed write stopped the batch.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from collections.abc import Callable

from lungseg import __version__
from lungseg.errors import UserError
from lungseg.runtime import limits
from lungseg.runtime.model_file import DEFAULT_MODEL_PATH

EXIT_OK, EXIT_INPUTS_FAILED, EXIT_USAGE, EXIT_UNUSABLE = 0, 1, 2, 3


def _error(message: object) -> None:
    print(f"error: {message}", file=sys.stderr)


def _load(args: argparse.Namespace):
    """The model named by --model (a path, or an MLflow models:/ or runs:/ URI), loaded and checked."""
    from lungseg.runtime import registry
    from lungseg.runtime.model_file import load_model
    from lungseg.runtime.predict import Segmenter

    return Segmenter(load_model(registry.local_model_path(args.model), device=args.device, threads=args.threads))


def _predict(args: argparse.Namespace) -> int:
    from lungseg.runtime.predict import Options, check_outputs, claim_output, plan, predict_files

    options = Options(overlay=args.overlay, probabilities=args.probabilities, seg=args.seg,
                      patient_fields=args.patient_fields)
    if args.seg and importlib.util.find_spec("highdicom") is None:
        _error("--seg needs highdicom, which is not installed: pip install 'lungseg[dicom]'")
        return EXIT_UNUSABLE
    try:
        segmenter = _load(args)
        jobs = plan(args.inputs, args.output, options.extras(), overwrite=args.overwrite)  # then the folder exists
        with claim_output(args.output):
            # checked again while this run holds the folder: another run may have written there meanwhile
            check_outputs(jobs, args.output, options.extras(), overwrite=args.overwrite)
            summary = predict_files(segmenter, jobs, args.output, options, show_progress=not args.quiet)
    except UserError as err:
        _error(err)
        return EXIT_UNUSABLE
    for problem in summary.failed:
        _error(problem)
    for reason in summary.skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    print(summary.line())
    if summary.stopped:
        _error(f"stopped: {summary.stopped}")
        return EXIT_UNUSABLE
    if not jobs:
        _error("no input files found")
        return EXIT_INPUTS_FAILED
    if summary.written == 0 and not summary.failed:
        _error(f"no X-ray found among the {len(jobs)} input files")
        return EXIT_INPUTS_FAILED
    return EXIT_INPUTS_FAILED if summary.failed else EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from lungseg.runtime.serve import serve

    try:
        segmenter = _load(args)
    except UserError as err:
        _error(err)
        return EXIT_UNUSABLE
    serve(segmenter, args.host, args.port, args.max_bytes, args.body_timeout)
    return EXIT_OK


def _promote(args: argparse.Namespace) -> int:
    from lungseg.runtime import registry

    try:
        registry.promote(str(args.version), args.alias, args.name)
    except UserError as err:
        _error(err)
        return EXIT_UNUSABLE
    print(f"models:/{args.name}@{args.alias} -> version {args.version}")
    return EXIT_OK


def _ui(args: argparse.Namespace) -> int:
    from lungseg import tracking, tracking_server

    problem = tracking_server.listen_problem(args.host, args.port)
    if problem is not None:  # checked first: MLflow's server reports a taken port in its log and still exits 0
        _error(f"cannot listen on {args.host}:{args.port} ({problem}); choose another --port")
        return EXIT_UNUSABLE
    return tracking.run_ui(args.host, args.port)


def _tracking_server(args: argparse.Namespace) -> int:
    from lungseg import tracking_server

    try:
        if args.action == "start":
            state = tracking_server.start(args.dir, args.db_port, args.port, args.workers)
            print(f"MLflow tracking server on PostgreSQL: {state.tracking_uri} "
                  f"(postgres pid {state.postgres_pid} on port {state.database_port}, mlflow pid {state.mlflow_pid})")
            print(f"use it:  export MLFLOW_TRACKING_URI={state.tracking_uri}")
        elif args.action == "stop":
            state = tracking_server.stop(args.dir)
            print(f"stopped mlflow (pid {state.mlflow_pid}) and postgres (pid {state.postgres_pid})")
        else:
            report = tracking_server.status(args.dir)
            print(" ".join(f"{key}={value}" for key, value in report.items()))
            return EXIT_OK if report["mlflow"] and report["postgres"] else EXIT_INPUTS_FAILED
    except UserError as err:
        _error(err)
        return EXIT_UNUSABLE
    return EXIT_OK


def _whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer from low to high (no upper bound when high is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    return parse


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH),
                        help="an exported .onnx file, or an MLflow model URI: models:/lungseg@champion, "
                             "models:/lungseg/3, runs:/<run id>/model (needs lungseg[mlflow])")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when onnxruntime-gpu can use it, else CPU; cuda: fail rather than fall back")
    parser.add_argument("--threads", type=_whole_number(0, os.cpu_count() or 1), default=0,
                        help="ONNX Runtime threads, at most this machine's logical CPUs (0: all cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungseg", description="Lung segmentation on chest X-rays.",
                                     epilog="exit codes: 0 ok, 1 some inputs failed, 2 usage error, 3 unusable "
                                            "model, output location or missing extra, or a failed write stopped "
                                            "the batch")
    parser.add_argument("--version", action="version", version=f"lungseg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="segment the lungs in X-ray files with an exported model")
    predict.add_argument("inputs", nargs="+",
                         help="files or folders (walked recursively): PNG, JPEG, TIFF, DICOM (found by content)")
    predict.add_argument("--output", required=True,
                         help="folder for the results; mirrors the inputs' sub-folders; not an input folder")
    predict.add_argument("--overwrite", action="store_true",
                         help="replace result files already in the --output folder (default: refuse, before any work)")
    _add_model_options(predict)
    predict.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png: the lung outlines")
    predict.add_argument("--probabilities", action="store_true",
                         help="also write <name>_probability.png: 16-bit, value / 65535 = lung probability")
    predict.add_argument("--seg", action="store_true",
                         help="also write <name>.seg.dcm, a DICOM Segmentation, for DICOM inputs (lungseg[dicom])")
    predict.add_argument("--patient-fields", action="store_true",
                         help="copy PatientID, PatientName and AccessionNumber into report.csv (off by default)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(handler=_predict)

    serve = commands.add_parser("serve", help="serve the model over HTTP: a review page at /, POST /segment",
                                epilog="exit codes: 0 stopped by Ctrl-C, 2 usage error, 3 unusable model or "
                                       "address (port in use)")
    _add_model_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    serve.add_argument("--port", type=_whole_number(1, 65535), default=8000, help="port to listen on (default %(default)s)")
    serve.add_argument("--max-bytes", type=_whole_number(1), default=limits.MAX_REQUEST_BYTES,
                       help="largest request body in bytes (default %(default)s: 32 MiB)")
    serve.add_argument("--body-timeout", type=_whole_number(1), default=limits.BODY_TIMEOUT_SECONDS,
                       help="seconds a request's body may take to arrive (default %(default)s)")
    serve.set_defaults(handler=_serve)

    promote = commands.add_parser("promote", help="point a registry alias at a version of the registered model")
    promote.add_argument("version", type=_whole_number(1), help="model version number, e.g. 3")
    promote.add_argument("alias", help="alias to set, e.g. champion")
    promote.add_argument("--name", default="lungseg", help="registered model name (default %(default)s)")
    promote.set_defaults(handler=_promote)

    ui = commands.add_parser("ui", help="open the MLflow UI on this repository's runs (or MLFLOW_TRACKING_URI)")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    ui.add_argument("--port", type=_whole_number(1, 65535), default=5000, help="port (default %(default)s)")
    ui.set_defaults(handler=_ui)

    server = commands.add_parser("tracking-server",
                                 help="start/stop/status of a team MLflow server on PostgreSQL (127.0.0.1 only)")
    server.add_argument("action", choices=["start", "stop", "status"])
    server.add_argument("--dir", required=True, help="the server's folder: database cluster, artifacts, logs, pids")
    server.add_argument("--db-port", type=_whole_number(1, 65535), default=15432,
                        help="PostgreSQL port on 127.0.0.1 (default %(default)s)")
    server.add_argument("--port", type=_whole_number(1, 65535), default=5000,
                        help="MLflow server port on 127.0.0.1 (default %(default)s)")
    server.add_argument("--workers", type=_whole_number(1, 64), default=2,
                        help="MLflow server worker processes (default %(default)s)")
    server.set_defaults(handler=_tracking_server)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name that is not valid UTF-8 is shown escaped, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("lungseg").setLevel(logging.INFO)  # our progress; libraries (highdicom) only warn
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
