"""The index of weekly reports: one row per report folder, with trend plots.

Reads every ``<drift root>/<label>/drift.json`` (and ``business.json`` beside it) and writes an
HTML page listing them (link, drift share, flag, cohort AUC, LVR, the week's routing page) plus
``drift_trends.png``.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

TREND_PNG = "drift_trends.png"


@dataclass(frozen=True)
class WeekEntry:
    """One report folder as the index shows it."""

    label: str
    since: str
    folder: Path
    n_current: int
    drift_share: float
    dataset_drift: bool
    threshold: float | None
    cohort_auc: float | None
    cohort_n: int | None
    lvr_percent: float | None


def collect_weeks(drift_root: Path) -> list[WeekEntry]:
    """Every report folder under ``drift_root`` holding a readable ``drift.json``, oldest first."""
    entries = []
    for path in sorted(drift_root.glob("*/drift.json")):
        try:
            drift = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        business_path = path.parent / "business.json"
        lvr = None
        if business_path.exists():
            try:
                lvr = json.loads(business_path.read_text()).get("lvr", {}).get("lvr_percent")
            except (OSError, json.JSONDecodeError):
                lvr = None
        cohort = drift.get("cohort") or {}
        entries.append(WeekEntry(
            label=path.parent.name,
            since=str(drift.get("since", "")),
            folder=path.parent,
            n_current=int(drift.get("n_current", 0)),
            drift_share=float(drift.get("drift_share", 0.0)),
            dataset_drift=bool(drift.get("dataset_drift", False)),
            threshold=drift.get("threshold"),
            cohort_auc=cohort.get("auc"),
            cohort_n=cohort.get("n"),
            lvr_percent=lvr,
        ))
    return sorted(entries, key=lambda e: (e.since, e.label))


def _trend_plot(entries: list[WeekEntry], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [e.label for e in entries]
    x = range(len(entries))
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    axes[0].plot(x, [e.drift_share for e in entries], marker="o")
    thresholds = {e.threshold for e in entries if e.threshold is not None}
    for threshold in thresholds:
        axes[0].axhline(threshold, color="red", linestyle="--", linewidth=1)
    axes[0].set_ylabel("drift share")
    axes[1].plot(x, [float("nan") if e.cohort_auc is None else e.cohort_auc for e in entries],
                 marker="o", color="#c44e52")
    axes[1].set_ylabel("cohort ROC-AUC")
    axes[2].bar(x, [0.0 if e.lvr_percent is None else e.lvr_percent for e in entries],
                color="#55a868")
    axes[2].axhline(0, color="black", linewidth=0.8)
    axes[2].set_ylabel("LVR %")
    axes[2].set_xticks(list(x), labels, rotation=45, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(value: float | None, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def write_index(drift_root: Path, index_path: Path) -> Path:
    """Write the index page of the reports under ``drift_root`` to ``index_path``."""
    entries = collect_weeks(drift_root)
    index_path.parent.mkdir(parents=True, exist_ok=True)
    if entries:
        _trend_plot(entries, index_path.parent / TREND_PNG)
    rows = []
    for e in reversed(entries):
        link = Path(os.path.relpath(e.folder / "drift.html", index_path.parent)).as_posix()
        business = Path(os.path.relpath(e.folder / "business.png", index_path.parent)).as_posix()
        flag = "DRIFT" if e.dataset_drift else "quiet"
        routing_page = e.folder / "routing.html"
        routing_link = Path(os.path.relpath(routing_page, index_path.parent)).as_posix()
        routing = (f'<a href="{html.escape(routing_link)}">policies</a>'
                   if routing_page.exists() else "–")
        rows.append(
            "<tr>"
            f"<td><a href=\"{html.escape(link)}\">{html.escape(e.label)}</a></td>"
            f"<td>{e.n_current}</td>"
            f"<td class=\"{flag.lower()}\">{e.drift_share:.3f} ({flag})</td>"
            f"<td>{_fmt(e.cohort_auc, '{:.3f}')}"
            f"{'' if e.cohort_n is None else f' (n={e.cohort_n})'}</td>"
            f"<td>{_fmt(e.lvr_percent, '{:+.1f}%')}</td>"
            f"<td><a href=\"{html.escape(business)}\">chart</a></td>"
            f"<td>{routing}</td>"
            "</tr>"
        )
    trend = f'<img src="{TREND_PNG}" alt="trends">' if entries else "<p>No report yet.</p>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>leadscore weekly drift reports</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
td.drift{{color:#b00;font-weight:bold}}</style></head>
<body><h1>Weekly drift and business reports</h1>
<table><tr><th>week</th><th>predictions</th><th>drift share</th><th>cohort AUC</th>
<th>LVR</th><th>business</th><th>routing</th></tr>
{chr(10).join(rows)}
</table>
<h2>Trends</h2>
{trend}
</body></html>
"""
    index_path.write_text(page, encoding="utf-8")
    return index_path
