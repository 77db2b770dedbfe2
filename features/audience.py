"""Audience builder: a JSON condition tree over person tags and behaviour, validated and compiled
to SQL (DuckDB in the embedded profile, PostgreSQL in production).

A tree (``AudienceTree.tree``) is made of nodes told apart by ``type``:

* ``and`` / ``or`` — ``rules``: a list of nodes; ``not`` — ``rule``: one node;
* ``tag`` — ``field`` (``TAG_FIELDS``: tier, channel, source, rfm_segment, grade, subject,
  city_tier, funnel_step, probability, fit_score, interest_score, rule_score, lead_count),
  ``op`` (``eq ne in not_in`` on categories; also ``gt gte lt lte`` on numbers) and ``value``;
* ``behaviour`` — ``event_type`` (``leadscore.schemas.EVENT_TYPES`` or ``any``), optionally
  ``url_prefix`` *or* ``url_glob`` (``*`` and ``?`` only: no regular expressions, so no
  catastrophic backtracking; compiled to ``LIKE``), ``min_count`` (default 1) matching events
  ``within_days`` before ``as_of``, and/or the last matching event ``last_before`` /
  ``last_after`` a time.

Limits: depth ``MAX_DEPTH``, ``MAX_NODES`` nodes, ``MAX_CONDITIONS`` tag/behaviour conditions.
A bad tree raises ``AudienceError`` with one problem per fault, each naming the node by its
location (``["tree", "rules", 1, "url_glob"]``) — the HTTP layer answers 422 with it. Windows
are checked against the data (``DataBounds``): a window reaching before the first event or an
``as_of`` after the last one is refused.

Compilation (``compile_count``, ``compile_members``): every behaviour leaf becomes one boolean
column of a single grouped pass over the events (``count(*) FILTER (…) >= k``), left-joined to
the persons table; tag leaves are column predicates; the counts after each top-level rule are
``count(*) FILTER (WHERE …)`` of the cumulative combination, all in one query. Values are bound
parameters, never spliced into the SQL text.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from leadscore.schemas import (
    CHANNELS,
    CITY_TIERS,
    EVENT_TYPES,
    FOLLOWUP_CHANNELS,
    FUNNEL_STEPS,
    GRADES,
    SUBJECTS,
    TIERS,
)

MAX_DEPTH = 6
MAX_NODES = 40
MAX_CONDITIONS = 20
MAX_IN_VALUES = 100
MAX_PATTERN = 200
MAX_WINDOW_DAYS = 3650
MAX_PAGE_SIZE = 1000
RFM_SEGMENTS: tuple[str, ...] = ("no_orders", *(f"R{r}F{f}M{m}" for r in (0, 1) for f in (0, 1)
                                                for m in (0, 1)))
# tag field → allowed values (categories) or None (numbers)
CATEGORY_FIELDS: dict[str, tuple] = {
    "tier": TIERS, "channel": FOLLOWUP_CHANNELS, "source": CHANNELS, "rfm_segment": RFM_SEGMENTS,
    "grade": GRADES, "subject": SUBJECTS, "city_tier": CITY_TIERS, "funnel_step": FUNNEL_STEPS,
}
NUMBER_FIELDS: tuple[str, ...] = ("probability", "fit_score", "interest_score", "rule_score",
                                  "lead_count")
TAG_FIELDS: tuple[str, ...] = (*CATEGORY_FIELDS, *NUMBER_FIELDS)
CATEGORY_OPS = ("eq", "ne", "in", "not_in")
NUMBER_OPS = ("eq", "ne", "gt", "gte", "lt", "lte")
SQL_OPS = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
# characters that only make sense in a regular expression: refused in URL patterns
REGEX_CHARS = re.compile(r"[\^$()\[\]{}|+\\]")
DIALECTS = ("duckdb", "postgres")

Scalar = str | int | float


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TagCondition(_Node):
    """A condition on one person tag."""

    type: Literal["tag"]
    field: Literal[TAG_FIELDS]  # type: ignore[valid-type]
    op: Literal["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte"]
    value: Scalar | list[Scalar]


class BehaviourCondition(_Node):
    """Performed ``event_type`` (on matching URLs) at least ``min_count`` times within
    ``within_days`` before ``as_of``; and/or the last such event before/after a time."""

    type: Literal["behaviour"]
    event_type: Literal[(*EVENT_TYPES, "any")]  # type: ignore[valid-type]
    url_prefix: str | None = Field(None, max_length=MAX_PATTERN)
    url_glob: str | None = Field(None, max_length=MAX_PATTERN)
    min_count: int = Field(1, ge=1, le=10_000)
    within_days: int | None = Field(None, ge=1, le=MAX_WINDOW_DAYS)
    last_before: datetime | None = None
    last_after: datetime | None = None

    @field_validator("last_before", "last_after")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2026-11-01T00:00:00Z)")
        return value


class NotNode(_Node):
    type: Literal["not"]
    rule: Node


class GroupNode(_Node):
    type: Literal["and", "or"]
    rules: list[Node] = Field(min_length=1)


Node = Annotated[TagCondition | BehaviourCondition | NotNode | GroupNode,
                 Field(discriminator="type")]
NotNode.model_rebuild()
GroupNode.model_rebuild()


class AudienceTree(_Node):
    """A condition tree and the moment it is evaluated at (default: now)."""

    tree: Node
    as_of: datetime | None = None

    @field_validator("as_of")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2026-11-30T00:00:00Z)")
        return value


@dataclass
class AudienceError(ValueError):
    """A tree that cannot be evaluated: ``problems`` are ``{loc, msg, type}`` entries."""

    problems: list[dict]

    def __str__(self) -> str:
        return "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in self.problems)


@dataclass(frozen=True)
class DataBounds:
    """The span of the event data (windows must fall inside it)."""

    first_event: datetime | None
    last_event: datetime | None


def _problem(loc: list, msg: str, kind: str = "value_error") -> dict:
    return {"loc": list(loc), "msg": msg, "type": kind}


def parse_tree(payload: Any, root: str = "tree") -> AudienceTree:
    """Validate a request body ``{"tree": …, "as_of": …}``; ``AudienceError`` names each bad
    node (pydantic's field errors first, then the limits and pattern checks)."""
    try:
        parsed = AudienceTree.model_validate(payload)
    except ValidationError as exc:
        raise AudienceError([_problem(_node_loc(e["loc"]), e["msg"], e["type"])
                             for e in exc.errors(include_url=False, include_input=False,
                                                 include_context=False)]) from None
    problems: list[dict] = []
    stats = {"nodes": 0, "conditions": 0}
    _check(parsed.tree, [root], 1, problems, stats)
    if stats["nodes"] > MAX_NODES:
        problems.append(_problem([root], f"tree too large: {stats['nodes']} nodes, at most "
                                         f"{MAX_NODES}", "tree_too_large"))
    if stats["conditions"] > MAX_CONDITIONS:
        problems.append(_problem([root], f"tree too large: {stats['conditions']} conditions, "
                                         f"at most {MAX_CONDITIONS}", "tree_too_large"))
    if problems:
        raise AudienceError(problems)
    return parsed


NODE_TYPES = frozenset({"and", "or", "not", "tag", "behaviour"})


def _node_loc(loc: tuple) -> list:
    """pydantic's location without the union tags it inserts after each node
    (``tree.and.rules.1.tag.field`` → ``tree.rules.1.field``)."""
    out: list = []
    for i, part in enumerate(loc):
        after_node = i > 0 and (loc[i - 1] in ("tree", "rule") or isinstance(loc[i - 1], int))
        if after_node and part in NODE_TYPES:
            continue
        out.append(part)
    return out


def _check(node: Any, loc: list, depth: int, problems: list[dict], stats: dict) -> None:
    stats["nodes"] += 1
    if depth > MAX_DEPTH:
        problems.append(_problem(loc, f"tree too deep: nesting beyond {MAX_DEPTH} levels",
                                 "tree_too_deep"))
        return
    if isinstance(node, GroupNode):
        for i, child in enumerate(node.rules):
            _check(child, [*loc, "rules", i], depth + 1, problems, stats)
    elif isinstance(node, NotNode):
        _check(node.rule, [*loc, "rule"], depth + 1, problems, stats)
    elif isinstance(node, TagCondition):
        stats["conditions"] += 1
        _check_tag(node, loc, problems)
    else:
        stats["conditions"] += 1
        _check_behaviour(node, loc, problems)


def _check_tag(node: TagCondition, loc: list, problems: list[dict]) -> None:
    values = node.value if isinstance(node.value, list) else [node.value]
    if node.op in ("in", "not_in"):
        if not isinstance(node.value, list) or not 1 <= len(node.value) <= MAX_IN_VALUES:
            problems.append(_problem([*loc, "value"], f"op '{node.op}' takes a list of 1 to "
                                     f"{MAX_IN_VALUES} values"))
            return
    elif isinstance(node.value, list):
        problems.append(_problem([*loc, "value"], f"op '{node.op}' takes one value, not a list"))
        return
    if node.field in CATEGORY_FIELDS:
        allowed = CATEGORY_FIELDS[node.field]
        if node.op not in CATEGORY_OPS:
            problems.append(_problem([*loc, "op"], f"op '{node.op}' does not apply to the "
                                     f"category '{node.field}'; use one of {CATEGORY_OPS}",
                                     "unknown_operator"))
            return
        bad = [v for v in values if v not in allowed or isinstance(v, bool)]
        if bad:
            shown = ", ".join(map(str, allowed))
            problems.append(_problem([*loc, "value"], f"not a value of '{node.field}': "
                                     f"{len(bad)} value(s); allowed: {shown}"))
    else:
        if node.op not in NUMBER_OPS:
            problems.append(_problem([*loc, "op"], f"op '{node.op}' does not apply to the "
                                     f"number '{node.field}'; use one of {NUMBER_OPS}",
                                     "unknown_operator"))
            return
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
            problems.append(_problem([*loc, "value"], f"'{node.field}' is compared with a "
                                     "number"))


def _check_behaviour(node: BehaviourCondition, loc: list, problems: list[dict]) -> None:
    if node.url_prefix is not None and node.url_glob is not None:
        problems.append(_problem([*loc, "url_glob"], "give url_prefix or url_glob, not both"))
    for name in ("url_prefix", "url_glob"):
        pattern = getattr(node, name)
        if pattern is None:
            continue
        if not pattern:
            problems.append(_problem([*loc, name], "must not be empty"))
        elif REGEX_CHARS.search(pattern):
            problems.append(_problem([*loc, name], "regular expressions are not supported: "
                                     "use a URL prefix, or a glob with * and ? only",
                                     "regex_not_supported"))
        elif name == "url_prefix" and ("*" in pattern or "?" in pattern):
            problems.append(_problem([*loc, name], "a prefix has no wildcards; use url_glob for "
                                     "* and ?"))
        elif name == "url_glob" and pattern.count("*") > 8:
            problems.append(_problem([*loc, name], "at most 8 '*' in a glob"))
    if node.last_before is not None and node.last_after is not None \
            and node.last_after >= node.last_before:
        problems.append(_problem([*loc, "last_after"], "last_after must be before last_before"))


def check_bounds(parsed: AudienceTree, bounds: DataBounds, default_as_of: datetime | None = None,
                 root: str = "tree", now: datetime | None = None) -> datetime:
    """The evaluation time (``as_of``; default ``default_as_of``, e.g. when the person store
    was built, else now) after checking every window against the data: ``AudienceError`` names
    a window reaching before the first event or lying wholly after the last one, a time outside
    the data, or an ``as_of`` in the future."""
    now = now or datetime.now(UTC)
    as_of = parsed.as_of or default_as_of or now
    problems: list[dict] = []
    if as_of > now + timedelta(minutes=5):
        problems.append(_problem(["as_of"], "as_of lies in the future"))
    first, last = bounds.first_event, bounds.last_event
    for loc, leaf in _leaves(parsed.tree, [root]):
        if not isinstance(leaf, BehaviourCondition):
            continue
        if leaf.within_days is not None and first is not None \
                and as_of - timedelta(days=leaf.within_days) < first - timedelta(days=1):
            problems.append(_problem([*loc, "within_days"], f"window beyond the data: "
                                     f"{leaf.within_days} days before {as_of.date()} reach "
                                     f"before the first event ({first.date()})",
                                     "window_beyond_data"))
        if leaf.within_days is not None and last is not None \
                and as_of - timedelta(days=leaf.within_days) > last:
            problems.append(_problem([*loc, "within_days"], f"window beyond the data: the "
                                     f"{leaf.within_days} days before {as_of.date()} start "
                                     f"after the last event ({last.date()})",
                                     "window_beyond_data"))
        for name in ("last_before", "last_after"):
            moment = getattr(leaf, name)
            if moment is None:
                continue
            if moment > as_of or (first is not None and moment < first - timedelta(days=1)):
                span = (f"{first.date()} – {as_of.date()}" if first is not None
                        else f"up to {as_of.date()}")
                problems.append(_problem([*loc, name], f"time beyond the data ({span})",
                                         "window_beyond_data"))
    if problems:
        raise AudienceError(problems)
    return as_of


def _leaves(node: Any, loc: list) -> list[tuple[list, Any]]:
    if isinstance(node, GroupNode):
        return [x for i, c in enumerate(node.rules) for x in _leaves(c, [*loc, "rules", i])]
    if isinstance(node, NotNode):
        return _leaves(node.rule, [*loc, "rule"])
    return [(loc, node)]


# ---- compilation --------------------------------------------------------------------------
def glob_to_like(glob: str) -> str:
    """A ``*``/``?`` glob as a LIKE pattern (escape ``\\``; ``%`` and ``_`` taken literally)."""
    out = []
    for ch in glob:
        if ch in "%_":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def prefix_to_like(prefix: str) -> str:
    return prefix.replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass
class Compiled:
    """SQL text and its bound parameters (placeholders of the dialect)."""

    sql: str
    params: list[Any] = field(default_factory=list)
    step_labels: list[str] = field(default_factory=list)


class _Compiler:
    def __init__(self, dialect: str, as_of: datetime) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown SQL dialect {dialect!r}; expected one of {DIALECTS}")
        self.dialect = dialect
        self.ph = "?" if dialect == "duckdb" else "%s"
        self.as_of = as_of
        self.leaves: list[tuple[str, list, BehaviourCondition]] = []

    def behaviour_filter(self, leaf: BehaviourCondition, params: list) -> str:
        parts = []
        if leaf.event_type != "any":
            parts.append(f"event_type = {self.ph}")
            params.append(leaf.event_type)
        if leaf.url_prefix is not None:
            parts.append(f"url LIKE {self.ph} ESCAPE '\\'")
            params.append(prefix_to_like(leaf.url_prefix))
        if leaf.url_glob is not None:
            parts.append(f"url LIKE {self.ph} ESCAPE '\\'")
            params.append(glob_to_like(leaf.url_glob))
        return " AND ".join(parts) or "TRUE"

    def expr(self, node: Any, params: list) -> str:
        """The boolean SQL of ``node`` over ``p`` (persons) and ``b`` (behaviour flags)."""
        if isinstance(node, GroupNode):
            joiner = " AND " if node.type == "and" else " OR "
            return "(" + joiner.join(self.expr(c, params) for c in node.rules) + ")"
        if isinstance(node, NotNode):
            return f"(NOT {self.expr(node.rule, params)})"
        if isinstance(node, TagCondition):
            column = f"p.{node.field}"
            if node.op in ("in", "not_in"):
                marks = ", ".join([self.ph] * len(node.value))
                params.extend(node.value)
                test = f"{column} IN ({marks})"
                return f"COALESCE({test}, FALSE)" if node.op == "in" else \
                    f"(NOT COALESCE({test}, FALSE))"
            params.append(node.value)
            return f"COALESCE({column} {SQL_OPS[node.op]} {self.ph}, FALSE)"
        name = f"b{len(self.leaves)}"
        self.leaves.append((name, [], node))
        return f"COALESCE(b.{name}, FALSE)"

    def behaviour_cte(self) -> tuple[str, list]:
        """One grouped pass over the events giving a flag per behaviour leaf."""
        params: list = []
        flags, filters = [], []
        lower: datetime | None = self.as_of
        for name, _, leaf in self.leaves:
            match_params: list = []
            match = self.behaviour_filter(leaf, match_params)
            tests = []
            if leaf.within_days is not None or (leaf.last_before is None
                                                and leaf.last_after is None):
                start = (self.as_of - timedelta(days=leaf.within_days)
                         if leaf.within_days is not None else None)
                window = f"({match})"
                wparams = list(match_params)
                if start is not None:
                    window += f" AND event_time > {self.ph}"
                    wparams.append(start)
                tests.append(f"COUNT(*) FILTER (WHERE {window}) >= {self.ph}")
                params.extend(wparams)
                params.append(leaf.min_count)
                lower = None if start is None or lower is None else min(lower, start)
            else:
                lower = None
            for bound, op in ((leaf.last_before, "<"), (leaf.last_after, ">")):
                if bound is not None:
                    tests.append(f"COALESCE(MAX(event_time) FILTER (WHERE {match}) {op} "
                                 f"{self.ph}, FALSE)")
                    params.extend(match_params)
                    params.append(bound)
            flags.append(f"({' AND '.join(tests)}) AS {name}")
            filters.append((f"({match})", match_params))
        where_params: list = [self.as_of]
        where = f"event_time <= {self.ph}"
        if lower is not None:
            where += f" AND event_time > {self.ph}"
            where_params.append(lower)
        where += " AND (" + " OR ".join(f for f, _ in filters) + ")"
        for _, fp in filters:
            where_params.extend(fp)
        sql = (f"b AS (SELECT pk, {', '.join(flags)} FROM events WHERE {where} "
               "GROUP BY pk)")
        return sql, params + where_params


class _BitmapCompiler:
    """DuckDB: every leaf is one bitmap over the persons' dense keys ``pk`` (``bitstring_agg``:
    no hash table for the common "did it at least once" leaf), combined with ``& | ~`` and
    counted with ``bit_count``. Events are clustered by type and time, so a leaf reads only its
    type's recent blocks. ``last_before`` T = did it by ``as_of`` and not in [T, ``as_of``];
    ``at least k times`` groups the leaf's window only."""

    def __init__(self, as_of: datetime, population: int) -> None:
        self.as_of = as_of
        self.top = max(population - 1, 0)
        self.ctes: list[str] = []
        self.params: list = []

    def _bitmap(self, select_from: str, params: list) -> str:
        name = f"m{len(self.ctes)}"
        self.ctes.append(f"{name} AS (SELECT COALESCE(bitstring_agg(pk, 0, {self.top}), "
                         f"bitstring('0'::BIT, {self.top + 1})) AS b FROM {select_from})")
        self.params.extend(params)
        return f"(SELECT b FROM {name})"

    def _events(self, leaf: BehaviourCondition, after: datetime | None, on_or_after: bool = False,
                min_count: int = 1) -> str:
        params: list = []
        match = _Compiler("duckdb", self.as_of).behaviour_filter(leaf, params)
        where = f"{match} AND event_time <= ?"
        params.append(self.as_of)
        if after is not None:
            where += f" AND event_time {'>=' if on_or_after else '>'} ?"
            params.append(after)
        if min_count > 1:
            source = f"(SELECT pk FROM events WHERE {where} GROUP BY pk HAVING COUNT(*) >= ?)"
            params.append(min_count)
        else:
            source = f"events WHERE {where}"
        return self._bitmap(source, params)

    def expr(self, node: Any) -> str:
        if isinstance(node, GroupNode):
            joiner = " & " if node.type == "and" else " | "
            return "(" + joiner.join(self.expr(c) for c in node.rules) + ")"
        if isinstance(node, NotNode):
            return f"(~{self.expr(node.rule)})"
        if isinstance(node, TagCondition):
            params: list = []
            test = _Compiler("duckdb", self.as_of).expr(node, params).replace("p.", "")
            return self._bitmap(f"persons WHERE {test}", params)
        parts = []
        if node.within_days is not None or (node.last_before is None and node.last_after is None):
            start = (self.as_of - timedelta(days=node.within_days)
                     if node.within_days is not None else None)
            parts.append(self._events(node, start, min_count=node.min_count))
        if node.last_before is not None:
            ever = self._events(node, None)
            since = self._events(node, node.last_before, on_or_after=True)
            parts.append(f"({ever} & ~{since})")
        if node.last_after is not None:
            parts.append(self._events(node, node.last_after))
        return "(" + " & ".join(parts) + ")"


def compile_count_bitmaps(parsed: AudienceTree, as_of: datetime, population: int) -> Compiled:
    """``compile_count`` for DuckDB with bitmaps (``_BitmapCompiler``): the same answers."""
    compiler = _BitmapCompiler(as_of, population)
    combinator, rules = _top_rules(parsed.tree)
    joiner = " & " if combinator == "and" else " | "
    exprs = [compiler.expr(rule) for rule in rules]
    selects = [str(population)]
    selects += [f"bit_count({joiner.join(exprs[: i + 1])})" for i in range(len(exprs))]
    selects += [f"bit_count({e})" for e in exprs]
    sql = f"WITH {', '.join(compiler.ctes)} SELECT {', '.join(selects)}"
    return Compiled(sql, compiler.params, [_label(r) for r in rules])


def _top_rules(tree: Any) -> tuple[str, list]:
    if isinstance(tree, GroupNode):
        return tree.type, list(tree.rules)
    return "and", [tree]


def _label(node: Any) -> str:
    if isinstance(node, TagCondition):
        return f"{node.field} {node.op} {node.value}"
    if isinstance(node, BehaviourCondition):
        where = node.url_prefix or node.url_glob
        text = f"{node.event_type}{' on ' + where if where else ''}"
        text += f" ≥{node.min_count}×" if node.min_count > 1 else ""
        text += f" in {node.within_days} d" if node.within_days else ""
        return text
    if isinstance(node, NotNode):
        return f"not ({_label(node.rule)})"
    return f"{node.type} of {len(node.rules)}"


def _assemble(compiler: _Compiler, select: str, select_params: list, tail: str = "",
              tail_params: list | None = None, scope: str | None = None) -> Compiled:
    ctes, params = [], []
    if compiler.leaves:
        cte, cte_params = compiler.behaviour_cte()
        ctes.append(cte)
        params.extend(cte_params)
    join = " LEFT JOIN b ON b.pk = p.pk" if compiler.leaves else ""
    scope_join = f" JOIN {scope} s ON s.person_id = p.person_id" if scope else ""
    with_ = f"WITH {', '.join(ctes)} " if ctes else ""
    sql = f"{with_}SELECT {select} FROM persons p{scope_join}{join}{tail}"
    return Compiled(sql, params + select_params + (tail_params or []))


def compile_count(parsed: AudienceTree, as_of: datetime, dialect: str = "duckdb") -> Compiled:
    """One query: the population, the count after each top-level rule (cumulative, in the
    order given) and each rule's own count."""
    compiler = _Compiler(dialect, as_of)
    combinator, rules = _top_rules(parsed.tree)
    joiner = " AND " if combinator == "and" else " OR "
    exprs, expr_params = [], []
    for rule in rules:
        rp: list = []
        exprs.append((compiler.expr(rule, rp), rp))
    selects, params = ["COUNT(*)"], []
    for i in range(len(exprs)):
        selects.append("COUNT(*) FILTER (WHERE " + joiner.join(e for e, _ in exprs[: i + 1])
                       + ")")
        for _, rp in exprs[: i + 1]:
            params.extend(rp)
    for e, rp in exprs:
        selects.append(f"COUNT(*) FILTER (WHERE {e})")
        params.extend(rp)
    del expr_params
    compiled = _assemble(compiler, ", ".join(selects), params)
    compiled.step_labels = [_label(r) for r in rules]
    return compiled


def compile_members(parsed: AudienceTree, as_of: datetime, dialect: str = "duckdb",
                    limit: int | None = None, offset: int = 0, scope: str | None = None,
                    count_only: bool = False) -> Compiled:
    """Person ids in the audience, ordered by id (a page with ``limit``/``offset``);
    ``scope``: a table/view of ``person_id`` the members are restricted to."""
    compiler = _Compiler(dialect, as_of)
    params: list = []
    where = compiler.expr(parsed.tree, params)
    ph = compiler.ph
    if count_only:
        return _assemble(compiler, "COUNT(*)", [], f" WHERE {where}", params, scope)
    tail = f" WHERE {where} ORDER BY p.person_id"
    tail_params = list(params)
    if limit is not None:
        tail += f" LIMIT {ph} OFFSET {ph}"
        tail_params += [int(limit), int(offset)]
    return _assemble(compiler, "p.person_id", [], tail, tail_params, scope)


# ---- evaluation on a DB-API connection -----------------------------------------------------
@dataclass
class CountResult:
    total: int
    population: int
    steps: list[dict]
    as_of: datetime
    elapsed_ms: float

    def to_dict(self) -> dict:
        return {"total": self.total, "population": self.population, "steps": self.steps,
                "as_of": self.as_of.isoformat(), "elapsed_ms": round(self.elapsed_ms, 1)}


def run_count(conn: Any, parsed: AudienceTree, as_of: datetime, dialect: str = "duckdb"
              ) -> CountResult:
    """Evaluate ``compile_count`` on ``conn`` (DuckDB connection or psycopg connection)."""
    started = time.perf_counter()
    if dialect == "duckdb":
        population = int(conn.execute("SELECT COUNT(*) FROM persons").fetchone()[0])
        compiled = compile_count_bitmaps(parsed, as_of, population)
    else:
        compiled = compile_count(parsed, as_of, dialect)
    row = _fetch(conn, compiled, dialect)[0]
    n = len(compiled.step_labels)
    population = int(row[0])
    cumulative = [int(x) for x in row[1:1 + n]]
    alone = [int(x) for x in row[1 + n:1 + 2 * n]]
    combinator, _ = _top_rules(parsed.tree)
    steps, before = [], population if combinator == "and" else 0
    for i, label in enumerate(compiled.step_labels):
        steps.append({"rule": i, "label": label, "matching": alone[i],
                      "cumulative": cumulative[i], "change": cumulative[i] - before})
        before = cumulative[i]
    return CountResult(cumulative[-1], population, steps, as_of,
                       (time.perf_counter() - started) * 1000)


def _fetch(conn: Any, compiled: Compiled, dialect: str) -> list[tuple]:
    if dialect == "duckdb":
        return conn.execute(compiled.sql, compiled.params).fetchall()
    with conn.cursor() as cur:
        cur.execute(compiled.sql, compiled.params)
        return cur.fetchall()


def run_members(conn: Any, parsed: AudienceTree, as_of: datetime, dialect: str = "duckdb",
                limit: int | None = None, offset: int = 0, scope: str | None = None
                ) -> tuple[list[str], int]:
    """``(person ids of the page, total members)``."""
    total = int(_fetch(conn, compile_members(parsed, as_of, dialect, scope=scope,
                                             count_only=True), dialect)[0][0])
    rows = _fetch(conn, compile_members(parsed, as_of, dialect, limit, offset, scope), dialect)
    return [r[0] for r in rows], total


# ---- the naive reference: the same tree evaluated with pandas ------------------------------
def evaluate_pandas(parsed: AudienceTree, as_of: datetime, persons: Any, events: Any,
                    key: str = "pk") -> Any:
    """A boolean mask over ``persons`` (pandas frame with ``key`` and the tag columns) for the
    tree, from ``events`` (``key, event_type, event_time, url``) — the simple,
    independent evaluation the SQL is checked and benchmarked against."""
    import fnmatch

    import numpy as np
    import pandas as pd

    ids = persons[key]
    seen = events[events["event_time"] <= as_of]

    def url_mask(frame: Any, leaf: BehaviourCondition) -> Any:
        urls = frame["url"]
        if leaf.url_prefix is not None:
            return urls.str.startswith(leaf.url_prefix).astype("boolean").fillna(False)
        if leaf.url_glob is not None:
            regex = fnmatch.translate(leaf.url_glob)  # fnmatch also reads [..]; refused above
            return urls.str.match(regex).astype("boolean").fillna(False)
        return pd.Series(True, index=frame.index)

    def leaf_behaviour(leaf: BehaviourCondition) -> Any:
        frame = seen if leaf.event_type == "any" else seen[seen["event_type"] == leaf.event_type]
        frame = frame[url_mask(frame, leaf).to_numpy(dtype=bool)]
        ok = pd.Series(True, index=ids.index)
        if leaf.within_days is not None or (leaf.last_before is None and leaf.last_after is None):
            window = frame
            if leaf.within_days is not None:
                window = frame[frame["event_time"] > as_of - timedelta(days=leaf.within_days)]
            counts = window.groupby(key, observed=True).size()
            ok &= ids.map(counts).fillna(0).to_numpy() >= leaf.min_count
        last = frame.groupby(key, observed=True)["event_time"].max()
        last_of = ids.map(last)
        if leaf.last_before is not None:
            ok &= (last_of < leaf.last_before).fillna(False).to_numpy(dtype=bool)
        if leaf.last_after is not None:
            ok &= (last_of > leaf.last_after).fillna(False).to_numpy(dtype=bool)
        return ok

    def leaf_tag(leaf: TagCondition) -> Any:
        column = persons[leaf.field]
        present = column.notna().to_numpy()
        if leaf.op in ("in", "not_in"):
            hit = column.isin(leaf.value).to_numpy() & present
            return pd.Series(hit if leaf.op == "in" else ~hit, index=ids.index)
        values = column.to_numpy()
        with np.errstate(invalid="ignore"):
            compare = {"eq": lambda a: a == leaf.value, "ne": lambda a: a != leaf.value,
                       "gt": lambda a: a > leaf.value, "gte": lambda a: a >= leaf.value,
                       "lt": lambda a: a < leaf.value, "lte": lambda a: a <= leaf.value}
            hit = np.zeros(len(values), dtype=bool)
            hit[present] = compare[leaf.op](values[present])
        return pd.Series(hit, index=ids.index)

    def walk(node: Any) -> Any:
        if isinstance(node, GroupNode):
            masks = [walk(c) for c in node.rules]
            out = masks[0]
            for m in masks[1:]:
                out = (out & m) if node.type == "and" else (out | m)
            return out
        if isinstance(node, NotNode):
            return ~walk(node.rule)
        if isinstance(node, TagCondition):
            return leaf_tag(node)
        return leaf_behaviour(node)

    return walk(parsed.tree)
