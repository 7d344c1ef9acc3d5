"""A team's MLflow tracking server: PostgreSQL for runs and the registry, artifacts served by MLflow.

    python -m ops.tracking_server [--state .tracking] [--port 5000]    (or `make tracking-server`)

starts a PostgreSQL cluster in `<state>/postgres` (created on first use, with a generated password in
`<state>/postgres-password`, readable by you only) and `mlflow server` on 127.0.0.1 with proxied
artifact access into `<state>/artifacts`; Ctrl-C stops both. Point any command at it with
`MLFLOW_TRACKING_URI=http://127.0.0.1:5000`. An existing PostgreSQL is used with `--backend-store-uri`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from ops.servers import child_server, mlflow_command

DATABASE = "mlflow"


class ServerError(RuntimeError):
    """A server that could not be found, started or reached; the message says what to do."""


def pg_bin(name: str, debian: Path = Path("/usr/lib/postgresql")) -> str:
    """A PostgreSQL server program: on PATH, or in Debian's /usr/lib/postgresql/<version>/bin (the newest)."""
    found = shutil.which(name)
    versions = sorted(debian.glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    found = found or next((str(v / name) for v in versions if (v / name).is_file()), None)
    if not found:
        raise ServerError(f"PostgreSQL's {name} not found: install the server (Debian: `apt-get install postgresql`; "
                          f"macOS: `brew install postgresql`), or pass --backend-store-uri of a running one")
    return found


def _as_owner(cmd: list[str], owner: str | None) -> list[str]:
    """PostgreSQL refuses to run as root: run it as `owner` (the `postgres` system user) then."""
    return ["runuser", "-u", owner, "--", *cmd] if owner else cmd


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise ServerError("running as root, and there is no `postgres` user to run PostgreSQL as: "
                          "run as another user, or create it (`useradd --system postgres`)") from None
    return "postgres"


@contextmanager
def postgres(state: Path, port: int) -> Iterator[str]:
    """A PostgreSQL cluster in `state`, listening on 127.0.0.1:`port` only (no Unix socket); yields the
    SQLAlchemy URL of its `mlflow` database. Stopped on exit; its data stays for the next start."""
    owner = _server_user()
    data, password_file = state / "postgres", state / "postgres-password"
    state.mkdir(parents=True, exist_ok=True)
    if owner:
        state.chmod(state.stat().st_mode | 0o011)  # the server's user may pass through, not list
        if subprocess.run(["runuser", "-u", owner, "--", "test", "-x", str(state)]).returncode != 0:
            raise ServerError(f"the {owner} user cannot reach {state} (a parent folder is private): "
                              f"put --state where it can, e.g. under /srv or /tmp")
    if not data.exists():
        password_file.write_text(secrets.token_urlsafe(24))
        password_file.chmod(0o600)
        data.mkdir(mode=0o700)
        pwfile = state / ".pwfile"  # initdb reads the password from a file the server's user can read
        shutil.copy(password_file, pwfile)
        if owner:
            shutil.chown(data, owner)
            shutil.chown(pwfile, owner)
        try:
            _run(_as_owner([pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
                            f"--pwfile={pwfile}", "--encoding=UTF8", "--no-locale"], owner), "initdb")
        finally:
            pwfile.unlink()
    password = password_file.read_text().strip()
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories=''"
    _run(_as_owner([pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(data / "server.log"), "-w", "-t", "60",
                    "start"], owner), "pg_ctl start")
    try:
        env = {**os.environ, "PGPASSWORD": password}
        exists = subprocess.run([pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-tAc",
                                 f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"], env=env,
                                capture_output=True, text=True)
        if exists.returncode != 0:
            raise ServerError(f"PostgreSQL on 127.0.0.1:{port} refused the query: {exists.stderr.strip()}")
        if exists.stdout.strip() != "1":
            _run([pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", DATABASE], "createdb", env)
        yield f"postgresql+psycopg://postgres:{password}@127.0.0.1:{port}/{DATABASE}"
    finally:
        subprocess.run(_as_owner([pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], owner),
                       capture_output=True)


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, port: int, host: str = "127.0.0.1",
                  log: Path | None = None) -> Iterator[str]:
    """`mlflow server` with `backend_uri` for runs and models, proxied artifacts in `artifacts`; yields its URL
    once /health answers, and stops it (its whole process group) on exit."""
    artifacts.mkdir(parents=True, exist_ok=True)
    mlflow, env = mlflow_command()
    env["MLFLOW_BACKEND_STORE_URI"] = backend_uri  # not in argv: any local user can read a process's arguments
    cmd = [mlflow, "server", "--artifacts-destination", str(artifacts.resolve()), "--serve-artifacts", "--host", host,
           "--port", str(port), "--workers", "1"]
    url = f"http://{host}:{port}"
    with child_server(cmd, url, "/health", env, log_path=log):
        yield url


def _run(cmd: list[str], what: str, env: dict | None = None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise ServerError(f"{what} failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-2000:]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, default=Path(".tracking"), help="PostgreSQL data and artifacts")
    parser.add_argument("--port", type=int, default=5000, help="the tracking server's port")
    parser.add_argument("--pg-port", type=int, default=5433, help="the PostgreSQL cluster's port (127.0.0.1 only)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address; another exposes the server unauthenticated")
    parser.add_argument("--backend-store-uri", help="an existing database (postgresql://user:pw@host:port/db) "
                                                    "instead of the cluster in --state")
    args = parser.parse_args(argv)
    state = args.state.resolve()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops both servers as Ctrl-C does
    with (nullcontext(args.backend_store_uri) if args.backend_store_uri else postgres(state, args.pg_port)) as backend, \
            mlflow_server(backend, state / "artifacts", args.port, args.host, state / "mlflow-server.log") as url:
        print(f"MLflow tracking server: {url} (runs and models in PostgreSQL, artifacts in {state / 'artifacts'})\n"
              f"  export MLFLOW_TRACKING_URI={url}\nCtrl-C stops it.", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:  # stop both, undisturbed by a second signal
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    main()
