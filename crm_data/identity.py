"""One ID: resolve leads into persons as of each lead's time, without over-merging.

A person is a student. Identifiers are not persons: a parent registers two children with one
phone, a family shares one WeChat account, school and library computers share cookies, operators
re-issue a number after a quiet period, forms carry typos. Linking every lead that shares any
identifier (the connected components of the lead–identifier graph, ``component_persons``) merges
siblings, families and everyone who used a library computer into one "person".

**Method** — evidence-weighted linkage in time order (``docs/identity.md`` says why this and not
a linkage library). Leads are taken in ``(created_at, lead_id)`` order. A lead's candidates are
the persons that own one of its identifier hashes *at that moment*; each gets a score, a sum of
log2 Bayes factors (``LinkageWeights``):

* per shared hash: ``agree[type] - log2(persons owning the hash now)`` (term-frequency
  adjustment: a hash many persons share says little); a phone that person has not used for
  ``recycle_quiet_days`` counts ``stale_phone`` less (the number may have been re-issued);
* per identifier type both carry without a shared value: ``- conflict[type]`` (a person rarely
  has two WeChat ids);
* grade (when both are known): ``+ grade_agree`` or ``- grade_conflict`` — siblings share the
  parent's identifiers but not the grade; a person's grade is its first known one;
* city (when both are known and differ): ``- city_conflict``.

The lead joins the best candidate scoring at least ``threshold``. When several candidates reach
it and agree with one another (grades, cities), the lead bridges them: they merge into the oldest
(a merge). Otherwise the lead founds a person. A lead's person never depends on a later lead:
resolving in batches (time order) gives the same persons as resolving everything at once, and a
rerun gives the same bytes.

**Person ids** are ``new_person_id`` of the founding lead (``"P-"`` + 16 hex digits of the
SHA-256 of its id); a merge keeps the id of the oldest person.

**As of each lead's time** (``asof_person_id``). The features of a lead may only use what One ID
knew at its time. A merge happens at the bridging lead's time, so the leads before it belong to
*versions* of the persons: each lead records the version of its person when it came; a merge
seals the versions it joins and opens a new one holding all their leads. The live version of a
person is keyed by its ``person_id``; a sealed one by ``<person_id>~<n>``. The feature build
groups leads by ``asof_person_id`` and counts, for a lead at time t, the leads of its version
created by t (``version_members``) and the orders of hashes its version knew by t
(``version_hashes``).

State (in ``settings.identity_dir``), written through temporary files and renames, so a failed
run leaves the previous state in place:

* ``lead_person.parquet`` — ``lead_id, person_id, first_seen_at, asof_person_id``
* ``identifier_person.parquet`` — ``id_hash, id_type, person_id``: one row per hash, its latest
  owner (what a live submission carrying the hash most likely is; ``lookup_person``)
* ``lead_evidence.parquet`` — ``lead_id, created_at, grade, city`` and
  ``lead_identifiers.parquet`` — ``lead_id, id_type, id_hash``: what the linkage read, so that
  a later run replays it with the new leads (a new lead older than stored ones is placed at its
  time, and the leads after it are resolved again as of their time)
* ``person_versions.parquet`` — ``asof_person_id, lead_id``: the leads a merged version inherited
* ``version_hashes.parquet`` — ``id_hash, asof_person_id, known_at``: each identifier a version
  holds and when its first lead carrying it came (for the feature build: an order keyed by the
  identifier counts for the version's leads from then on, never before)
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from crm_data.ingest import exclusive_lock, write_parquet_atomically
from crm_data.validation import TIMESTAMP_DTYPE, check_id_hashes

LEAD_PERSON_FILE = "lead_person.parquet"
IDENTIFIER_PERSON_FILE = "identifier_person.parquet"
LEAD_EVIDENCE_FILE = "lead_evidence.parquet"
LEAD_IDENTIFIERS_FILE = "lead_identifiers.parquet"
PERSON_VERSIONS_FILE = "person_versions.parquet"
VERSION_HASHES_FILE = "version_hashes.parquet"
LEAD_PERSON_COLUMNS = ["lead_id", "person_id", "first_seen_at", "asof_person_id"]
IDENTIFIER_PERSON_COLUMNS = ["id_hash", "id_type", "person_id"]
EVIDENCE_COLUMNS = ["lead_id", "created_at", "grade", "city"]
LEAD_IDENTIFIER_COLUMNS = ["lead_id", "id_type", "id_hash"]
PERSON_VERSION_COLUMNS = ["asof_person_id", "lead_id"]
VERSION_HASH_COLUMNS = ["id_hash", "asof_person_id", "known_at"]
PERSON_ID_PREFIX = "P-"
VERSION_SEPARATOR = "~"
ID_TYPES = ("phone", "wechat", "email", "cookie")
_PHONE = 0
_COOKIE_BIT = 1 << ID_TYPES.index("cookie")


@dataclass(frozen=True)
class LinkageWeights:
    """Evidence weights (log2 Bayes factors) of the linkage; see the module docstring."""

    agree: tuple[float, float, float, float] = (8.0, 8.0, 8.0, 6.0)  # ID_TYPES order
    conflict: tuple[float, float, float, float] = (3.0, 3.0, 2.0, 0.0)
    stale_phone: float = 4.0  # taken off a phone the person has not used for the quiet days
    recycle_quiet_days: float = 90.0
    grade_agree: float = 2.0
    grade_conflict: float = 14.0
    city_conflict: float = 8.0
    threshold: float = 5.0  # join the best candidate from this score on
    # a bridging lead merges a person in when it shares a phone, WeChat id or e-mail with it,
    # or a cookie with at least this score (a school computer must not bridge strangers)
    merge_threshold: float = 8.0


DEFAULT_WEIGHTS = LinkageWeights()


def new_person_id(lead_id: str) -> str:
    """The id of a person founded by ``lead_id``: ``P-`` + 16 hex digits of its SHA-256."""
    return PERSON_ID_PREFIX + hashlib.sha256(lead_id.encode()).hexdigest()[:16]


def lookup_person(id_hashes: Iterable[str], identifier_person: Mapping[str, str]) -> str | None:
    """The known person of a submission's identifier hashes, or None for an unseen person.

    Hashes are tried in the order given (list the most reliable first, e.g. phone, WeChat,
    e-mail, cookie); the first known one decides. An unseen lead gets
    ``new_person_id(lead_id)``, the id batch resolution founds for it.
    """
    for id_hash in id_hashes:
        person = identifier_person.get(id_hash)
        if person is not None:
            return person
    return None


def _empty(columns: list[str], timestamps: tuple[str, ...] = ()) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=TIMESTAMP_DTYPE if c in timestamps else object)
                         for c in columns})


@dataclass
class IdentityState:
    """The One ID maps: lead → person (and its version as of the lead's time), identifier hash →
    person, and what the linkage read (replayed by the next run)."""

    lead_person: pd.DataFrame
    identifier_person: pd.DataFrame
    evidence: pd.DataFrame = field(default_factory=lambda: _empty(EVIDENCE_COLUMNS,
                                                                  ("created_at",)))
    lead_identifiers: pd.DataFrame = field(default_factory=lambda: _empty(
        LEAD_IDENTIFIER_COLUMNS))
    person_versions: pd.DataFrame = field(default_factory=lambda: _empty(
        PERSON_VERSION_COLUMNS))
    version_hashes: pd.DataFrame = field(default_factory=lambda: _empty(
        VERSION_HASH_COLUMNS, ("known_at",)))

    @classmethod
    def empty(cls) -> IdentityState:
        return cls(_empty(LEAD_PERSON_COLUMNS, ("first_seen_at",)),
                   _empty(IDENTIFIER_PERSON_COLUMNS))

    def identifier_map(self) -> dict[str, str]:
        """``id_hash → person_id`` for ``lookup_person``."""
        return dict(zip(self.identifier_person["id_hash"], self.identifier_person["person_id"],
                        strict=True))

    def files(self, state_dir: Path) -> dict[Path, pd.DataFrame]:
        return {state_dir / LEAD_PERSON_FILE: self.lead_person,
                state_dir / IDENTIFIER_PERSON_FILE: self.identifier_person,
                state_dir / LEAD_EVIDENCE_FILE: self.evidence,
                state_dir / LEAD_IDENTIFIERS_FILE: self.lead_identifiers,
                state_dir / PERSON_VERSIONS_FILE: self.person_versions,
                state_dir / VERSION_HASHES_FILE: self.version_hashes}


def load_identity_state(state_dir: Path) -> IdentityState:
    """Read the One ID state from ``state_dir`` (empty when nothing was resolved yet)."""
    state_dir = Path(state_dir)
    state = IdentityState.empty()
    paths = state.files(state_dir)
    present = [p for p in paths if p.exists()]
    if not present:
        return state
    if len(present) < len(paths):
        missing = ", ".join(p.name for p in paths if not p.exists())
        raise ValueError(f"One ID state in {state_dir} is incomplete: {missing} missing; "
                         "remove it to resolve from scratch")
    frames = []
    for path, empty in paths.items():
        frame = pd.read_parquet(path)
        missing_columns = [c for c in empty.columns if c not in frame.columns]
        if missing_columns:
            raise ValueError(f"One ID state file {path} lacks column(s) {missing_columns}")
        frames.append(frame[list(empty.columns)])
    return IdentityState(*frames)


def pairwise_precision_recall(pred_person: pd.Series, true_person: pd.Series
                              ) -> tuple[float, float]:
    """Pairwise precision and recall of a clustering, from contingency counts.

    Both series are indexed by lead (aligned on the index; leads in only one are ignored).
    A pair of leads is predicted together when they share ``pred_person``; precision is the
    share of predicted pairs that are true pairs, recall the share of true pairs predicted.
    With no predicted (true) pairs, precision (recall) is 1.0.
    """
    both = pd.concat({"pred": pred_person, "true": true_person}, axis=1, join="inner")
    if both.isna().any().any():
        column = "pred_person" if both["pred"].isna().any() else "true_person"
        raise ValueError(f"{column} has null person ids")

    def pairs(counts: pd.Series) -> float:
        n = counts.to_numpy(dtype=np.float64)
        return float((n * (n - 1) / 2).sum())

    true_positive = pairs(both.groupby(["pred", "true"], sort=False).size())
    predicted = pairs(both.groupby("pred", sort=False).size())
    actual = pairs(both.groupby("true", sort=False).size())
    precision = true_positive / predicted if predicted else 1.0
    recall = true_positive / actual if actual else 1.0
    return precision, recall


@dataclass
class IdentityResult:
    """Counts of one resolution run (and the resulting state)."""

    leads: int = 0  # leads given
    known: int = 0  # of which already resolved before
    new: int = 0  # persons founded by new leads
    joined: int = 0  # new leads attached to an existing person
    merged: int = 0  # persons absorbed into an older one at a new lead
    no_identifier: int = 0  # new leads without a usable identifier (a person of their own)
    rejected: int = 0  # identifier rows not used
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    persons: int = 0  # persons in the state after the run
    resolved_leads: int = 0  # leads in the state after the run
    largest_person: int = 0  # leads of the largest person
    precision: float | None = None
    recall: float | None = None
    true_largest_person: int | None = None
    seconds: float = 0.0
    state: IdentityState | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "leads": self.leads, "known": self.known, "new": self.new, "joined": self.joined,
            "merged": self.merged, "no_identifier": self.no_identifier,
            "rejected": self.rejected, "rejected_reasons": dict(self.rejected_reasons),
            "persons": self.persons, "resolved_leads": self.resolved_leads,
            "largest_person": self.largest_person, "precision": self.precision,
            "recall": self.recall, "true_largest_person": self.true_largest_person,
            "seconds": round(self.seconds, 3),
        }


def _require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}")


def _usable_identities(identities: pd.DataFrame, known_leads: pd.Index
                       ) -> tuple[pd.DataFrame, dict[str, int]]:
    """Identifier rows fit to link leads, and rejected counts by reason."""
    check = check_id_hashes(identities["id_hash"], identities["id_type"])
    unknown = known_leads.get_indexer(identities["lead_id"]) < 0
    reasons = {}
    taken = np.zeros(len(identities), dtype=bool)
    for reason, mask in (("missing_hash", check.missing), ("malformed_hash", check.malformed),
                         ("type_mismatch", check.type_mismatch), ("unknown_lead", unknown)):
        fresh = mask & ~taken
        if fresh.any():
            reasons[reason] = int(fresh.sum())
        taken |= fresh
    usable = identities.loc[~taken, LEAD_IDENTIFIER_COLUMNS].reset_index(drop=True)
    return usable, dict(sorted(reasons.items()))


def component_persons(identities: pd.DataFrame, lead_ids: pd.Series) -> pd.Series:
    """Connected components of the lead–identifier graph (every shared hash links): the person
    key (a component number) of each lead of ``lead_ids``. The simple method One ID used before
    ``resolve_identities``; ``benchmarks/bench_identity.py`` measures both."""
    leads = pd.Index(lead_ids)
    pos = leads.get_indexer(identities["lead_id"])
    ok = pos >= 0
    codes, hashes = pd.factorize(identities["id_hash"][ok])
    n = len(leads) + len(hashes)
    graph = coo_matrix((np.ones(int(ok.sum()), dtype=np.int8),
                        (pos[ok], len(leads) + codes)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    return pd.Series(labels[:len(leads)], index=leads)


def _codes(values: pd.Series) -> np.ndarray:
    """Category codes of a column, -1 for missing (and for a column that is absent)."""
    codes, _ = pd.factorize(values.astype(object).where(values.notna(), None), sort=True)
    return codes.astype(np.int64)


class _Linker:
    """The sequential linkage over leads in time order (see the module docstring)."""

    def __init__(self, weights: LinkageWeights, n_hashes: int) -> None:
        self.w = weights
        self.quiet_us = int(weights.recycle_quiet_days * 86_400_000_000)
        self.owners: list[list[int] | None] = [None] * n_hashes
        self.owner_last: list[list[int] | None] = [None] * n_hashes
        self.hashes: list[list[int]] = []  # per person
        self.types: list[int] = []  # per person: bit per id type
        self.grade: list[int] = []  # per person: first known grade, -1
        self.city: list[int] = []
        self.alive: list[bool] = []
        self.version: list[int] = []  # per person: current version
        self.version_person: list[int] = []  # per version: its person
        self.version_parents: list[tuple[int, ...]] = []
        self.merges = 0
        self.log2 = [0.0] + [math.log2(k) for k in range(1, 64)]
        self.agree, self.stale = list(weights.agree), weights.stale_phone
        self.conflict_of = [sum(weights.conflict[k] for k in range(4) if mask >> k & 1)
                            for mask in range(16)]
        self.threshold, self.merge_threshold = weights.threshold, weights.merge_threshold
        self.grade_agree, self.grade_conflict = weights.grade_agree, weights.grade_conflict
        self.city_conflict = weights.city_conflict

    def _new_version(self, person: int, parents: tuple[int, ...] = ()) -> int:
        self.version_person.append(person)
        self.version_parents.append(parents)
        return len(self.version_person) - 1

    def _found(self) -> int:
        p = len(self.alive)
        self.hashes.append([])
        self.types.append(0)
        self.grade.append(-1)
        self.city.append(-1)
        self.alive.append(True)
        self.version.append(self._new_version(p))
        return p

    def found_many(self, k: int) -> np.ndarray:
        """Found ``k`` persons at once (leads that share no identifier with any other lead)."""
        first_person, first_version = len(self.alive), len(self.version_person)
        self.hashes.extend([] for _ in range(k))
        self.types.extend([0] * k)
        self.grade.extend([-1] * k)
        self.city.extend([-1] * k)
        self.alive.extend([True] * k)
        self.version.extend(range(first_version, first_version + k))
        self.version_person.extend(range(first_person, first_person + k))
        self.version_parents.extend([()] * k)
        return np.arange(first_person, first_person + k)

    def _compatible(self, a: int, b: int) -> bool:
        ga, gb, ca, cb = self.grade[a], self.grade[b], self.city[a], self.city[b]
        return (ga < 0 or gb < 0 or ga == gb) and (ca < 0 or cb < 0 or ca == cb)

    def _merge(self, keep: int, gone: int) -> None:
        owners, last = self.owners, self.owner_last
        for h in self.hashes[gone]:
            own, seen = owners[h], last[h]
            i = own.index(gone)
            if keep in own:
                j = own.index(keep)
                seen[j] = max(seen[j], seen[i])
                del own[i], seen[i]
            else:
                own[i] = keep
                self.hashes[keep].append(h)
        self.types[keep] |= self.types[gone]
        if self.grade[keep] < 0:
            self.grade[keep] = self.grade[gone]
        if self.city[keep] < 0:
            self.city[keep] = self.city[gone]
        self.alive[gone] = False
        self.merges += 1

    def link(self, t: int, hashes: list[int], types: list[int], grade: int, city: int) -> int:
        """The person of a lead at time ``t`` (µs) with these hash codes (and their type codes),
        grade and city codes (-1 unknown); updates the state."""
        owners, last = self.owners, self.owner_last
        score: dict[int, float] = {}
        shared: dict[int, int] = {}
        lead_types = 0
        agree, log2, quiet, stale = self.agree, self.log2, self.quiet_us, self.stale
        for h, k in zip(hashes, types, strict=True):
            lead_types |= 1 << k
            own = owners[h]
            if not own:
                continue
            n_own = len(own)
            base = agree[k] - (log2[n_own] if n_own < 64 else log2[63])
            bit = 1 << k
            seen = last[h]
            for i in range(n_own):
                p = own[i]
                gain = base - stale if k == _PHONE and t - seen[i] > quiet else base
                if p in score:
                    score[p] += gain
                    shared[p] |= bit
                else:
                    score[p] = gain
                    shared[p] = bit
        chosen = -1
        if score:
            passing = []
            types_of, grade_of, city_of = self.types, self.grade, self.city
            conflict_of, threshold = self.conflict_of, self.threshold
            for p, s in score.items():
                s -= conflict_of[lead_types & types_of[p] & ~shared[p]]
                g = grade_of[p]
                if grade >= 0 and g >= 0:
                    s += self.grade_agree if g == grade else -self.grade_conflict
                c = city_of[p]
                if city >= 0 and c >= 0 and c != city:
                    s -= self.city_conflict
                if s >= threshold:
                    passing.append((-s, p))
            if len(passing) == 1:
                chosen = passing[0][1]
            elif passing:
                passing.sort()
                group = [passing[0][1]]
                for negative, p in passing[1:]:
                    sure = -negative >= self.merge_threshold or shared[p] & ~_COOKIE_BIT
                    if sure and all(self._compatible(p, q) for q in group):
                        group.append(p)
                chosen = min(group)
                if len(group) > 1:
                    parents = tuple(self.version[p] for p in sorted(group))
                    for p in group:
                        if p != chosen:
                            self._merge(chosen, p)
                    self.version[chosen] = self._new_version(chosen, parents)
        if chosen < 0:
            chosen = self._found()
        mine = self.hashes[chosen]
        for h in hashes:
            own = owners[h]
            if own is None:
                owners[h], last[h] = [chosen], [t]
                mine.append(h)
            elif chosen in own:
                last[h][own.index(chosen)] = t
            else:
                own.append(chosen)
                last[h].append(t)
                mine.append(h)
        self.types[chosen] |= lead_types
        if grade >= 0 and self.grade[chosen] < 0:
            self.grade[chosen] = grade
        if city >= 0 and self.city[chosen] < 0:
            self.city[chosen] = city
        return chosen


def _time_order(t_us: np.ndarray, lead_ids: np.ndarray) -> np.ndarray:
    """Positions in ``(created_at, lead_id)`` order (lead ids compared only within ties)."""
    order = np.argsort(t_us, kind="stable")
    sorted_t = t_us[order]
    tie = np.flatnonzero(sorted_t[1:] == sorted_t[:-1])
    if tie.size:
        starts = tie[np.r_[True, np.diff(tie) > 1]]
        for a in starts.tolist():
            b = a + 1
            while b < len(order) and sorted_t[b] == sorted_t[a]:
                b += 1
            order[a:b] = sorted(order[a:b].tolist(), key=lead_ids.__getitem__)
    return order


def link_leads(evidence: pd.DataFrame, lead_identifiers: pd.DataFrame,
               weights: LinkageWeights = DEFAULT_WEIGHTS,
               hash_codes: np.ndarray | None = None) -> dict[str, object]:
    """Run the linkage over ``evidence`` (``lead_id, created_at, grade, city``, any order) and
    their identifier rows (``hash_codes``: the rows' ``id_hash`` factorized, when at hand).
    Returns per lead in the order given: ``person`` (final person number), ``version`` (its
    version number at the lead's time), ``founded``, ``merged_at``, the time ``order`` and the
    ``linker`` (versions, persons) for the state."""
    n = len(evidence)
    created = evidence["created_at"].astype(TIMESTAMP_DTYPE)
    t_us = created.dt.tz_localize(None).to_numpy("datetime64[us]").view(np.int64)
    lead_ids = evidence["lead_id"].to_numpy(dtype=object)
    order = _time_order(t_us, lead_ids)
    pos = pd.Index(lead_ids).get_indexer(lead_identifiers["lead_id"])
    codes = (pd.factorize(lead_identifiers["id_hash"])[0] if hash_codes is None
             else hash_codes)
    type_codes = pd.Index(ID_TYPES).get_indexer(lead_identifiers["id_type"])
    by_lead = np.argsort(pos, kind="stable")
    starts = np.searchsorted(pos[by_lead], np.arange(n + 1)).tolist()
    hash_lists = codes[by_lead].tolist()
    type_lists = type_codes[by_lead].tolist()
    grade = _codes(evidence["grade"]).tolist()
    city = _codes(evidence["city"]).tolist()
    linker = _Linker(weights, int(codes.max()) + 1 if len(codes) else 0)
    person = [0] * n
    version = [0] * n
    founded = [False] * n
    merged_at = [0] * n
    t_list = t_us.tolist()
    link, alive, versions = linker.link, linker.alive, linker.version
    # a lead sharing no identifier with any other lead founds a person whatever the weights:
    # only leads of identifiers held by two leads or more go through the sequential linkage
    counts = np.bincount(codes, minlength=int(codes.max()) + 1 if len(codes) else 0)
    shared_rows = counts[codes] > 1 if len(codes) else np.zeros(0, dtype=bool)
    in_loop = np.zeros(n, dtype=bool)
    in_loop[pos[shared_rows]] = True
    for i in order[in_loop[order]].tolist():
        a, b = starts[i], starts[i + 1]
        persons_before, merges_before = len(alive), linker.merges
        p = link(t_list[i], hash_lists[a:b], type_lists[a:b], grade[i], city[i])
        person[i] = p
        version[i] = versions[p]
        founded[i] = p == persons_before
        merged_at[i] = linker.merges - merges_before
    alone = order[~in_loop[order]]
    numbers = linker.found_many(alone.size)
    for i, p in zip(alone.tolist(), numbers.tolist(), strict=True):
        person[i] = version[i] = p  # (one version per person founded here)
        founded[i] = True
    version_of = linker.version
    for i, p in zip(alone.tolist(), numbers.tolist(), strict=True):
        version[i] = version_of[p]
    # final person of every person number: follow merges to the surviving (oldest) person
    final = np.arange(len(alive))
    survivor = {}
    for v, parents in enumerate(linker.version_parents):
        for parent in parents:
            q = linker.version_person[parent]
            if q != linker.version_person[v]:
                survivor[q] = linker.version_person[v]
    for q in survivor:
        r = q
        while r in survivor:
            r = survivor[r]
        final[q] = r
    return {"person": final[np.asarray(person, dtype=np.int64)],
            "version": np.asarray(version, dtype=np.int64),
            "founded": np.asarray(founded, dtype=bool),
            "merged_at": np.asarray(merged_at, dtype=np.int64), "linker": linker,
            "order": order, "pos": pos}


def _version_keys(linker: _Linker, person_ids: np.ndarray) -> np.ndarray:
    """Key of every version: the live one of a person is its id, a sealed one ``id~n``."""
    keys = np.empty(len(linker.version_person), dtype=object)
    count: dict[int, int] = {}
    current = {v for p, v in enumerate(linker.version) if linker.alive[p]}
    for v, p in enumerate(linker.version_person):
        if v in current:
            keys[v] = person_ids[p]
        else:
            count[p] = count.get(p, 0) + 1
            keys[v] = f"{person_ids[p]}{VERSION_SEPARATOR}{count[p]}"
    return keys


def _ancestors(linker: _Linker) -> dict[int, set[int]]:
    """Per merged version, every version it joined (recursively)."""
    out: dict[int, set[int]] = {}
    for v, parents in enumerate(linker.version_parents):
        if not parents:
            continue
        stack, seen = list(parents), set()
        while stack:
            u = stack.pop()
            if u not in seen:
                seen.add(u)
                stack.extend(linker.version_parents[u])
        out[v] = seen
    return out


def _own_leads(version: np.ndarray, needed: set[int]) -> dict[int, list[int]]:
    """Lead positions per version of ``needed`` (the versions leads came to)."""
    if not needed:
        return {}
    rows = np.flatnonzero(np.isin(version, np.fromiter(needed, dtype=np.int64)))
    own: dict[int, list[int]] = {}
    for i, v in zip(rows.tolist(), version[rows].tolist(), strict=True):
        own.setdefault(v, []).append(i)
    return own


def _inherited_members(linker: _Linker, version_of_lead: np.ndarray, lead_ids: np.ndarray,
                       keys: np.ndarray) -> pd.DataFrame:
    """``asof_person_id, lead_id`` of the leads each merged version inherited from the
    versions it joined (recursively)."""
    ancestors = _ancestors(linker)
    if not ancestors:
        return _empty(PERSON_VERSION_COLUMNS)
    own = _own_leads(version_of_lead, set().union(*ancestors.values()))
    rows_key, rows_lead = [], []
    for v, joined in ancestors.items():
        for u in sorted(joined):
            for i in own.get(u, ()):
                rows_key.append(keys[v])
                rows_lead.append(lead_ids[i])
    frame = pd.DataFrame({"asof_person_id": pd.Series(rows_key, dtype=object),
                          "lead_id": pd.Series(rows_lead, dtype=object)})
    return frame.sort_values(["asof_person_id", "lead_id"], ignore_index=True)


def resolve_identities(identities: pd.DataFrame, leads: pd.DataFrame, state_dir: Path,
                       truth: pd.DataFrame | None = None,
                       weights: LinkageWeights = DEFAULT_WEIGHTS) -> IdentityResult:
    """Resolve ``leads`` (with their ``identities`` rows) into persons and save the state.

    ``leads`` needs ``lead_id, created_at`` (``grade`` and ``city`` are used when present);
    ``identities`` needs ``lead_id, id_type, id_hash``. Unusable identifier rows (missing or
    malformed hash, type mismatch, unknown lead) are counted, not raised. With ``truth``
    (``lead_id, true_person_id``) the result carries pairwise precision/recall over every
    resolved lead found in it, and the truth's largest person.
    """
    started = time.perf_counter()
    _require_columns(leads, ["lead_id", "created_at"], "leads")
    _require_columns(identities, ["lead_id", "id_type", "id_hash"], "identities")
    if leads["lead_id"].isna().any():
        raise ValueError("leads: column 'lead_id' has null values")
    duplicated = leads["lead_id"].duplicated()
    if duplicated.any():
        examples = ", ".join(map(str, leads.loc[duplicated, "lead_id"].head(5)))
        raise ValueError(f"leads: column 'lead_id' has duplicate values (e.g. {examples})")
    created = leads["created_at"]
    if not isinstance(created.dtype, pd.DatetimeTZDtype) or created.isna().any():
        raise ValueError("leads: column 'created_at' must hold timezone-aware timestamps "
                         "without nulls")

    state_dir = Path(state_dir)
    with exclusive_lock(state_dir, ".identity.lock"):
        return _resolve_locked(identities, leads, state_dir, truth, started, weights)


def _resolve_locked(identities: pd.DataFrame, leads: pd.DataFrame, state_dir: Path,
                    truth: pd.DataFrame | None, started: float,
                    weights: LinkageWeights) -> IdentityResult:
    state = load_identity_state(state_dir)
    result = IdentityResult(leads=len(leads))
    stored_ids = pd.Index(state.evidence["lead_id"])
    known = stored_ids.get_indexer(leads["lead_id"]) >= 0
    result.known = int(known.sum())
    new = pd.DataFrame({
        "lead_id": leads.loc[~known, "lead_id"].to_numpy(dtype=object),
        "created_at": leads.loc[~known, "created_at"].astype(TIMESTAMP_DTYPE).array,
        "grade": (leads.loc[~known, "grade"].to_numpy(dtype=object) if "grade" in leads
                  else np.full(int((~known).sum()), None, dtype=object)),
        "city": (leads.loc[~known, "city"].to_numpy(dtype=object) if "city" in leads
                 else np.full(int((~known).sum()), None, dtype=object)),
    })
    new["created_at"] = new["created_at"].astype(TIMESTAMP_DTYPE)
    evidence = (pd.concat([state.evidence, new], ignore_index=True) if len(state.evidence)
                else new)
    all_ids = pd.Index(evidence["lead_id"])
    usable, result.rejected_reasons = _usable_identities(identities, all_ids)
    result.rejected = sum(result.rejected_reasons.values())
    # stored identifier rows first, then rows not yet stored (a known lead's new rows too)
    combined = pd.concat([state.lead_identifiers, usable], ignore_index=True)
    lead_identifiers = combined.drop_duplicates(ignore_index=True)

    hash_codes, hash_values = pd.factorize(lead_identifiers["id_hash"])
    linked = link_leads(evidence, lead_identifiers, weights, hash_codes)
    linker: _Linker = linked["linker"]
    n_old = len(state.evidence)
    lead_ids = evidence["lead_id"].to_numpy(dtype=object)
    order = linked["order"]
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    # the founding lead of each person number: its first lead in time order
    person_at = np.asarray(linker.version_person, dtype=np.int64)[linked["version"]]
    founders = order[linked["founded"][order]]
    founder = np.empty(len(linker.alive), dtype=np.int64)
    founder[person_at[founders]] = founders
    person_ids = np.array([new_person_id(lead_ids[i]) for i in founder.tolist()], dtype=object)
    keys = _version_keys(linker, person_ids)

    is_new = np.arange(len(evidence)) >= n_old
    result.new = int((linked["founded"] & is_new).sum())
    result.merged = int(linked["merged_at"][is_new].sum())
    pos = linked["pos"]
    has_link = np.zeros(len(evidence), dtype=bool)
    has_link[pos] = True
    result.no_identifier = int((is_new & ~has_link).sum())
    result.joined = int((is_new & ~linked["founded"]).sum())

    final = linked["person"]
    lead_person = pd.DataFrame({
        "lead_id": lead_ids,
        "person_id": person_ids[final],
        "first_seen_at": evidence["created_at"].astype(TIMESTAMP_DTYPE),
        "asof_person_id": keys[linked["version"]],
    })
    # identifier → the person of its latest lead (what a live submission carrying it most
    # likely is), in order of the identifier's first row
    latest = np.lexsort((rank[pos], hash_codes))
    last_row = latest[np.r_[hash_codes[latest][1:] != hash_codes[latest][:-1], True]]
    _, first_row = np.unique(hash_codes, return_index=True)
    identifier_person = pd.DataFrame({
        "id_hash": np.asarray(hash_values, dtype=object),
        "id_type": lead_identifiers["id_type"].to_numpy(dtype=object)[first_row],
        "person_id": person_ids[final[pos[last_row]]],
    })
    new_state = IdentityState(
        lead_person=lead_person, identifier_person=identifier_person,
        evidence=evidence[EVIDENCE_COLUMNS], lead_identifiers=lead_identifiers,
        person_versions=_inherited_members(linker, linked["version"], lead_ids, keys),
    )
    new_state.version_hashes = _version_hashes(linked["version"], keys, pos, hash_codes,
                                               hash_values, evidence, linker)
    write_parquet_atomically(new_state.files(state_dir))
    result.state = new_state
    sizes = lead_person["person_id"].value_counts()
    result.persons = len(sizes)
    result.largest_person = int(sizes.max()) if len(sizes) else 0
    result.resolved_leads = len(lead_person)
    if truth is not None:
        _require_columns(truth, ["lead_id", "true_person_id"], "truth")
        pred = lead_person.set_index("lead_id")["person_id"]
        true = truth.set_index("lead_id")["true_person_id"]
        result.precision, result.recall = pairwise_precision_recall(pred, true)
        in_state = true[true.index.isin(pred.index)]
        result.true_largest_person = int(in_state.value_counts().max()) if len(in_state) else 0
    result.seconds = time.perf_counter() - started
    return result


def version_members(state: IdentityState) -> pd.DataFrame:
    """``asof_person_id, lead_id`` of every lead each version holds: its own leads (those that
    came while it was its person's version) and those it inherited at a merge."""
    own = state.lead_person[["asof_person_id", "lead_id"]]
    return pd.concat([own, state.person_versions], ignore_index=True)


def _version_hashes(version: np.ndarray, keys: np.ndarray, pos: np.ndarray,
                    hash_codes: np.ndarray, hash_values: pd.Index, evidence: pd.DataFrame,
                    linker: _Linker) -> pd.DataFrame:
    """``id_hash, asof_person_id, known_at`` (see ``VERSION_HASHES_FILE``): per version, each
    identifier of its leads (own and inherited) and the earliest such lead's time."""
    t_us = (evidence["created_at"].astype(TIMESTAMP_DTYPE).dt.tz_localize(None)
            .to_numpy("datetime64[us]").view(np.int64))
    row_version = [version[pos]]
    row_hash = [hash_codes]
    row_t = [t_us[pos]]
    ancestors = _ancestors(linker)
    if ancestors:  # inherited leads: their identifier rows once more, under the merged version
        by_lead = np.argsort(pos, kind="stable")
        starts = np.searchsorted(pos[by_lead], np.arange(len(t_us) + 1))
        own = _own_leads(version, set().union(*ancestors.values()))
        for v, joined in ancestors.items():
            for u in sorted(joined):
                for i in own.get(u, ()):
                    rows = by_lead[starts[i]:starts[i + 1]]
                    row_version.append(np.full(rows.size, v))
                    row_hash.append(hash_codes[rows])
                    row_t.append(t_us[pos[rows]])
    v_all, h_all, t_all = (np.concatenate(row_version), np.concatenate(row_hash),
                           np.concatenate(row_t))
    order = np.lexsort((t_all, v_all, h_all))
    h_s, v_s = h_all[order], v_all[order]
    first = np.r_[True, (h_s[1:] != h_s[:-1]) | (v_s[1:] != v_s[:-1])]
    rows = order[first]
    known = pd.Series(pd.to_datetime(t_all[rows], unit="us", utc=True)).astype(TIMESTAMP_DTYPE)
    return pd.DataFrame({
        "id_hash": np.asarray(hash_values, dtype=object)[h_all[rows]],
        "asof_person_id": keys[v_all[rows]],
        "known_at": known,
    })[VERSION_HASH_COLUMNS]
