"""Audience trees: validation names the bad node; limits; glob/prefix → LIKE; data windows.
Masked identifier forms; agent tokens."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from features.audience import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    AudienceError,
    DataBounds,
    check_bounds,
    compile_count,
    glob_to_like,
    parse_tree,
    prefix_to_like,
)
from leadscore.identifiers import hash_and_mask, mask_value
from serving.agent_auth import (
    AgentAuthError,
    authenticate,
    mint_agent_token,
    token_secret,
    verify_agent_token,
)

TAG = {"type": "tag", "field": "tier", "op": "in", "value": ["A", "B"]}
VISIT = {"type": "behaviour", "event_type": "web_visit", "url_prefix": "/pricing",
         "within_days": 7}


def _problems(body: dict) -> list[dict]:
    with pytest.raises(AudienceError) as caught:
        parse_tree(body)
    return caught.value.problems


def test_a_valid_tree_parses_and_compiles_with_bound_values_only() -> None:
    parsed = parse_tree({"tree": {"type": "or", "rules": [TAG, VISIT, {
        "type": "not", "rule": {"type": "tag", "field": "probability", "op": "gte",
                                "value": 0.4}}]}})
    compiled = compile_count(parsed, datetime(2026, 11, 30, tzinfo=UTC))
    assert "/pricing" not in compiled.sql and "'A'" not in compiled.sql
    assert "/pricing%" in compiled.params and 0.4 in compiled.params
    assert compiled.sql.count("?") == len(compiled.params)
    pg = compile_count(parsed, datetime(2026, 11, 30, tzinfo=UTC), dialect="postgres")
    assert "?" not in pg.sql and pg.sql.count("%s") == len(pg.params)


@pytest.mark.parametrize(("node", "loc", "words"), [
    ({"type": "tag", "field": "shoe_size", "op": "eq", "value": 1},
     ["tree", "rules", 1, "field"], "Input should be"),
    ({"type": "tag", "field": "tier", "op": "matches", "value": "A"},
     ["tree", "rules", 1, "op"], "Input should be"),
    ({"type": "tag", "field": "tier", "op": "gt", "value": "A"},
     ["tree", "rules", 1, "op"], "does not apply"),
    ({"type": "tag", "field": "tier", "op": "eq", "value": "Z"},
     ["tree", "rules", 1, "value"], "not a value of 'tier'"),
    ({"type": "tag", "field": "tier", "op": "in", "value": "A"},
     ["tree", "rules", 1, "value"], "takes a list"),
    ({"type": "tag", "field": "probability", "op": "gt", "value": "high"},
     ["tree", "rules", 1, "value"], "compared with a number"),
    ({"type": "behaviour", "event_type": "web_visit", "url_glob": "^/course/(a+)+$"},
     ["tree", "rules", 1, "url_glob"], "regular expressions are not supported"),
    ({"type": "behaviour", "event_type": "web_visit", "url_prefix": "/course/*"},
     ["tree", "rules", 1, "url_prefix"], "no wildcards"),
    ({"type": "behaviour", "event_type": "web_visit", "url_prefix": "/a", "url_glob": "/b*"},
     ["tree", "rules", 1, "url_glob"], "not both"),
    ({"type": "behaviour", "event_type": "teleport"},
     ["tree", "rules", 1, "event_type"], "Input should be"),
    ({"type": "behaviour", "event_type": "web_visit", "within_days": 0},
     ["tree", "rules", 1, "within_days"], "greater than or equal"),
    ({"type": "behaviour", "event_type": "web_visit", "colour": "red"},
     ["tree", "rules", 1, "colour"], "Extra inputs"),
    ({"type": "xor", "rules": []}, ["tree", "rules", 1], "tag"),
])
def test_a_bad_node_is_named(node: dict, loc: list, words: str) -> None:
    problems = _problems({"tree": {"type": "and", "rules": [TAG, node]}})
    assert any(p["loc"] == loc and words in p["msg"] for p in problems), problems


def test_deep_and_large_trees_are_refused_by_limit() -> None:
    node: dict = TAG
    for _ in range(MAX_DEPTH + 1):
        node = {"type": "not", "rule": node}
    assert any(p["type"] == "tree_too_deep" for p in _problems({"tree": node}))
    wide = {"type": "or", "rules": [TAG] * (MAX_CONDITIONS + 1)}
    problems = _problems({"tree": wide})
    assert any(p["type"] == "tree_too_large" and p["loc"] == ["tree"] for p in problems)


def test_globs_and_prefixes_become_like_patterns_with_literal_wildcards() -> None:
    assert glob_to_like("/course/*/math?") == "/course/%/math_"
    assert glob_to_like("/50%_off*") == "/50\\%\\_off%"
    assert prefix_to_like("/a_b") == "/a\\_b%"


def test_windows_beyond_the_data_are_named() -> None:
    bounds = DataBounds(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC))
    as_of = datetime(2026, 11, 30, tzinfo=UTC)
    ok = parse_tree({"tree": VISIT})
    assert check_bounds(ok, bounds, as_of) == as_of
    long = parse_tree({"tree": {**VISIT, "within_days": 365}})
    with pytest.raises(AudienceError) as caught:
        check_bounds(long, bounds, as_of)
    assert caught.value.problems[0]["loc"] == ["tree", "within_days"]
    assert "before the first event" in caught.value.problems[0]["msg"]
    later = parse_tree({"tree": VISIT, "as_of": "2026-12-20T00:00:00Z"})
    with pytest.raises(AudienceError, match="after the last event"):
        check_bounds(later, bounds, now=datetime(2026, 12, 21, tzinfo=UTC))
    future = parse_tree({"tree": TAG, "as_of": "2030-01-01T00:00:00Z"})
    with pytest.raises(AudienceError, match="future"):
        check_bounds(future, bounds)
    old = parse_tree({"tree": {**VISIT, "within_days": None, "last_before": "2020-01-01T00:00Z"}})
    with pytest.raises(AudienceError, match="beyond the data"):
        check_bounds(old, bounds, as_of)


def test_masked_forms_show_enough_to_recognise_and_never_the_whole_value() -> None:
    assert mask_value("phone", "13800138000") == "138****8000"
    assert mask_value("email", "alice@example.com") == "a***@example.com"
    assert mask_value("wechat", "wx_abc123") == "w***3"
    digest, masked, reason = hash_and_mask("phone", "+86 138 0013 8000", "salt")
    assert reason is None and masked == "138****8000" and digest.startswith("phone:")
    assert hash_and_mask("phone", "12", "salt") == (None, None, "not_a_mobile_number")


SECRET = token_secret(None, "service-key")


def test_agent_tokens_are_verified_claim_by_claim() -> None:
    token = mint_agent_token(SECRET, "E1024", "agent", "east-1", ttl_seconds=600)
    agent = verify_agent_token(token, SECRET, max_hours=12)
    assert (agent.agent_id, agent.role, agent.team) == ("E1024", "agent", "east-1")
    with pytest.raises(AgentAuthError) as caught:
        verify_agent_token(token, token_secret("another secret of at least 32 bytes!", "k"), 12)
    assert caught.value.status == 403
    expired = mint_agent_token(SECRET, "E1", "agent", None, 60, now=time.time() - 3600)
    with pytest.raises(AgentAuthError, match="expired"):
        verify_agent_token(expired, SECRET, 12)
    long = mint_agent_token(SECRET, "E1", "agent", None, ttl_seconds=48 * 3600)
    with pytest.raises(AgentAuthError, match="longer than 12 hours"):
        verify_agent_token(long, SECRET, 12)
    forged = jwt.encode({"sub": "E1", "role": "root", "iat": int(time.time()),
                         "exp": int(time.time()) + 60, "aud": "leadscore"}, SECRET, "HS256")
    with pytest.raises(AgentAuthError, match="'role'"):
        verify_agent_token(forged, SECRET, 12)
    no_exp = jwt.encode({"sub": "E1", "role": "agent", "iat": int(time.time()),
                         "aud": "leadscore"}, SECRET, "HS256")
    with pytest.raises(AgentAuthError, match="'exp'"):
        verify_agent_token(no_exp, SECRET, 12)
    manager = mint_agent_token(SECRET, "M1", "manager", None)
    with pytest.raises(AgentAuthError, match="'team'"):
        verify_agent_token(manager, SECRET, 12)
    assert authenticate("Bearer service-key", "service-key", SECRET, 12).role == "admin"
    with pytest.raises(AgentAuthError) as missing:
        authenticate(None, "service-key", SECRET, 12)
    assert missing.value.status == 401
    assert datetime.now(UTC) - timedelta(seconds=1) < datetime.now(UTC)
