"""A team MLflow tracking server on PostgreSQL, started and stopped as one unit: `lungseg tracking-server`.

Everything lives in one folder:
    postgres/       the PostgreSQL cluster (initdb on first start), its socket and postmaster.pid
    artifacts/      the artifact store; clients upload and download through the server (mlflow-artifacts:/)
    pgpass          the database password (mode 0600), read by the server through PGPASSFILE, never on a
                    command line or in the environment
    server.json     ports and the process ids this module started; `stop` signals exactly those
    postgres.log, mlflow.log

Both servers bind 127.0.0.1 only. Teams reach it through an SSH tunnel or a reverse proxy that adds
authentication; MLflow's own server has none.
"""
from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from lungseg.errors import UserError

DATABASE = "mlflow"
DATABASE_USER = "lungseg"
HOST = "127.0.0.1"
# PostgreSQL refuses to run as root; as root the cluster is created and run by Debian's `postgres` user.
SERVICE_USER = "postgres"


class TrackingServerError(UserError, RuntimeError):
    """The tracking server could not be started, found or stopped."""


@dataclass(frozen=True)
class ServerState:
    """What `start` wrote to server.json."""

    tracking_uri: str
    database_port: int
    mlflow_port: int
    postgres_pid: int
    mlflow_pid: int


def postgres_programs() -> Path:
    """The folder holding initdb and pg_ctl: on PATH, else the newest Debian /usr/lib/postgresql/<v>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    raise TrackingServerError(
        "PostgreSQL's server programs (initdb, pg_ctl) were not found on PATH or in /usr/lib/postgresql/*/bin; "
        "install Debian's package: apt-get install postgresql"
    )


def _as_service_user() -> list[str]:
    """The prefix that runs a PostgreSQL program as a non-root user (empty when not root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise TrackingServerError(
            f"running as root, but there is no '{SERVICE_USER}' user to run PostgreSQL as "
            f"(Debian's postgresql package creates it); or run as an ordinary user"
        ) from None
    return ["runuser", "-u", SERVICE_USER, "--"]


def _run(command: list[str], what: str, log: Path | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        if log is not None and log.is_file():
            detail += "\n" + log.read_text()[-2000:]
        raise TrackingServerError(f"{what} failed: {detail}")


def listen_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on host:port (taken, no such address, a privileged port), or None if it can.
    Binding tells all three; connecting would only find a port something already answers on."""
    try:
        with socket.create_server((host, port)):
            return None
    except OSError as err:
        return str(err.strerror or err)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _init_cluster(folder: Path, programs: Path) -> None:
    """initdb with password authentication; the password goes to folder/pgpass (0600) for libpq."""
    data = folder / "postgres"
    password = secrets.token_urlsafe(24)
    data.mkdir(mode=0o700)
    pwfile = folder / "initial-password"  # outside the cluster folder, which initdb wants empty
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    prefix = _as_service_user()
    if prefix:
        try:
            # The service user must reach the folder: every parent needs search permission for "other".
            shutil.chown(data, SERVICE_USER)
            shutil.chown(pwfile, SERVICE_USER)
        except PermissionError as err:
            raise TrackingServerError(f"{data}: cannot hand the cluster folder to '{SERVICE_USER}': {err}") from None
    try:
        _run([*prefix, str(programs / "initdb"), "-D", str(data), "-U", DATABASE_USER, "-E", "UTF8",
              "--auth=scram-sha-256", f"--pwfile={pwfile}"], f"initdb in {data}")
    except TrackingServerError:
        shutil.rmtree(data, ignore_errors=True)  # a half-made cluster would block the next start
        raise
    finally:
        pwfile.unlink(missing_ok=True)
    pgpass = folder / "pgpass"
    pgpass.write_text(f"{HOST}:*:*:{DATABASE_USER}:{password}\n")
    pgpass.chmod(0o600)


def _start_postgres(folder: Path, programs: Path, port: int) -> int:
    """pg_ctl start on HOST:port, socket inside the cluster folder; returns the postmaster's pid."""
    data = folder / "postgres"
    log = folder / "postgres.log"
    prefix = _as_service_user()
    if prefix and not log.exists():
        log.touch()
        shutil.chown(log, SERVICE_USER)
    options = f"-c listen_addresses={HOST} -p {port} -k {data}"
    _run([*prefix, str(programs / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
          "start"], f"starting PostgreSQL on {HOST}:{port}", log)
    return int((data / "postmaster.pid").read_text().splitlines()[0])


def _ensure_database(folder: Path, port: int) -> None:
    import psycopg  # the PostgreSQL driver SQLAlchemy, and so MLflow's server, use (extra `team`)

    with psycopg.connect(host=HOST, port=port, user=DATABASE_USER, dbname="postgres",
                         passfile=str(folder / "pgpass"), autocommit=True) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
            connection.execute(f"CREATE DATABASE {DATABASE}")


def database_uri(port: int) -> str:
    """The SQLAlchemy URI of the backend store; the password comes from PGPASSFILE."""
    return f"postgresql://{DATABASE_USER}@{HOST}:{port}/{DATABASE}"


def _start_mlflow(folder: Path, database_port: int, port: int, workers: int, timeout: float) -> int:
    """`mlflow server` in its own session (so stop can signal its workers too); waits for /health."""
    mlflow = Path(sys.executable).parent / "mlflow"
    environment = {**os.environ, "MLFLOW_BACKEND_STORE_URI": database_uri(database_port),
                   "PGPASSFILE": str(folder / "pgpass")}
    log = folder / "mlflow.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [str(mlflow), "server", "--host", HOST, "--port", str(port), "--workers", str(workers),
             "--artifacts-destination", str(folder / "artifacts")],
            env=environment, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=folder,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TrackingServerError(f"mlflow server exited with code {process.returncode}:\n"
                                      f"{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return process.pid
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    _stop_process_group(process.pid)
    raise TrackingServerError(f"mlflow server did not answer on {HOST}:{port} within {timeout:.0f} s; see {log}")


def start(folder: str | Path, database_port: int, mlflow_port: int, workers: int = 2,
          timeout: float = 180.0) -> ServerState:
    """Start PostgreSQL (creating the cluster on first use) and the MLflow server; returns what was started."""
    folder = Path(folder).resolve()
    state_file = folder / "server.json"
    if state_file.is_file():
        previous = read_state(folder)
        if _alive(previous.mlflow_pid) or _alive(previous.postgres_pid):
            raise TrackingServerError(f"{folder}: already running ({previous.tracking_uri}); stop it first")
    for port in (database_port, mlflow_port):
        problem = listen_problem(HOST, port)
        if problem is not None:
            raise TrackingServerError(f"cannot listen on {HOST}:{port} ({problem}); choose another port")
    programs = postgres_programs()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "artifacts").mkdir(exist_ok=True)
    if not (folder / "postgres" / "PG_VERSION").is_file():
        _init_cluster(folder, programs)
    postgres_pid = _start_postgres(folder, programs, database_port)
    try:
        _ensure_database(folder, database_port)
        mlflow_pid = _start_mlflow(folder, database_port, mlflow_port, workers, timeout)
    except BaseException:
        _stop_postgres(postgres_pid)
        raise
    state = ServerState(f"http://{HOST}:{mlflow_port}", database_port, mlflow_port, postgres_pid, mlflow_pid)
    state_file.write_text(json.dumps(asdict(state), indent=2) + "\n")
    return state


def read_state(folder: str | Path) -> ServerState:
    path = Path(folder).resolve() / "server.json"
    try:
        return ServerState(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise TrackingServerError(f"{path}: not found; no server was started from this folder") from None
    except (ValueError, TypeError) as err:
        raise TrackingServerError(f"{path}: not a server state file: {err}") from None


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return not _alive(pid)


def _stop_process_group(pid: int) -> None:
    """SIGTERM to the group the server leads (its workers too), SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        if _wait_gone(pid, grace):
            return


def _stop_postgres(pid: int) -> None:
    """SIGINT is PostgreSQL's 'fast' shutdown: roll back open transactions, write a checkpoint, exit."""
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    if not _wait_gone(pid, 60.0):
        raise TrackingServerError(f"PostgreSQL (pid {pid}) did not stop within 60 s")


def stop(folder: str | Path) -> ServerState:
    """Stop the MLflow server, then PostgreSQL: exactly the processes `start` recorded."""
    state = read_state(folder)
    _stop_process_group(state.mlflow_pid)
    _stop_postgres(state.postgres_pid)
    return state


def status(folder: str | Path) -> dict[str, bool | str]:
    state = read_state(folder)
    return {"tracking_uri": state.tracking_uri, "mlflow": _alive(state.mlflow_pid),
            "postgres": _alive(state.postgres_pid)}
