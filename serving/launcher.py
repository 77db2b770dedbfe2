"""Run the service: ``python -m serving.launcher`` (what ``leadscore serve`` becomes) and
``ServedService`` (the demo, tests and benchmarks: that command on a free loopback port).

``python -m serving.launcher [TARGET] [--host H] [--port P] [--metrics-root DIR]`` is
``bentoml serve TARGET`` with one difference: Prometheus' multiprocess files (memory-mapped; the
service's ``/metrics``) live in a folder of their own, made for this start under a RAM-backed
folder (``--metrics-root``; default ``/dev/shm``, else the system temp folder) and removed at
exit — not in ``$BENTOML_HOME`` under the work folder, where a full disk made a write to a mapped
page kill the worker with SIGBUS, and BentoML restarted it every few seconds, silently. Before
anything starts it checks that the metrics folder can hold ``METRICS_MIN_BYTES`` and the work
folder ``WORKDIR_MIN_BYTES`` (allocated, then freed): when one cannot, it prints one line naming
the folder and exits with ``EXIT_CANNOT_START`` (2) rather than starting workers that fail and
are restarted forever. It stays one process (BentoML's arbiter runs in it), so SIGTERM or
SIGINT sent to it stop the whole server; its workers die with it even when it is killed with
SIGKILL (``die_with_server``, called by the service as it starts).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import httpx

from leadscore.config import PROJECT_ROOT

SERVICE_TARGET = "serving.service:LeadScoring"
RAM_ROOT = Path("/dev/shm")
METRICS_PREFIX = "leadscore-metrics-"
# what the metrics files may need: a few 1 MiB sparse files per worker, a handful of pages used
METRICS_MIN_BYTES = 16 * 1024 * 1024
# what the service writes in the work folder as it starts (feature store config, log files)
WORKDIR_MIN_BYTES = 8 * 1024 * 1024
EXIT_CANNOT_START = 2
# set by the launcher for its workers (BentoML starts each in a session of its own, so a
# signal to the launcher's process group does not reach them): see ``die_with_server``
LAUNCHER_PID_ENV = "SERVING_LAUNCHER_PID"
PR_SET_PDEATHSIG = 1


class ServiceStartError(RuntimeError):
    """The service did not become ready; the message carries the tail of its log."""


class NoRoomError(RuntimeError):
    """A folder the server writes at start (metrics, work folder) cannot be made or is full."""


def default_metrics_root() -> Path:
    """``/dev/shm`` (RAM-backed) when writable, else the system temp folder."""
    if RAM_ROOT.is_dir() and os.access(RAM_ROOT, os.W_OK | os.X_OK):
        return RAM_ROOT
    return Path(tempfile.gettempdir())


def _remove_stale(root: Path) -> None:
    """Remove metrics folders left by launchers that are gone (killed with SIGKILL)."""
    pattern = re.compile(re.escape(METRICS_PREFIX) + r"(\d+)-")
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            match = pattern.match(entry.name)
            if match is None or not entry.is_dir():
                continue
            try:
                os.kill(int(match.group(1)), 0)
            except ProcessLookupError:
                shutil.rmtree(entry, ignore_errors=True)
            except OSError:  # alive, another user's
                continue


def prepare_metrics_dir(root: Path | None = None, need: int = METRICS_MIN_BYTES) -> Path:
    """A fresh folder for this start's Prometheus files under ``root``, checked to hold
    ``need`` bytes; raise ``NoRoomError`` (naming the folder) otherwise."""
    root = Path(root) if root is not None else default_metrics_root()
    _remove_stale(root)
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-", dir=root))
    except OSError as exc:
        raise NoRoomError(
            f"cannot create the metrics folder in {root}: {exc.strerror or exc}") from None
    try:
        check_room(path, need)
    except NoRoomError as exc:
        shutil.rmtree(path, ignore_errors=True)
        raise NoRoomError(f"the metrics folder {root} {exc}; free space there or choose "
                          "another with --metrics-root") from None
    return path


def check_room(folder: Path, need: int) -> None:
    """Allocate ``need`` bytes in ``folder`` and free them again; raise ``NoRoomError``
    ("cannot hold N MiB (reason)") when the file system cannot."""
    probe = folder / f".leadscore-space-check-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, need)
        finally:
            os.close(fd)
    except OSError as exc:
        raise NoRoomError(f"cannot hold {need // 2**20} MiB ({exc.strerror or exc})") from None
    finally:
        probe.unlink(missing_ok=True)


def check_workdir_room(need: int = WORKDIR_MIN_BYTES) -> None:
    """The work folder of the settings must have room for what the service writes at start
    (feature store config, prediction log); raise ``NoRoomError`` naming it otherwise. Settings
    that do not load are left for the service to report."""
    from leadscore.config import ConfigError, get_settings

    try:
        workdir = get_settings().workdir
    except ConfigError:
        return
    if workdir.is_dir():
        try:
            check_room(workdir, need)
        except NoRoomError as exc:
            raise NoRoomError(f"the work folder {workdir} {exc}; free space there") from None


def launch_command(target: str = SERVICE_TARGET, host: str = "127.0.0.1", port: int = 3000,
                   metrics_root: Path | None = None) -> list[str]:
    """The command line that serves ``target`` through this launcher."""
    command = [sys.executable, "-m", "serving.launcher", target, "--host", host,
               "--port", str(port)]
    if metrics_root is not None:
        command += ["--metrics-root", str(metrics_root)]
    return command


def die_with_server() -> None:
    """In a worker of this launcher (Linux): be killed when the launcher dies, even by
    SIGKILL, so that no orphan worker keeps serving and holding the port. A no-op elsewhere
    (an in-process app, another OS)."""
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if not launcher or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(launcher):  # the launcher died before the line above
        os.kill(os.getpid(), signal.SIGKILL)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Serve ``target`` with BentoML, its metrics files in a checked folder of their own."""
    parser = argparse.ArgumentParser(prog="python -m serving.launcher",
                                     description="bentoml serve, metrics files kept in RAM")
    parser.add_argument("target", nargs="?", default=SERVICE_TARGET)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--metrics-root", type=Path, default=None)
    args = parser.parse_args(argv)
    # until BentoML's arbiter installs its own handlers: a stop request still cleans up
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        check_workdir_room()
        metrics = prepare_metrics_dir(args.metrics_root)
    except NoRoomError as exc:
        print(f"leadscore serve: cannot start: {exc}", file=sys.stderr, flush=True)
        return EXIT_CANNOT_START
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer
        from bentoml_cli.cli import cli

        # where ``bentoml serve`` points PROMETHEUS_MULTIPROC_DIR for its workers
        BentoMLContainer.prometheus_multiproc_dir.set(str(metrics))
        os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
        cli.main(args=["serve", args.target, "--host", args.host, "--port", str(args.port)],
                 prog_name="bentoml", standalone_mode=False)
    finally:
        shutil.rmtree(metrics, ignore_errors=True)
    return 0


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
    """The service (``python -m serving.launcher``) in a subprocess on a free 127.0.0.1 port."""

    def __init__(self, workdir: Path, log_path: Path, api_key: str,
                 target: str = SERVICE_TARGET, *, metrics_root: Path | None = None,
                 **extra_env: str) -> None:
        """Start serving ``target``: the project's service, or a built Bento's tag;
        ``metrics_root``: where its metrics folder goes (default: ``default_metrics_root``)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = launch_command(target, "127.0.0.1", self.port, metrics_root)
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
        """Stop gracefully (SIGINT: BentoML runs the shutdown hooks), then for good (SIGKILL;
        the workers die with the launcher)."""
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


if __name__ == "__main__":
    sys.exit(main())
