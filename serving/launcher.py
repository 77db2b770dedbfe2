"""Run the service as a real ``bentoml serve`` process on a loopback port (demo, tests, benchmarks).

``ServedService`` starts ``python -m bentoml serve serving.service:LeadScoring`` for a work
folder, waits for ``/readyz`` and stops it gracefully (SIGINT, so the prediction log flushes).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from leadscore.config import PROJECT_ROOT

SERVICE_TARGET = "serving.service:LeadScoring"


class ServiceStartError(RuntimeError):
    """The service did not become ready; the message carries the tail of its log."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(workdir: Path, api_key: str, **extra: str) -> dict[str, str]:
    """Environment of a service process on ``workdir`` with ``api_key``."""
    env = dict(os.environ)
    env.update({
        "LEADSCORE_WORKDIR": str(workdir),
        "LEADSCORE_API_KEY": api_key,
        "BENTOML_HOME": str(workdir / "bentoml_home"),
        "BENTOML_DO_NOT_TRACK": "True",
        "PYTHONWARNINGS": "ignore",
    })
    env.update(extra)
    return env


class ServedService:
    """``bentoml serve`` of the project in a subprocess on a free 127.0.0.1 port."""

    def __init__(self, workdir: Path, log_path: Path, api_key: str,
                 target: str = SERVICE_TARGET, **extra_env: str) -> None:
        """Start serving ``target``: the project's service, or a built Bento's tag."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "bentoml", "serve", target,
                   "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=service_env(workdir, api_key, **extra_env),
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def wait_until(self, path: str = "/readyz", timeout: float = 120.0) -> None:
        """Wait until ``GET path`` answers 200; raise ``ServiceStartError`` otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        self.stop()
        raise ServiceStartError(
            f"the service did not answer {path} in {timeout:.0f} s; log tail:\n{tail}"
        )

    def stop(self) -> None:
        """Stop gracefully (SIGINT: BentoML runs the shutdown hooks), then for good."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if not self._log.closed:
            self._log.close()

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> ServedService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
