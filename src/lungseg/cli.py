"""The `lungseg` command: `predict` and `serve` run the exported model; `ui` opens the MLflow UI;
`tracking-server` starts and stops a team MLflow server on PostgreSQL."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

DEFAULT_MODEL = Path("models/model.onnx")


def _predict(args: argparse.Namespace) -> int:
    from lungseg.errors import UserError
    from lungseg.predict import Segmenter, collect_inputs, predict_files

    try:
        segmenter = Segmenter(args.model, device=args.device, threads=args.threads)
    except (FileNotFoundError, UserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    files, missing = collect_inputs(args.inputs)
    summary = predict_files(segmenter, files, args.output, overlay=args.overlay, probabilities=args.probabilities,
                            show_progress=not args.quiet)
    summary.failed[:0] = missing
    for problem in summary.failed:
        print(f"error: {problem}", file=sys.stderr)
    print(summary.line())
    return 1 if summary.failed or not summary.written else 0


def _serve(args: argparse.Namespace) -> int:
    from lungseg.errors import UserError
    from lungseg.serve import serve

    try:
        serve(args.model, args.host, args.port, args.device, args.threads, args.max_bytes)
    except (FileNotFoundError, UserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _ui(args: argparse.Namespace) -> int:
    from lungseg.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(os.environ, Path.cwd())
    print(f"MLflow UI for {uri} on http://{args.host}:{args.port}")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", args.host, "--port", str(args.port)]
    return subprocess.call(command)


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
            return 0 if report["mlflow"] and report["postgres"] else 1
    except tracking_server.TrackingServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungseg", description="Lung segmentation on chest X-rays.")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="segment the lungs in image files with the exported ONNX model")
    predict.add_argument("inputs", nargs="+", help="image files (PNG/JPEG, 8/16-bit, gray or RGB) or folders")
    predict.add_argument("--model", default=str(DEFAULT_MODEL), help="ONNX model; its .card.json must sit beside it")
    predict.add_argument("--output", required=True, help="folder for the masks: <input stem>.png, 0 or 255")
    predict.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                         help="auto: CUDA when onnxruntime-gpu can use it, else CPU; cuda: fail rather than fall back")
    predict.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    predict.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png: the lung outline")
    predict.add_argument("--probabilities", action="store_true",
                         help="also write <stem>_probability.png: 16-bit, value / 65535 = lung probability")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(handler=_predict)

    serve = commands.add_parser("serve", help="serve the ONNX model over HTTP (POST /segment, GET /health)")
    serve.add_argument("--model", default=str(DEFAULT_MODEL))
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    serve.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    serve.add_argument("--max-bytes", type=int, default=32 * 1024 * 1024, help="largest accepted request body")
    serve.set_defaults(handler=_serve)

    ui = commands.add_parser("ui", help="open the MLflow UI on this repository's runs (or MLFLOW_TRACKING_URI)")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=_ui)

    server = commands.add_parser("tracking-server",
                                 help="start/stop/status of a team MLflow server on PostgreSQL (127.0.0.1 only)")
    server.add_argument("action", choices=["start", "stop", "status"])
    server.add_argument("--dir", required=True, help="the server's folder: database cluster, artifacts, logs, pids")
    server.add_argument("--db-port", type=int, default=15432, help="PostgreSQL port on 127.0.0.1")
    server.add_argument("--port", type=int, default=5000, help="MLflow server port on 127.0.0.1")
    server.add_argument("--workers", type=int, default=2, help="MLflow server worker processes")
    server.set_defaults(handler=_tracking_server)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
