"""One ID: resolve leads into persons, incrementally, with stable person ids.

Leads that share any identifier hash belong to one person: persons are the connected
components of the lead–identifier graph (``scipy.sparse.csgraph.connected_components``).

State (in ``settings.identity_dir``):

* ``lead_person.parquet`` — ``lead_id, person_id, first_seen_at`` (the lead's ``created_at``)
* ``identifier_person.parquet`` — ``id_hash, id_type, person_id``

A run adds new leads to this state. The graph's nodes are the existing persons, the new leads
and the identifier hashes; a component holding existing persons keeps the id of its *oldest*
person (earliest ``first_seen_at``, then smallest id) and absorbs the others (a merge); a
component of new leads only founds a person whose id is ``new_person_id`` of its earliest lead
(earliest ``created_at``, then smallest ``lead_id``): ``"P-"`` + the first 16 hex digits of the
SHA-256 of that lead id. Ids are thus stable across reruns, and resolving batches in time order
gives the same ids as resolving everything at once. Leads already in the state are not
re-resolved (their new identifier rows are still linked). The state is written through
temporary files and renames, so a failed run leaves the previous state in place.
"""

from __future__ import annotations

import hashlib
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
LEAD_PERSON_COLUMNS = ["lead_id", "person_id", "first_seen_at"]
IDENTIFIER_PERSON_COLUMNS = ["id_hash", "id_type", "person_id"]
PERSON_ID_PREFIX = "P-"


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


@dataclass
class IdentityState:
    """The One ID maps: lead → person and identifier hash → person."""

    lead_person: pd.DataFrame
    identifier_person: pd.DataFrame

    @classmethod
    def empty(cls) -> IdentityState:
        return cls(
            pd.DataFrame({"lead_id": pd.Series([], dtype=object),
                          "person_id": pd.Series([], dtype=object),
                          "first_seen_at": pd.Series([], dtype=TIMESTAMP_DTYPE)}),
            pd.DataFrame({c: pd.Series([], dtype=object) for c in IDENTIFIER_PERSON_COLUMNS}),
        )

    def identifier_map(self) -> dict[str, str]:
        """``id_hash → person_id`` for ``lookup_person``."""
        return dict(zip(self.identifier_person["id_hash"], self.identifier_person["person_id"],
                        strict=True))


def load_identity_state(state_dir: Path) -> IdentityState:
    """Read the One ID state from ``state_dir`` (empty when nothing was resolved yet)."""
    state_dir = Path(state_dir)
    lead_path, id_path = state_dir / LEAD_PERSON_FILE, state_dir / IDENTIFIER_PERSON_FILE
    if not lead_path.exists() and not id_path.exists():
        return IdentityState.empty()
    if not (lead_path.exists() and id_path.exists()):
        present = lead_path if lead_path.exists() else id_path
        raise ValueError(f"One ID state in {state_dir} is incomplete: only {present.name} "
                         "exists; remove it to resolve from scratch")
    lead_person = pd.read_parquet(lead_path)
    identifier_person = pd.read_parquet(id_path)
    for frame, columns, path in ((lead_person, LEAD_PERSON_COLUMNS, lead_path),
                                 (identifier_person, IDENTIFIER_PERSON_COLUMNS, id_path)):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"One ID state file {path} lacks column(s) {missing}")
    return IdentityState(lead_person[LEAD_PERSON_COLUMNS],
                         identifier_person[IDENTIFIER_PERSON_COLUMNS])


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
    known: int = 0  # of which already resolved before (left as they were)
    new: int = 0  # persons founded by new leads
    joined: int = 0  # new leads attached to an existing person
    merged: int = 0  # existing persons absorbed into an older one
    no_identifier: int = 0  # new leads without a usable identifier (a person of their own)
    rejected: int = 0  # identifier rows not used
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    persons: int = 0  # persons in the state after the run
    resolved_leads: int = 0  # leads in the state after the run
    precision: float | None = None
    recall: float | None = None
    seconds: float = 0.0
    state: IdentityState | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "leads": self.leads, "known": self.known, "new": self.new, "joined": self.joined,
            "merged": self.merged, "no_identifier": self.no_identifier,
            "rejected": self.rejected, "rejected_reasons": dict(self.rejected_reasons),
            "persons": self.persons, "resolved_leads": self.resolved_leads,
            "precision": self.precision, "recall": self.recall,
            "seconds": round(self.seconds, 3),
        }


def _utc_naive(stamps: pd.Series) -> np.ndarray:
    """Timezone-aware timestamps as naive UTC ``datetime64[us]`` (fast to sort)."""
    return stamps.astype(TIMESTAMP_DTYPE).dt.tz_localize(None).to_numpy("datetime64[us]")


def _require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}")


def _usable_identities(identities: pd.DataFrame, lead_pos: np.ndarray
                       ) -> tuple[pd.DataFrame, dict[str, int]]:
    """Identifier rows fit to link leads (with ``lead_pos``), and rejected counts by reason.

    ``lead_pos`` is each row's lead position among stored + new leads (-1: unknown lead).
    """
    check = check_id_hashes(identities["id_hash"], identities["id_type"])
    unknown = lead_pos < 0
    reasons = {}
    taken = np.zeros(len(identities), dtype=bool)
    for reason, mask in (("missing_hash", check.missing), ("malformed_hash", check.malformed),
                         ("type_mismatch", check.type_mismatch), ("unknown_lead", unknown)):
        fresh = mask & ~taken
        if fresh.any():
            reasons[reason] = int(fresh.sum())
        taken |= fresh
    usable = identities.loc[~taken, ["id_type", "id_hash"]].reset_index(drop=True)
    usable["lead_pos"] = lead_pos[~taken]
    return usable, dict(sorted(reasons.items()))


def _pick_survivors(component: np.ndarray, rank: np.ndarray, time_us: np.ndarray,
                    key: np.ndarray) -> np.ndarray:
    """Index of each component's winner: lowest (rank, time), then smallest key.

    Sorting by strings is slow, so keys only break the (rare) ties of (rank, time).
    """
    order = np.lexsort((time_us, rank, component))
    comp_sorted = component[order]
    first = np.flatnonzero(np.r_[True, comp_sorted[1:] != comp_sorted[:-1]])
    winners = order[first]
    # candidates tying with their component's first on (rank, time)
    head = np.repeat(first, np.diff(np.r_[first, len(order)]))
    tie = ((rank[order] == rank[order[head]]) & (time_us[order] == time_us[order[head]])
           & (np.arange(len(order)) != head))
    ends = np.r_[first[1:], len(order)]
    for group in np.unique(np.searchsorted(first, head[tie])):
        members = order[first[group]:ends[group]]
        tied = members[(rank[members] == rank[members[0]])
                       & (time_us[members] == time_us[members[0]])]
        winners[group] = min(tied, key=key.__getitem__)
    return winners


def _resolve(state: IdentityState, new_leads: pd.DataFrame, links: pd.DataFrame,
             result: IdentityResult) -> IdentityState:
    """Connected components over persons, new leads and hashes; the new state."""
    old_lp, old_ip = state.lead_person, state.identifier_person
    person_codes_of_lead, persons = pd.factorize(old_lp["person_id"])
    persons = np.asarray(persons, dtype=object)
    n_new, n_persons = len(new_leads), len(persons)
    n_owners = n_new + n_persons

    # owner node of every link row: a new lead, or the person of a known lead
    lead_pos = links["lead_pos"].to_numpy()
    n_old = len(old_lp)
    is_new = lead_pos >= n_old
    owner = np.where(is_new, lead_pos - n_old,
                     n_new + person_codes_of_lead[np.where(is_new, 0, lead_pos)]
                     if n_old else 0)
    # identifier_person rows: the person owns the hash
    id_person = pd.Index(persons).get_indexer(old_ip["person_id"])
    if (id_person < 0).any():
        raise ValueError("One ID state is inconsistent: identifier_person names persons "
                         "that lead_person does not hold; remove the state to start afresh")
    id_owner = n_new + id_person

    # stored hashes first, so a rerun writes identifier_person in the same order
    all_hashes = pd.concat([old_ip["id_hash"], links["id_hash"]], ignore_index=True)
    all_types = pd.concat([old_ip["id_type"], links["id_type"]], ignore_index=True)
    hash_codes, hash_values = pd.factorize(all_hashes)
    n_nodes = n_owners + len(hash_values)
    rows = np.concatenate([id_owner, owner]).astype(np.int64)
    cols = (n_owners + hash_codes).astype(np.int64)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)),
                       shape=(n_nodes, n_nodes)).tocsr()
    _, labels = connected_components(graph, directed=False)

    # candidates per component: existing persons first (oldest first), then new leads
    person_first_seen = (pd.Series(_utc_naive(old_lp["first_seen_at"]).view(np.int64))
                         .groupby(person_codes_of_lead).min().to_numpy())
    winners = _pick_survivors(
        component=labels[:n_owners],
        rank=np.concatenate([np.ones(n_new, dtype=np.int8), np.zeros(n_persons, np.int8)]),
        time_us=np.concatenate([_utc_naive(new_leads["created_at"]).view(np.int64),
                                person_first_seen]),
        key=np.concatenate([new_leads["lead_id"].to_numpy(dtype=object), persons]),
    )
    founders = winners < n_new
    winner_ids = np.empty(len(winners), dtype=object)
    winner_ids[~founders] = persons[winners[~founders] - n_new]
    founder_leads = new_leads["lead_id"].to_numpy(dtype=object)[winners[founders]]
    winner_ids[founders] = [new_person_id(k) for k in founder_leads]
    survivor_of_component = np.empty(labels.max() + 1 if len(labels) else 0, dtype=object)
    survivor_of_component[labels[winners]] = winner_ids
    owner_person = survivor_of_component[labels[:n_owners]]

    # counts
    person_survivor = owner_person[n_new:]
    result.merged = int((person_survivor != persons).sum())
    result.new = int(founders.sum())
    components_with_persons = np.unique(labels[n_new:n_owners])
    result.joined = int(np.isin(labels[:n_new], components_with_persons).sum())
    has_link = np.zeros(n_new, dtype=bool)
    has_link[lead_pos[is_new] - n_old] = True
    result.no_identifier = int(n_new - has_link.sum())

    # stored rows keep their order and new leads follow in input order: reruns are byte-stable
    lead_person = pd.DataFrame({
        "lead_id": np.concatenate([old_lp["lead_id"].to_numpy(dtype=object),
                                   new_leads["lead_id"].to_numpy(dtype=object)]),
        "person_id": np.concatenate([person_survivor[person_codes_of_lead],
                                     owner_person[:n_new]]),
        "first_seen_at": pd.concat([old_lp["first_seen_at"].astype(TIMESTAMP_DTYPE),
                                    new_leads["created_at"].astype(TIMESTAMP_DTYPE)],
                                   ignore_index=True),
    })
    _, first_row = np.unique(hash_codes, return_index=True)
    identifier_person = pd.DataFrame({
        "id_hash": np.asarray(hash_values, dtype=object),
        "id_type": all_types.to_numpy(dtype=object)[first_row],
        "person_id": survivor_of_component[labels[n_owners:]],
    })
    return IdentityState(lead_person, identifier_person)


def resolve_identities(identities: pd.DataFrame, leads: pd.DataFrame, state_dir: Path,
                       truth: pd.DataFrame | None = None) -> IdentityResult:
    """Resolve ``leads`` (with their ``identities`` rows) into persons and save the state.

    ``leads`` needs ``lead_id, created_at``; ``identities`` needs ``lead_id, id_type,
    id_hash``. Unusable identifier rows (missing or malformed hash, type mismatch, unknown
    lead) are counted, not raised. With ``truth`` (``lead_id, true_person_id``) the result
    carries pairwise precision/recall over every resolved lead found in it.
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
        return _resolve_locked(identities, leads, state_dir, truth, started)


def _resolve_locked(identities: pd.DataFrame, leads: pd.DataFrame, state_dir: Path,
                    truth: pd.DataFrame | None, started: float) -> IdentityResult:
    state = load_identity_state(state_dir)
    result = IdentityResult(leads=len(leads))
    stored_ids = pd.Index(state.lead_person["lead_id"])
    known = stored_ids.get_indexer(leads["lead_id"]) >= 0
    result.known = int(known.sum())
    new_leads = leads.loc[~known, ["lead_id", "created_at"]].reset_index(drop=True)
    new_leads["created_at"] = new_leads["created_at"].astype(TIMESTAMP_DTYPE)

    all_lead_ids = pd.Index(np.concatenate([stored_ids.to_numpy(dtype=object),
                                            new_leads["lead_id"].to_numpy(dtype=object)]))
    lead_pos = all_lead_ids.get_indexer(identities["lead_id"])
    links, result.rejected_reasons = _usable_identities(identities, lead_pos)
    result.rejected = sum(result.rejected_reasons.values())

    new_state = _resolve(state, new_leads, links, result)
    write_parquet_atomically({
        state_dir / LEAD_PERSON_FILE: new_state.lead_person,
        state_dir / IDENTIFIER_PERSON_FILE: new_state.identifier_person,
    })
    result.state = new_state
    result.persons = int(new_state.lead_person["person_id"].nunique())
    result.resolved_leads = len(new_state.lead_person)
    if truth is not None:
        _require_columns(truth, ["lead_id", "true_person_id"], "truth")
        pred = new_state.lead_person.set_index("lead_id")["person_id"]
        result.precision, result.recall = pairwise_precision_recall(
            pred, truth.set_index("lead_id")["true_person_id"])
    result.seconds = time.perf_counter() - started
    return result
