"""Damaged files, a moved work folder and a read-only disk: refused or reported, never trusted.

* ``ingest`` and ``train --csv`` refuse a CSV cut mid-row, NUL bytes and text in another
  encoding, naming file, line and problem (``--encoding gbk`` reads a GBK export); a raw phone
  number in a bad cell is never printed.
* A copied work folder writes its runs and registrations only inside the copy and loads its
  champion from the copy, with the original read-only.
* ``leadscore drift`` on a read-only reports folder exits 4 with one line, no traceback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from commands.main import app
from crm_data.export_files import DamagedFileError
from crm_data.ingest import ingest_batch
from leadscore.config import Settings, get_settings
from training.csv_train import CsvTrainingError, read_export

NOW = datetime(2024, 6, 1, tzinfo=UTC)
SALT = "test-salt"
RAW_PHONE = "13912345678"


def leads_frame(n: int = 6) -> pd.DataFrame:
    """A leads export with raw identifiers and Chinese text, as a CRM writes it."""
    return pd.DataFrame({
        "lead_id": [f"L{i}" for i in range(n)],
        "created_at": ["2024-05-01 10:00:00"] * n,
        "channel": ["sem"] * n, "campaign": ["春季数学"] * n, "landing_page": ["/trial"] * n,
        "grade": ["G3"] * n, "subject": ["math"] * n, "city": ["上海"] * n,
        "city_tier": ["1"] * n, "device": ["ios"] * n, "funnel_step": ["submitted"] * n,
        "email": [""] * n, "phone": [f"138001380{i:02d}" for i in range(n)],
    })


def batch_with(folder: Path, data: bytes, name: str = "leads.csv") -> Path:
    folder.mkdir(parents=True)
    (folder / name).write_bytes(data)
    return folder


def refused(batch: Path, raw: Path, **options: str) -> str:
    with pytest.raises(DamagedFileError) as caught:
        ingest_batch(batch, raw, SALT, now=NOW, **options)
    assert not raw.exists() or not list(raw.glob("*.parquet")), "something was stored"
    return str(caught.value)


# ---- ingest: damaged files ---------------------------------------------------------------
GOOD = leads_frame().to_csv(index=False).encode()
LAST_ROW = GOOD.rstrip(b"\n").rsplit(b"\n", 1)[1]
LAST_LINE = GOOD.count(b"\n")  # the header is line 1


@pytest.mark.parametrize(("cut", "problem"), [
    (len(GOOD) - len(LAST_ROW) + 20, "fields where the header has 13"),  # mid-row
    (len(GOOD) - 4, "no line end"),  # inside the last field (the phone)
])
def test_ingest_refuses_a_file_cut_mid_row(tmp_path: Path, cut: int, problem: str) -> None:
    message = refused(batch_with(tmp_path / "b", GOOD[:cut]), tmp_path / "raw")
    assert "leads.csv" in message and f"line {LAST_LINE}" in message and problem in message
    assert "cut short" in message


def test_ingest_refuses_an_unclosed_quote_and_a_cut_character(tmp_path: Path) -> None:
    message = refused(batch_with(tmp_path / "q", GOOD + b'L9,"2024-05-01 10:00:00,sem\n'),
                      tmp_path / "raw")
    assert f"line {LAST_LINE + 1}" in message and "not closed" in message
    text = leads_frame(1).to_csv(index=False).encode()
    cut = text.index("上".encode()) + 1  # inside a three-byte character
    message = refused(batch_with(tmp_path / "c", text[:cut]), tmp_path / "raw")
    assert "line 2" in message and "cut short" in message


def test_ingest_refuses_nul_bytes(tmp_path: Path) -> None:
    data = GOOD.replace(b"/trial", b"/tr\x00ial", 1)
    message = refused(batch_with(tmp_path / "b", data), tmp_path / "raw")
    assert "leads.csv: line 2" in message and "NUL" in message


def test_ingest_gbk_export_names_the_file_and_suggests_the_encoding(tmp_path: Path) -> None:
    batch = batch_with(tmp_path / "b", leads_frame().to_csv(index=False).encode("gbk"))
    message = refused(batch, tmp_path / "raw")
    assert "leads.csv: line 2 (byte offset" in message and "--encoding gbk" in message
    result = ingest_batch(batch, tmp_path / "raw", SALT, now=NOW, encoding="gbk")
    assert result.appended["leads"] == 6
    stored = pd.read_parquet(tmp_path / "raw" / "leads.parquet")
    assert set(stored["city"]) == {"上海"} and set(stored["campaign"]) == {"春季数学"}


def test_ingest_cli_encoding_option_and_one_line_refusal(tmp_path: Path) -> None:
    batch = batch_with(tmp_path / "b", leads_frame().to_csv(index=False).encode("gbk"))
    runner = CliRunner()
    workdir = tmp_path / "work"
    refused_run = runner.invoke(app, ["ingest", "--from", str(batch), "--workdir", str(workdir)])
    assert refused_run.exit_code == 2, refused_run.output
    assert "--encoding gbk" in refused_run.output and "Traceback" not in refused_run.output
    accepted = runner.invoke(app, ["ingest", "--from", str(batch), "--workdir", str(workdir),
                                   "--encoding", "gbk"])
    assert accepted.exit_code == 0, accepted.output
    get_settings.cache_clear()


def test_a_raw_phone_in_a_bad_cell_is_never_printed(tmp_path: Path) -> None:
    """A phone in a vocabulary column, a number column, and as a lead reference: the rows are
    named by file and line, the values only by shape."""
    leads = leads_frame()
    leads.loc[2, "channel"] = RAW_PHONE
    leads.loc[3, "city_tier"] = f"+86 {RAW_PHONE}"
    events = pd.DataFrame({"event_id": ["E1"], "lead_id": [RAW_PHONE],
                           "event_type": ["web_visit"], "event_time": ["2024-05-01 08:00"],
                           "url": ["/"], "dwell_seconds": ["12"]})
    batch = tmp_path / "b"
    batch.mkdir()
    leads.to_csv(batch / "leads.csv", index=False)
    runner = CliRunner()
    workdir = tmp_path / "work"
    run = runner.invoke(app, ["ingest", "--from", str(batch), "--workdir", str(workdir)])
    assert run.exit_code == 2
    assert "leads.csv line 4 (11 digits)" in run.output  # channel: row 3 is line 4
    assert "leads.csv line 5" in run.output  # city_tier
    # the same phone as a lead reference of a valid batch's events
    leads_frame().to_csv(batch / "leads.csv", index=False)
    events.to_csv(batch / "events.csv", index=False)
    orphan = runner.invoke(app, ["ingest", "--from", str(batch), "--workdir", str(workdir)])
    assert orphan.exit_code == 2 and "events.csv line 2" in orphan.output
    for output in (run.output, orphan.output):
        assert RAW_PHONE not in output and RAW_PHONE[-8:] not in output, output
    get_settings.cache_clear()


# ---- train --csv: damaged files ------------------------------------------------------------
def export_bytes(n: int = 400) -> bytes:
    frame = pd.DataFrame({
        "Lead Number": range(n), "Lead Source": ["Google", "直接访问"] * (n // 2),
        "Total Visits": [i % 7 for i in range(n)], "Converted": [i % 2 for i in range(n)],
    })
    return frame.to_csv(index=False).encode()


def test_read_export_refuses_a_file_cut_at_60_percent(tmp_path: Path) -> None:
    data = export_bytes()
    path = tmp_path / "cut.csv"
    for cut in range(int(len(data) * 0.6), int(len(data) * 0.6) + 12):
        if data[cut - 1:cut] == b"\n":
            continue  # a cut exactly at a line end is a shorter, whole file
        path.write_bytes(data[:cut])
        try:
            frame = read_export(path)
        except CsvTrainingError as exc:
            assert "cut.csv" in str(exc) and "line" in str(exc), exc
            continue
        # a cut inside the last field leaves whole-looking rows: the reader says so
        assert frame.attrs["file_notes"] and "no line end" in frame.attrs["file_notes"][0]


def test_read_export_refuses_nul_bytes_and_gbk_text(tmp_path: Path) -> None:
    data = export_bytes()
    nul = tmp_path / "nul.csv"
    nul.write_bytes(data.replace(b"Google", b"Goo\x00gle", 3))
    with pytest.raises(CsvTrainingError, match=r"nul\.csv: line 2: 3 NUL bytes"):
        read_export(nul)
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes(data.decode().encode("gbk"))
    with pytest.raises(CsvTrainingError, match=r"gbk\.csv: line 3 .*--encoding gbk"):
        read_export(gbk)
    frame = read_export(gbk, encoding="gbk")
    assert set(frame["Lead Source"]) == {"Google", "直接访问"}
    with pytest.raises(CsvTrainingError, match="unknown encoding"):
        read_export(gbk, encoding="no-such-codec")


def test_train_csv_cli_refuses_a_damaged_file_before_any_work(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes(export_bytes()[:-5])  # the last row cut inside its second field
    workdir = tmp_path / "work"
    run = CliRunner().invoke(app, ["train", "--csv", str(path), "--label", "Converted",
                                   "--workdir", str(workdir), "--trials", "1"])
    assert run.exit_code == 2, run.output
    assert "export.csv: " in run.output and "line 401" in run.output
    assert "Traceback" not in run.output
    assert not (workdir / "reports" / "csv_training_report.json").exists()
    get_settings.cache_clear()


# ---- a read-only folder ----------------------------------------------------------------------
@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` read-only for this process: a read-only bind mount as root (permissions
    do not stop root), the write bits removed otherwise."""
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)],
                                 capture_output=True, check=False)
        if mounted.returncode != 0:
            pytest.skip("running as root without the right to mount: cannot make a folder "
                        "read-only")
        try:
            yield
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    modes = {}
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            modes[path] = path.stat().st_mode
            path.chmod(modes[path] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


def test_drift_on_a_read_only_reports_folder_exits_4_in_one_line(tmp_path: Path) -> None:
    from tests.data.drift_weeks import QUIET_WEEKS, build_drift_workdir

    workdir = build_drift_workdir(tmp_path / "drift")
    reports = workdir / "reports"
    with read_only(reports):
        run = CliRunner().invoke(app, ["drift", "--week", QUIET_WEEKS[-1],
                                       "--workdir", str(workdir)])
    get_settings.cache_clear()
    assert run.exit_code == 4, run.output
    assert "Traceback" not in run.output
    assert run.exception is None or isinstance(run.exception, SystemExit)
    lines = [line for line in run.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot write the report folder" in lines[0], run.output
    assert "drift" in lines[0] and ("Read-only" in lines[0] or "Permission" in lines[0])


# ---- a copied work folder ---------------------------------------------------------------------
def store_uris(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT artifact_location FROM experiments UNION ALL SELECT artifact_uri FROM runs "
            "UNION ALL SELECT storage_location FROM model_versions UNION ALL "
            "SELECT artifact_location FROM logged_models").fetchall()
    return [str(row[0]) for row in rows]


@pytest.mark.slow
def test_a_copied_work_folder_writes_and_loads_only_inside_the_copy(
        service_workdir, tmp_path: Path) -> None:
    """Copy the built folder, make the original read-only; train, score and load the champion
    (the service's way, in a process of its own) on the copy."""
    import mlflow

    from training.registry import champion_uri, point_mlflow_at
    from training.score import score_leads
    from training.train import train_model

    original = service_workdir.settings.workdir
    copy = tmp_path / "moved"
    shutil.copytree(original, copy, symlinks=True)
    settings = Settings().with_workdir(copy)
    with read_only(original):
        summary = train_model(settings, trials=1, promote=True)
        scored = score_leads(settings)
        env = {name: value for name, value in os.environ.items()
               if not name.startswith("MLFLOW_")}
        env |= {"BENTOML_HOME": str(copy / "bentoml_home"), "LEADSCORE_WORKDIR": str(copy)}
        loaded = subprocess.run(
            [sys.executable, "-c",
             "from leadscore.config import get_settings\n"
             "from serving.model_store import load_champion\n"
             "model = load_champion(get_settings())\n"
             "print(model.version, model.source)"],
            env=env, capture_output=True, text=True, check=False, timeout=300)
        point_mlflow_at(settings)
        champion = mlflow.pyfunc.load_model(champion_uri(settings.model_name))
    assert summary["model_version"] and scored.to_dict()
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split()[0] == str(
        mlflow.MlflowClient().get_model_version_by_alias(settings.model_name,
                                                         "champion").version)
    assert champion is not None
    uris = store_uris(copy / "mlruns" / "mlflow.db")
    assert uris and all(str(copy) in uri for uri in uris), [
        u for u in uris if str(copy) not in u]
    assert not any(str(original) + "/" in uri for uri in uris)
