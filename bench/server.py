"""Run `mlflow models serve` as a child process: for tests, benchmarks and scripts."""

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
def scoring_server(model_uri: str, tracking_uri: str, port: int | None = None, workers: int = 1,
                   startup_timeout: float = 180, log_path: Path | None = None) -> Iterator[Server]:
    """Serve `model_uri` on 127.0.0.1; yield it once /ping answers; always stop it."""
    port = port or free_port()
    bin_dir = Path(sys.executable).parent  # mlflow execs `uvicorn` from PATH: use this environment's
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1",
           "-p", str(port), "-w", str(workers)]
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited with code {proc.returncode} before answering /ping"
                                   + (f"; see {log_path}" if log_path else ""))
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow models serve did not answer /ping within {startup_timeout}s")
            time.sleep(0.25)  # polling interval while waiting for the condition above
        yield Server(url, proc.pid)
    finally:
        _stop(proc)
        if log_path:
            log.close()


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and its workers (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
