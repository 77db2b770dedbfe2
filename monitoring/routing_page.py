"""The weekly routing page: ``<week>/routing.html`` and ``routing.png`` from the routing table
(``monitoring.routing_offpolicy``), linked from the reports' index.

A table per policy (conversions and cost per conversion with 95% intervals, per estimator, and
the capacity figures when the cascade was replayed), a chart of the cost per conversion with
its interval per policy, the uplift policy against the best optimised rule, what each channel
does by the active policy's learned allocation, and how the optimised rules were tuned. When
the week has no table the page says why.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

ROUTING_HTML = "routing.html"
ROUTING_PNG = "routing.png"
ESTIMATOR_NAMES = {"dr": "DR", "snips": "SNIPS", "ips": "IPS"}
ESTIMATOR_COLOURS = {"dr": "#4c72b0", "snips": "#dd8452", "ips": "#55a868"}
_STYLE = """body{font-family:sans-serif;margin:2em;max-width:80em}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}
p.note{color:#555}"""


def _num(value: float | None, pattern: str = "{:,.1f}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return pattern.format(value)


def _interval(ci: list[float] | None, pattern: str = "{:,.1f}") -> str:
    if not ci:
        return ""
    return f" [{_num(ci[0], pattern)}, {_num(ci[1], pattern)}]"


def policy_order(policies: dict[str, Any]) -> list[str]:
    """The uplift policy first, then tiers, the rules and everyone-to-X, as ``route evaluate``
    lists them."""
    first = ["uplift", "probability_tiers", "rule_2d", "rule_2d_optimised", "rule_funnel",
             "rule_funnel_optimised"]
    return [n for n in first if n in policies] + [n for n in policies if n not in first]


def write_chart(table: dict[str, Any], path: Path) -> Path | None:
    """Cost per conversion with its 95% interval, per policy and estimator (a horizontal bar
    per interval, a dot at the estimate); None when no policy has a cost per conversion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = policy_order(table["policies"])
    estimators = [e for e in ("dr", "snips", "ips") if e in table["estimators"]]
    if not any(table["policies"][n].get(e, {}).get("cost_per_conversion") is not None
               for n in names for e in estimators):
        return None
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) * len(estimators) + 1.5))
    step = 0.8 / len(estimators)
    for k, estimator in enumerate(estimators):
        for i, name in enumerate(names):
            figures = table["policies"][name].get(estimator) or {}
            value = figures.get("cost_per_conversion")
            if value is None:
                continue
            y = i + (k - (len(estimators) - 1) / 2) * step
            ci = figures.get("cost_per_conversion_ci")
            if ci:
                ax.hlines(y, ci[0], ci[1], color=ESTIMATOR_COLOURS[estimator], linewidth=2.5,
                          alpha=0.6)
            ax.plot(value, y, "o", color=ESTIMATOR_COLOURS[estimator])
    handles = [plt.Line2D([], [], marker="o", color=ESTIMATOR_COLOURS[e], linewidth=2.5,
                          label=ESTIMATOR_NAMES[e]) for e in estimators]
    ax.legend(handles=handles, loc="lower right")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("cost per conversion, RMB (95% interval)")
    ax.set_title(f"{table.get('week', '')} routing policies on {table['exploration_leads']} "
                 "randomised leads".strip())
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _policy_table(table: dict[str, Any]) -> str:
    estimators = [e for e in ("dr", "snips", "ips") if e in table["estimators"]]
    replayed = bool((table.get("capacity") or {}).get("replayed"))
    head = ["policy", "cost, RMB"]
    for estimator in estimators:
        head += [f"conversions ({ESTIMATOR_NAMES[estimator]}) [95%]",
                 f"RMB / conversion ({ESTIMATOR_NAMES[estimator]}) [95%]"]
    if replayed:
        head += ["capacity violations", "overflowed leads"]
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for name in policy_order(table["policies"]):
        entry = table["policies"][name]
        cells = [html.escape(name), _num(next(iter(
            entry[e]["total_cost"] for e in estimators if e in entry), None), "{:,.0f}")]
        for estimator in estimators:
            figures = entry.get(estimator) or {}
            cells.append(_num(figures.get("conversions"))
                         + _interval(figures.get("conversions_ci")))
            cells.append(_num(figures.get("cost_per_conversion"))
                         + _interval(figures.get("cost_per_conversion_ci")))
        if replayed:
            cells += [str(entry.get("capacity_violations", "–")),
                      str(entry.get("overflow_leads", "–"))]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _versus(table: dict[str, Any]) -> str:
    versus = table.get("uplift_vs_best_optimised_rule")
    if not versus:
        return ""
    items = []
    for estimator in ("dr", "snips"):
        v = versus.get(estimator)
        if not v:
            continue
        items.append(
            f"<li>{ESTIMATOR_NAMES[estimator]}: cost per conversion "
            f"{_num(v['cost_per_conversion_change'], '{:+.1%}')}"
            f"{_interval(v.get('cost_per_conversion_change_ci'), '{:+.1%}')}, conversions "
            f"{_num(v['conversions_difference'], '{:+.1f}')}"
            f"{_interval(v.get('conversions_difference_ci'), '{:+.1f}')}</li>")
    return (f"<h2>Uplift against the best optimised rule "
            f"({html.escape(str(versus.get('against')))}), paired</h2><ul>{''.join(items)}</ul>")


def _allocation(table: dict[str, Any]) -> str:
    allocation = table.get("allocation")
    if not allocation:
        return ("<h2>What each channel does</h2><p>The active policy records no allocation "
                "(run <code>leadscore route optimize</code>).</p>")
    if allocation.get("source") != "uplift":
        prior = allocation.get("relative_conversion") or {}
        rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{_num(v, '{:.3f}')}</td></tr>"
                       for c, v in prior.items())
        return ("<h2>What each channel does</h2>"
                f"<p>Cold-start prior ({html.escape(str(allocation.get('reason', '')))}): the "
                "policy file's relative conversion against the AI bot, no learned effect.</p>"
                f"<table><tr><th>channel</th><th>relative_conversion</th></tr>{rows}</table>")
    learned = allocation.get("learned_effects") or {}
    shadow = allocation.get("shadow_prices") or {}
    rows = []
    for channel in sorted(set(learned) | set(shadow)):
        effect = learned.get(channel) or {}
        rows.append(
            f"<tr><td>{html.escape(channel)}</td>"
            f"<td>{_num(effect.get('dr_effect_over_ai_bot'), '{:+.4f}')}"
            f"{_interval(effect.get('ci'), '{:+.4f}')}</td>"
            f"<td>{_num(effect.get('mean_predicted_uplift'), '{:+.4f}')}</td>"
            f"<td>{_num(shadow.get(channel), '{:.4g}')}</td></tr>")
    return (
        "<h2>What each channel does (the active policy's learned allocation)</h2>"
        "<p>Conversion gained over the AI bot per lead: doubly robust on the tuning days' "
        f"{allocation.get('effects_estimated_on_randomised_leads', '–')} randomised leads "
        f"when <code>route optimize</code> ran; model {html.escape(str(allocation.get('model')))}"
        f"; cost weight λ = {_num(allocation.get('cost_weight'), '{:.5g}')} conversions per "
        "RMB.</p><table><tr><th>channel</th><th>effect over ai_bot (DR) [95%]</th>"
        "<th>mean predicted uplift</th><th>shadow price</th></tr>"
        + "".join(rows) + "</table>")


def _optimised(table: dict[str, Any]) -> str:
    info = table.get("optimised_rules") or {}
    if "skipped" in info:
        return ("<p class=\"note\">Optimised rules left out: "
                f"{html.escape(str(info['skipped']))}.</p>")
    tuned = info.get("tuned_on") or {}
    cutoffs = "; ".join(
        f"{html.escape(name)} A={c['A']:.4f} B={c['B']:.4f} C={c['C']:.4f}"
        for name, c in (info.get("cutoffs") or {}).items())
    return ("<p class=\"note\">Optimised rules tuned on the log's "
            f"{tuned.get('leads', '–')} earlier matured leads ({tuned.get('conversions', '–')} "
            f"conversions, {html.escape(str(tuned.get('from', '')))} to "
            f"{html.escape(str(tuned.get('until', '')))}), never on the judged week: "
            f"{cutoffs}.</p>")


def _capacity(table: dict[str, Any]) -> str:
    capacity = table.get("capacity") or {}
    if capacity.get("replayed"):
        limits = ", ".join(f"{html.escape(c)} {'unlimited' if v is None else f'{v:g}'}"
                           for c, v in (capacity.get("capacities") or {}).items())
        return (f"<p>Capacity replayed: every policy routed all {capacity.get('served_leads')} "
                f"served leads of the {capacity.get('days')} judged days "
                f"({html.escape(str(capacity.get('timezone')))}) through the daily cascade "
                f"(leads/day: {limits}); a full channel overflows to the next cheaper one.</p>")
    return ("<p><strong>Capacity not replayed</strong>: "
            f"{html.escape(str(capacity.get('reason')))}. The figures are per lead, as if every "
            "channel had room.</p>")


def write_routing_page(table: dict[str, Any] | None, folder: Path, week: str = "",
                       reason: str | None = None) -> Path:
    """Write ``folder/routing.html`` (and ``routing.png``) for ``table``; with no table, a page
    saying ``reason``."""
    folder.mkdir(parents=True, exist_ok=True)
    title = f"Routing policies off-policy {week}".strip()
    if table is None:
        body = f"<p>No routing table this week: {html.escape(reason or 'no table')}.</p>"
        (folder / ROUTING_PNG).unlink(missing_ok=True)
    else:
        chart = write_chart({**table, "week": week}, folder / ROUTING_PNG)
        image = (f'<img src="{ROUTING_PNG}" alt="cost per conversion per policy">'
                 if chart else "")
        estimators = ", ".join(ESTIMATOR_NAMES[e] for e in table["estimators"])
        body = (
            f"<p>{table['exploration_leads']} randomised (exploration) leads whose outcome "
            f"window closed, submitted {html.escape(str(table.get('judged_from', '')))} to "
            f"{html.escape(str(table.get('judged_until', '')))}; estimators {estimators}; "
            "bootstrap 95% intervals.</p>"
            + _capacity(table) + image + "<h2>Per policy</h2>" + _policy_table(table)
            + _optimised(table) + _versus(table) + _allocation(table)
            + f"<p class=\"note\">{html.escape(str(table.get('note', '')))}</p>")
    page = (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>\n"
            f"{body}\n</body></html>\n")
    path = folder / ROUTING_HTML
    path.write_text(page, encoding="utf-8")
    return path
