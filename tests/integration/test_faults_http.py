"""Faults at the HTTP surface and of the server process, against the real served service.

* random paths (unauthenticated, phone-like) leave ``/metrics`` as it was: one ``other`` series;
* invalid bodies (Unix timestamps, ``true`` for ``city_tier``, keys given twice) get a 422 naming
  the field and one WARNING log line — no traceback, no value — on every route and in every
  state (fast route or BentoML's routing);
* oversized request headers get 431 before the key is read;
* the OpenAPI spec lists the statuses the service answers;
* a full work folder no longer puts the worker in a SIGBUS crash loop (a tmpfs mounted here);
  a metrics folder without room stops the launcher with one line and exit code 2;
* ``leadscore serve`` stopped with SIGTERM leaves no server behind.

The tmpfs tests mount their own small tmpfs and skip (with the reason) where mounting is not
permitted.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest
from pydantic import ValidationError

from serving.launcher import (
    EXIT_CANNOT_START,
    default_metrics_root,
    free_port,
    prepare_metrics_dir,
)
from serving.schemas import BatchRequest, EventsRequest, Submission, parse_request
from tests.integration.service_fixtures import (
    API_KEY,
    KNOWN_PHONE,
    KNOWN_PHONE_DIGITS,
    ServedService,
    ServiceWorkdir,
    run_served,
    submission,
)

AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served(service_workdir: ServiceWorkdir, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServedService]:
    yield from run_served(service_workdir, tmp_path_factory, "http_fault_logs")


@pytest.fixture(scope="module")
def client(served: ServedService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=30) as http:
        yield http


def _lead() -> str:
    return f"L-H-{uuid.uuid4().hex[:12]}"


def _random_paths(n: int, seed: int = 14) -> list[str]:
    """Paths a scanner or a careless client sends: phone-like, e-mail-like, random, long."""
    rng = random.Random(seed)
    paths = []
    for i in range(n):
        phone = f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}"
        paths.append(rng.choice([
            f"/{phone}", f"/u/+86{phone}/profile", f"/lead/{phone}?phone={phone}",
            f"/x{uuid.UUID(int=rng.getrandbits(128)).hex}",
            f"/mail/user{i}@example.com", f"/wp-admin/{i}/setup.php",
            f"/predict/{i}", f"/{'a' * rng.randrange(50, 400)}{i}",
        ]))
    return paths


# ---- 5: metrics only for the routes the service has ----------------------------------------
def test_random_paths_leave_metrics_unchanged(client: httpx.Client) -> None:
    """2,000 unauthenticated requests to random paths: /metrics the same size, no path text."""
    client.get("/no-such-path")  # the "other" series exists from here on
    client.post("/predict", json=submission(_lead()), headers=AUTH)
    before = client.get("/metrics").text
    paths = _random_paths(2000)
    statuses = {client.get(path).status_code for path in paths}
    assert statuses <= {401, 404}, statuses
    after = client.get("/metrics")
    assert after.status_code == 200
    assert abs(len(after.content) - len(before.encode())) < 4096, (len(before), len(after.content))
    for path in paths:
        assert path.split("?")[0] not in after.text, f"request path {path[:40]!r} in /metrics"
    assert 'endpoint="other"' in after.text
    assert 'endpoint="/predict"' in after.text
    assert "leadscore_model_loaded" in after.text  # the service's own metrics still render


def test_a_request_leaves_little_for_the_collector(service_workdir: ServiceWorkdir,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """BentoML's timeout timer keeps each request's context alive for the whole timeout (30 s):
    with a span per request that was ~20 objects, so 10,000 requests to random paths made each
    full garbage collection scan ~200,000 more objects (/predict p99 5 → 17 ms for 30 s). Now
    no span is made: at most 6 objects per request wait for the timer."""
    import asyncio
    import gc

    from starlette.testclient import TestClient

    from leadscore.config import get_settings
    from serving.service import LeadScoring

    monkeypatch.setenv("LEADSCORE_WORKDIR", str(service_workdir.settings.workdir))
    monkeypatch.setenv("LEADSCORE_API_KEY", API_KEY)
    get_settings.cache_clear()

    async def get(app: object, path: str) -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "headers": [],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 3000)}

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            return None

        await app(scope, receive, send)  # type: ignore[operator]

    try:
        app = LeadScoring.to_asgi()
        with TestClient(app):  # the service starts (lifespan)
            loop = asyncio.new_event_loop()
            try:
                for path in _random_paths(50):  # warm-up
                    loop.run_until_complete(get(app, path.split("?")[0]))
                gc.collect()
                before = len(gc.get_objects())
                for path in _random_paths(2000, seed=7):
                    loop.run_until_complete(get(app, path.split("?")[0]))
                gc.collect()
                per_request = (len(gc.get_objects()) - before) / 2000
            finally:
                loop.close()
        assert per_request <= 6, f"{per_request:.1f} objects left per request"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


# ---- 12: validation at the door ------------------------------------------------------------
NOW = datetime.now(UTC)


def _raw(body: dict, **duplicated: object) -> bytes:
    """``body`` as JSON with ``duplicated`` keys given a second time at the top level."""
    text = json.dumps(body)
    extra = "".join(f", {json.dumps(k)}: {json.dumps(v)}" for k, v in duplicated.items())
    return (text[:-1] + extra + "}").encode()


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/predict", json.dumps(submission("L-H-1", submitted_at=int(NOW.timestamp()))).encode(),
     "submitted_at"),
    ("/predict", json.dumps(submission("L-H-2", submitted_at=str(int(NOW.timestamp()))))
     .encode(), "submitted_at"),
    ("/predict", json.dumps(submission("L-H-3", form={"city_tier": True})).encode(),
     "form.city_tier"),
    ("/predict", json.dumps(submission("L-H-4", form={"city_tier": 1.0})).encode(),
     "form.city_tier"),
    ("/predict", _raw(submission("L-H-5"), lead_id="L-H-5b"), "lead_id"),
    ("/predict", _raw(submission("L-H-6"), channel="seo"), "channel"),
    ("/predict_batch", ('{"submissions": [' + _raw(submission("L-H-7"), channel="seo").decode()
                        + "]}").encode(), "submissions.0.channel"),
    ("/events", json.dumps({"events": [{"event_type": "web_visit", "lead_id": "L-H-8",
                                        "event_time": NOW.timestamp()}]}).encode(),
     "events.0.event_time"),
    ("/events", b'{"events": [], "events": [{"event_type": "web_visit"}]}', "events"),
    ("/reload", b'{"model": "x"}', "model"),
])
def test_invalid_input_is_a_422_naming_the_field(client: httpx.Client, served: ServedService,
                                                 path: str, body: bytes, field: str) -> None:
    response = client.post(path, content=body,
                           headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    locations = {".".join(str(p) for p in d["loc"]) for d in response.json()["detail"]}
    assert field in locations, response.text
    assert KNOWN_PHONE not in response.text and KNOWN_PHONE_DIGITS not in response.text


def test_a_refusal_is_one_warning_line_without_values(client: httpx.Client,
                                                      served: ServedService) -> None:
    marker = _lead()
    bad = submission(marker, channel="television", submitted_at=1_700_000_000,
                     form={"city_tier": True, KNOWN_PHONE_DIGITS: 1})
    assert client.post("/predict", json=bad, headers=AUTH).status_code == 422
    assert client.post("/predict", content=_raw(submission(marker), identifiers={}),
                       headers={**AUTH, "Content-Type": "application/json"}).status_code == 422
    time.sleep(0.5)
    log = served.log_text()
    assert "Traceback" not in log and "Exception on /predict" not in log
    lines = [line for line in log.splitlines() if "422 on POST /predict" in line]
    assert lines, log[-2000:]
    assert all("[WARNING]" in line and len(line) < 400 for line in lines), lines
    assert any("submitted_at" in line and "form.city_tier" in line and "form.<key>" in line
               for line in lines), lines
    assert any("identifiers (json_duplicate_key)" in line for line in lines), lines
    for raw in (KNOWN_PHONE, KNOWN_PHONE_DIGITS, "television", "1700000000", marker):
        assert raw not in log, f"{raw!r} in the service log"


def test_both_routing_paths_refuse_alike(service_workdir: ServiceWorkdir,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a model the fast route hands valid bodies to BentoML's routing (503 there);
    invalid ones are still refused at the door, with the same 422 as the served fast route."""
    from starlette.testclient import TestClient

    from leadscore.config import get_settings
    from serving.service import LeadScoring

    monkeypatch.setenv("LEADSCORE_WORKDIR", str(service_workdir.settings.workdir))
    monkeypatch.setenv("LEADSCORE_MODEL_NAME", "no-such-model")
    monkeypatch.setenv("LEADSCORE_API_KEY", API_KEY)
    get_settings.cache_clear()
    headers = {**AUTH, "Content-Type": "application/json"}
    try:
        with TestClient(LeadScoring.to_asgi()) as app:
            assert app.post("/predict", json=submission(_lead()), headers=AUTH
                            ).status_code == 503
            for path, body in [
                ("/predict", _raw(submission(_lead()), channel="seo")),
                ("/predict", json.dumps(submission(_lead(), form={"city_tier": True}))
                 .encode()),
                ("/predict_batch", json.dumps({"submissions": [
                    submission(_lead(), submitted_at=1_700_000_000)]}).encode()),
            ]:
                answer = app.post(path, content=body, headers=headers)
                assert answer.status_code == 422, answer.text
                assert answer.json()["error"].endswith("for Submission") or \
                    answer.json()["error"].endswith("for BatchRequest")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_parse_request_rules() -> None:
    """The door's rules as a function: duplicates anywhere, numeric times, ISO text passes."""
    good = submission("L-H-ok")
    assert parse_request(Submission, json.dumps(good).encode()).lead_id == "L-H-ok"
    nested = json.dumps(good).replace('"email": null', '"email": null, "email": "x@y.cn"')
    with pytest.raises(ValidationError) as caught:
        parse_request(Submission, nested.encode())
    assert [e["loc"] for e in caught.value.errors()] == [("identifiers", "email")]
    for when in ("1700000000", "1.7e9", " 1700000000.5 "):
        with pytest.raises(ValidationError, match="Unix timestamp"):
            parse_request(Submission, json.dumps({**good, "submitted_at": when}).encode())
    z_time = (NOW - timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert parse_request(Submission, json.dumps({**good, "submitted_at": z_time}).encode())
    with pytest.raises(ValidationError):
        parse_request(BatchRequest, b'{"submissions": [{}], "submissions": []}')
    assert parse_request(EventsRequest, json.dumps({"events": [
        {"event_type": "web_visit", "event_time": NOW.isoformat()}]}).encode())


# ---- 12: header size -------------------------------------------------------------------------
def test_oversized_headers_get_431(client: httpx.Client) -> None:
    huge_key = client.post("/predict", json=submission(_lead()),
                           headers={"Authorization": "Bearer " + "k" * 200_000})
    assert huge_key.status_code == 431, huge_key.text[:200]
    assert "headers over" in huge_key.json()["error"]
    cookie = client.get("/healthz", headers={"Cookie": "c=" + "x" * 20_000})
    assert cookie.status_code == 431
    assert client.get("/healthz").status_code == 200


# ---- 12: the spec lists what is answered -----------------------------------------------------
def test_spec_lists_the_statuses_answered(client: httpx.Client) -> None:
    spec = client.get("/docs.json").json()
    listed = {path: set(spec["paths"][path]["post"]["responses"])
              for path in ("/predict", "/predict_batch", "/events", "/reload")}
    headers = {"Content-Type": "application/json"}
    answered = {
        client.post("/predict", json=submission(_lead()), headers=AUTH).status_code,
        client.post("/predict", json={}).status_code,
        client.post("/predict", json={}, headers={"Authorization": "Bearer wrong"}).status_code,
        client.post("/predict", content=b"x" * (3 * 2**20), headers={**AUTH, **headers}
                    ).status_code,
        client.post("/predict", content=b"a=b", headers={
            **AUTH, "Content-Type": "application/x-www-form-urlencoded"}).status_code,
        client.post("/predict", json={"lead_id": 1}, headers=AUTH).status_code,
        client.post("/predict", json={}, headers={"Authorization": "Bearer " + "k" * 20_000}
                    ).status_code,
    }
    assert answered == {200, 401, 403, 413, 415, 422, 431}
    for path, statuses in listed.items():
        assert {str(s) for s in answered} <= statuses, (path, statuses)
        assert "404" not in statuses, (path, statuses)
    assert "ValidationErrorBody" in spec["components"]["schemas"]


# ---- 3: a full disk ------------------------------------------------------------------------
@contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (skip when mounting is not permitted)."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(where)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): "
                    "the disk-full tests need `mount -t tmpfs` (root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path) -> None:
    """Write into ``folder`` until its file system is full."""
    try:
        fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError:
        return  # full already
    try:
        for size in (1 << 20, 4096, 512):
            chunk = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk)
    finally:
        os.close(fd)


def _workers(service: ServedService) -> list[psutil.Process]:
    try:
        children = psutil.Process(service.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]


def _copy_to_tmpfs(source: Path, where: Path) -> Iterator[Path]:
    """``source`` copied onto a tmpfs with 64 MiB to spare; yields the copy."""
    used = sum(f.stat().st_blocks * 512 for f in source.rglob("*") if f.is_file())
    with _tmpfs(where, f"{used // 2**20 + 64}m") as mount:
        workdir = mount / "work"
        shutil.copytree(source, workdir, symlinks=True)
        yield workdir


@pytest.mark.slow
def test_disk_full_while_serving_does_not_crash_the_worker(service_workdir: ServiceWorkdir,
                                                           tmp_path: Path) -> None:
    """The work folder's disk fills up while the service runs, then random paths and
    predictions arrive: the same worker keeps answering /healthz quickly (its metrics files are
    not on that disk), instead of dying of SIGBUS and being restarted every few seconds."""
    with contextmanager(_copy_to_tmpfs)(service_workdir.settings.workdir,
                                        tmp_path / "full") as workdir:
        service = ServedService(workdir, tmp_path / "service.log")
        try:
            service.wait_until("/readyz", timeout=180)
            worker = _workers(service)
            assert len(worker) == 1, worker
            metrics_dir = Path(worker[0].environ()["PROMETHEUS_MULTIPROC_DIR"])
            assert metrics_dir.is_dir() and metrics_dir.parent == default_metrics_root()
            _fill(workdir.parent)
            with httpx.Client(base_url=service.url, timeout=5) as http:
                for i, path in enumerate(_random_paths(1000, seed=3)):
                    http.get(path)
                    if i % 50 == 0:
                        http.post("/predict", json=submission(_lead()), headers=AUTH)
                time.sleep(2)
                started = time.monotonic()
                assert http.get("/healthz").status_code == 200
                assert time.monotonic() - started < 2
                assert http.get("/metrics").status_code == 200
            assert [p.pid for p in _workers(service)] == [worker[0].pid], "the worker restarted"
            (workdir.parent / "filler").unlink()  # room again: the shutdown can store its log
        finally:
            service.stop()
        assert not metrics_dir.exists(), "the metrics folder outlived the service"


@pytest.mark.slow
@pytest.mark.parametrize("full", ["work folder", "metrics folder"])
def test_no_room_at_start_is_one_line_and_exit_2(service_workdir: ServiceWorkdir,
                                                 tmp_path: Path, full: str) -> None:
    """A full work folder or metrics folder at start: one line naming it, exit code 2, no
    worker started (before: workers failing at start, restarted every few seconds)."""
    with contextlib.ExitStack() as stack:
        if full == "work folder":
            workdir = stack.enter_context(contextmanager(_copy_to_tmpfs)(
                service_workdir.settings.workdir, tmp_path / "full"))
            _fill(workdir.parent)
            named, metrics_root = workdir, None
        else:
            workdir = service_workdir.settings.workdir
            named = metrics_root = stack.enter_context(_tmpfs(tmp_path / "tiny", "1m"))
        service = ServedService(workdir, tmp_path / "service.log", metrics_root=metrics_root)
        try:
            code = service.process.wait(timeout=60)
        finally:
            service.stop()
        log = service.log_text()
        assert code == EXIT_CANNOT_START, log[-2000:]
        lines = [line for line in log.splitlines() if line.strip()]
        assert len(lines) == 1, log
        assert "cannot start" in lines[0] and f"{full} {named} cannot hold" in lines[0], log
        if metrics_root is not None:
            assert not any(metrics_root.iterdir()), list(metrics_root.iterdir())


def test_metrics_folders_of_dead_launchers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f"leadscore-metrics-{dead}-abc"
    (stale / "sub").mkdir(parents=True)
    mine = prepare_metrics_dir(tmp_path)
    assert mine.is_dir() and not stale.exists()
    assert prepare_metrics_dir(tmp_path).is_dir() and mine.exists()  # a live launcher's stays


# ---- 4: leadscore serve and SIGTERM --------------------------------------------------------
def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopping_leadscore_serve_stops_the_server(service_workdir: ServiceWorkdir,
                                                   tmp_path: Path, stop_signal: int) -> None:
    port = free_port()
    env = {**os.environ, "LEADSCORE_API_KEY": API_KEY, "PYTHONWARNINGS": "ignore",
           "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("LEADSCORE_WORKDIR", None)
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("leadscore")), "serve", "--workdir",
         str(service_workdir.settings.workdir), "--port", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    family: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert process.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
        family = psutil.Process(process.pid).children(recursive=True)
        assert family, "no server process under leadscore serve"
        process.send_signal(stop_signal)
        process.wait(timeout=45)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (not _port_free(port)
                                                or any(p.is_running() for p in family)):
            time.sleep(0.2)
        alive = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], f"left running after {signal.Signals(stop_signal).name}: {alive}"
        assert _port_free(port), f"port {port} still taken"
    finally:  # whatever happened, leave nothing running
        if process.poll() is None:
            process.kill()
        for leftover in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        process.wait(timeout=30)
        log.close()
