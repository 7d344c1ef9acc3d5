"""Servers as child processes (`mlflow models serve`, `mlflow server`): for tests, benchmarks and scripts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import requests


@dataclass(frozen=True)
class Server:
    url: str
    pid: int  # the `mlflow models serve` process; its workers share its process group

    def memory(self) -> dict[str, int]:
        """Resident memory now and at its peak (bytes), summed over the server's processes."""
        total = {"rss": 0, "peak_rss": 0}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[2]) != self.pid:  # field 5: process group
                    continue
                status = dict(line.split(":", 1) for line in (stat.parent / "status").read_text().splitlines())
            except (OSError, ValueError, IndexError):
                continue  # a process that ended meanwhile
            total["rss"] += int(status.get("VmRSS", "0 kB").split()[0]) * 1024
            total["peak_rss"] += int(status.get("VmHWM", "0 kB").split()[0]) * 1024
        return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def child_server(cmd: list[str], url: str, probe: str, env: dict | None = None, startup_timeout: float = 180,
                 log_path: Path | None = None) -> Iterator[subprocess.Popen]:
    """Run `cmd` in its own process group; yield it once GET `url + probe` answers 200; always stop the group."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:] if log_path else "(no log kept)"
                raise RuntimeError(f"{' '.join(cmd[:3])} exited with code {proc.returncode} before answering "
                                   f"{probe}:\n{tail}")
            try:
                if requests.get(url + probe, timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{' '.join(cmd[:3])} did not answer {probe} within {startup_timeout}s")
            time.sleep(0.25)  # polling interval while waiting for the condition above
        yield proc
    finally:
        _stop(proc)
        if log_path:
            log.close()


def mlflow_command() -> tuple[str, dict]:
    """This environment's `mlflow` and an environment where its children find this environment's programs."""
    bin_dir = Path(sys.executable).parent  # mlflow execs `uvicorn` from PATH: use this environment's
    return str(bin_dir / "mlflow"), {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


@contextmanager
def scoring_server(model_uri: str, tracking_uri: str, port: int | None = None, workers: int = 1,
                   startup_timeout: float = 180, log_path: Path | None = None) -> Iterator[Server]:
    """Serve `model_uri` with `mlflow models serve` on 127.0.0.1; yield it once /ping answers; always stop it."""
    port = port or free_port()
    mlflow, env = mlflow_command()
    env.update(MLFLOW_TRACKING_URI=tracking_uri, CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [mlflow, "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
           "-w", str(workers)]
    url = f"http://127.0.0.1:{port}"
    with child_server(cmd, url, "/ping", env, startup_timeout, log_path) as proc:
        yield Server(url, proc.pid)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and its workers (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
