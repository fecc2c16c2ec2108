"""The `lungseg` command itself: version, help, and the exit codes it documents."""
import pytest

from conftest import free_port
from lungseg import __version__
from lungseg.cli import EXIT_INPUTS_FAILED, EXIT_OK, EXIT_UNUSABLE, EXIT_USAGE, build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"lungseg {__version__}"


def test_help_documents_the_exit_codes():
    text = " ".join(build_parser().format_help().split())
    assert ("0 ok, 1 some inputs failed, 2 usage error, 3 unusable model, output location or missing extra, or a "
            "failed write stopped the batch") in text
    assert (EXIT_OK, EXIT_INPUTS_FAILED, EXIT_USAGE, EXIT_UNUSABLE) == (0, 1, 2, 3)


def test_importing_the_command_is_cheap():
    import subprocess
    import sys

    probe = "import sys, lungseg.cli; print(','.join(m for m in sys.modules if m.split('.')[0] in " \
            "('torch', 'onnxruntime', 'mlflow', 'pydicom', 'fastapi', 'cv2')))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""  # each command imports what it needs when it runs


@pytest.mark.parametrize("option, value", [("--port", "99999"), ("--port", "0"), ("--max-bytes", "0"),
                                           ("--body-timeout", "-1"), ("--port", "http")])
def test_serve_options_out_of_range_are_usage_errors(option, value, capsys):
    with pytest.raises(SystemExit) as usage:
        main(["serve", option, value])
    assert usage.value.code == EXIT_USAGE and f"{option}: " in capsys.readouterr().err


def test_ui_on_a_taken_port_says_so_and_fails(capsys):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["ui", "--port", str(port)]) == EXIT_UNUSABLE
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["ui", "--port", "99999"])
    assert usage.value.code == EXIT_USAGE


def test_tracking_server_start_refuses_a_port_bound_by_another_program_before_starting_anything(tmp_path):
    """A port bound but not listening refuses connections, so only a bind finds it taken."""
    import socket

    from lungseg import tracking_server

    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        with pytest.raises(tracking_server.TrackingServerError, match=f"cannot listen on 127.0.0.1:{port} "):
            tracking_server.start(tmp_path / "server", port, free_port())
    assert not (tmp_path / "server").exists()


@pytest.mark.parametrize("argv", [["promote", "abc", "champion"], ["promote", "0", "champion"],
                                  ["tracking-server", "start", "--dir", "x", "--port", "0"],
                                  ["tracking-server", "start", "--dir", "x", "--workers", "0"]])
def test_malformed_registry_and_server_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as usage:
        main(argv)
    assert usage.value.code == EXIT_USAGE
