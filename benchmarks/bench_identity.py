"""Benchmark One ID on the generator's world of shared identifiers; print JSON.

    nice -n 10 .venv/bin/python benchmarks/bench_identity.py --leads 1000000
    # with Splink (DuckDB) side by side, from an interpreter that has it installed:
    nice -n 10 .venv/bin/python benchmarks/bench_identity.py --leads 100000 \\
        --splink-python /path/to/venv-with-splink/bin/python

Data: ``crm_data.generate.simulate_crm`` (identities, leads with grade and city, truth). Siblings
share the parent's phone, WeChat, e-mail and home tablet, school computers share cookies, numbers
are recycled, forms carry typos (``crm_data.generate_mechanism``). Timed: resolution only.

Methods, on the same leads in the same run:

* ``components`` — connected components of the lead–identifier graph (every shared hash links:
  One ID before the evidence-weighted linkage; ``crm_data.identity.component_persons``);
* ``one_id`` — ``crm_data.identity.resolve_identities`` (evidence-weighted, in time order), a
  full run and an incremental run of the newest ``--incremental-share`` of leads;
* ``splink`` (with ``--splink-python``) — Splink 5 on DuckDB in a subprocess: exact-match
  comparisons on phone, WeChat, e-mail and cookie with term-frequency adjustments, grade and
  city; blocking on each identifier; u by random sampling, m by EM; clusters at match
  probability ``--splink-threshold``.

Each reports pairwise precision and recall against the truth, its largest person, how many
persons are larger than the truth's largest, wall seconds and CPU seconds (this process; on a
shared machine the CPU figure is the one that does not depend on the neighbours' load).

Last measured (2026-12-07, 2 cores shared with other jobs at load 8-14; docs/identity.md):

    leads   method       precision recall largest(truth 6) >6  wall s  CPU s
    50,000  components   0.452     0.988  148              204   0.13
    50,000  Splink 5     0.944     0.893   12               53  11.9
    50,000  one_id       0.981     0.975   12               18   4.1
    200,000 components   0.345     0.989  164              736   3.8    0.4
    200,000 Splink 5     0.952     0.853   10              159  43.4    7.8
    200,000 one_id       0.984     0.978    9               36  56.9    5.9
    1M      components   0.302     0.989  461            3,592  13.4    2.4
    1M      one_id       0.983     0.978   11              171   340    37.3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPLINK_COLUMNS = ("phone", "wechat", "email", "cookie")


def splink_worker(lead_path: str, out_path: str, threshold: float) -> None:
    """Run Splink on one row per lead (``unique_id``, identifiers, grade, city); write
    ``unique_id, cluster_id, seconds`` (imports only pandas and Splink)."""
    import pandas as pd
    import splink.comparison_library as cl
    from splink import Linker, SettingsCreator, block_on
    from splink.backends.duckdb import DuckDBAPI

    frame = pd.read_parquet(lead_path)
    started, cpu = time.perf_counter(), time.process_time()
    db = DuckDBAPI()
    settings = SettingsCreator(
        link_type="dedupe_only",
        comparisons=[
            *(cl.ExactMatch(c).configure(term_frequency_adjustments=True)
              for c in SPLINK_COLUMNS),
            cl.ExactMatch("grade"), cl.ExactMatch("city"),
        ],
        blocking_rules_to_generate_predictions=[block_on(c) for c in SPLINK_COLUMNS],
        retain_matching_columns=False,
    )
    linker = Linker(db.register(frame), settings, log_level=30)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("phone", "grade")], recall=0.9)
    linker.training.estimate_u_using_random_sampling(max_pairs=2e6)
    for column in ("phone", "cookie"):
        linker.training.estimate_parameters_using_expectation_maximisation(block_on(column))
    pairs = linker.inference.predict(threshold_match_probability=min(threshold, 0.5))
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(pairs, threshold)
    out = clusters.as_pandas_dataframe()[["unique_id", "cluster_id"]]
    out["seconds"] = time.perf_counter() - started
    out["cpu_seconds"] = time.process_time() - cpu
    out.to_parquet(out_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--incremental-share", type=float, default=0.1)
    parser.add_argument("--splink-python", default=None,
                        help="an interpreter with splink installed (runs the Splink method)")
    parser.add_argument("--splink-threshold", type=float, default=0.9)
    parser.add_argument("--splink-worker", nargs=2, metavar=("LEADS", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.splink_worker:
        splink_worker(*args.splink_worker, args.splink_threshold)
        return
    if args.leads < 2 or not 0 < args.incremental_share < 1:
        parser.error("--leads must be at least 2 and --incremental-share within (0, 1)")

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import pandas as pd

    from crm_data.generate import simulate_crm
    from crm_data.identity import (
        component_persons,
        pairwise_precision_recall,
        resolve_identities,
    )

    started = time.perf_counter()
    crm = simulate_crm(args.leads, seed=args.seed, salt="bench-identity", window_days=30)
    leads = crm.tables["leads"].to_pandas()
    identities = crm.tables["identities"].to_pandas()
    truth = crm.tables["truth"].to_pandas()
    data_seconds = time.perf_counter() - started
    true_person = truth.set_index("lead_id")["true_person_id"]
    true_largest = int(true_person.value_counts().max())

    def quality(pred: pd.Series, seconds: float, cpu: float | None = None) -> dict:
        precision, recall = pairwise_precision_recall(pred, true_person)
        sizes = pred.value_counts()
        return {"precision": round(precision, 5), "recall": round(recall, 5),
                "persons": int(len(sizes)), "largest_person": int(sizes.max()),
                "persons_larger_than_truths_largest": int((sizes > true_largest).sum()),
                "seconds": round(seconds, 2),
                "cpu_seconds": None if cpu is None else round(cpu, 2)}

    report: dict = {"leads": args.leads, "identity_rows": len(identities),
                    "true_persons": int(true_person.nunique()),
                    "truths_largest_person": true_largest,
                    "shared_identifiers": crm.summary.shared_identifiers}
    t0, c0 = time.perf_counter(), time.process_time()
    components = component_persons(identities, leads["lead_id"])
    report["components"] = quality(components, time.perf_counter() - t0,
                                   time.process_time() - c0)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        c0 = time.process_time()
        full = resolve_identities(identities, leads, folder / "full", truth=truth)
        cpu = time.process_time() - c0
        pred = full.state.lead_person.set_index("lead_id")["person_id"]
        report["one_id"] = quality(pred, full.seconds, cpu)
        report["one_id"]["merges"] = full.merged

        ordered = leads.sort_values(["created_at", "lead_id"], ignore_index=True)
        cut = int(len(ordered) * (1 - args.incremental_share))
        old, new = ordered.iloc[:cut], ordered.iloc[cut:]
        state = folder / "incremental"
        resolve_identities(identities[identities["lead_id"].isin(old["lead_id"])], old, state)
        batch = resolve_identities(identities[identities["lead_id"].isin(new["lead_id"])], new,
                                   state)
        same = batch.state.lead_person.set_index("lead_id").sort_index().equals(
            full.state.lead_person.set_index("lead_id").sort_index())
        report["one_id"]["incremental"] = {
            "batch_leads": len(new), "seconds": round(batch.seconds, 2),
            "joined": batch.joined, "merged": batch.merged, "new": batch.new,
            "same_persons_as_full_run": bool(same)}

        if args.splink_python:
            wide = identities.pivot_table(index="lead_id", columns="id_type", values="id_hash",
                                          aggfunc="first")
            rows = leads[["lead_id", "grade", "city"]].set_index("lead_id").join(wide)
            for column in SPLINK_COLUMNS:
                if column not in rows:
                    rows[column] = None
            rows = rows.reset_index().rename(columns={"lead_id": "unique_id"})
            rows.to_parquet(folder / "splink_in.parquet")
            subprocess.run([args.splink_python, __file__, "--splink-worker",
                            str(folder / "splink_in.parquet"), str(folder / "splink_out.parquet"),
                            "--splink-threshold", str(args.splink_threshold)], check=True)
            out = pd.read_parquet(folder / "splink_out.parquet")
            pred = out.set_index("unique_id")["cluster_id"]
            report["splink"] = quality(pred, float(out["seconds"].iloc[0]),
                                       float(out["cpu_seconds"].iloc[0]))
            report["splink"]["threshold"] = args.splink_threshold
    report["data_seconds"] = round(data_seconds, 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
