"""Portrait, ownership, access log and audience routes (the FastAPI app the service mounts),
driven over HTTP with agent tokens; and the same workspace and audience SQL on PostgreSQL."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from commands.main import app as cli
from crm_data.access import Assignment, open_workspace
from features.audience import parse_tree, run_count
from features.portrait_store import PortraitStore, copy_store_to_postgres
from leadscore.config import Settings, postgres_url
from serving.agent_auth import mint_agent_token, token_secret
from serving.auth import ApiKeyMiddleware
from serving.portrait_api import AGENT_PATHS, create_app
from tests.portrait_data import NOW, build_workdir, person_ids
from tests.services import POSTGRES, require_service

API_KEY = "test-api-key-portrait"
TWO_RULES = {"type": "and", "rules": [
    {"type": "tag", "field": "subject", "op": "in", "value": ["math", "coding"]},
    {"type": "behaviour", "event_type": "any", "url_prefix": "/course", "within_days": 40}]}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = build_workdir(tmp_path_factory.mktemp("portrait_api"))
    return settings.with_(crm_origin="https://crm.example.com")


@pytest.fixture(scope="module")
def client(built: Settings) -> TestClient:
    app = create_app(built, API_KEY)
    with TestClient(app) as test_client:
        yield test_client
    app.state.portrait.close()


def _auth(agent: str, role: str = "agent", team: str | None = "east") -> dict[str, str]:
    token = mint_agent_token(token_secret(None, API_KEY), agent, role, team)
    return {"Authorization": f"Bearer {token}"}


ADMIN = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def owned(built: Settings, client: TestClient) -> dict[str, list[str]]:
    ids = person_ids(built)
    book = {"E1": ids[:10], "E2": ids[10:20], "W1": ids[20:25]}
    rows = [{"person_id": p, "agent_id": agent, "team": "west" if agent == "W1" else "east"}
            for agent, persons in book.items() for p in persons]
    answer = client.post("/assignments", json={"assignments": rows}, headers=ADMIN)
    assert answer.status_code == 200 and answer.json()["added"] == 25
    return book


def test_an_agent_sees_its_own_person_masked_and_the_read_is_logged(
        built: Settings, client: TestClient, owned: dict) -> None:
    person = owned["E1"][0]
    answer = client.get(f"/persons/{person}", headers=_auth("E1"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["viewer"] == {"agent_id": "E1", "role": "agent", "team": "east"}
    assert any(i["masked"] == "138****8000" for i in body["identifiers"])
    assert "+86" not in answer.text and "@example.com" not in answer.text.replace(
        "***@example.com", "")
    assert answer.headers["cache-control"] == "no-store"
    log = open_workspace(built).read_access(person_id=person)
    assert (log.iloc[0]["agent_id"], log.iloc[0]["action"], log.iloc[0]["outcome"]) == (
        "E1", "portrait_read", "granted")


def test_others_persons_are_refused_without_revealing_whether_they_exist(
        built: Settings, client: TestClient, owned: dict) -> None:
    other = client.get(f"/persons/{owned['E2'][0]}", headers=_auth("E1"))
    ghost = client.get("/persons/P-ffffffffffffffff", headers=_auth("E1"))
    unassigned = client.get(f"/persons/{person_ids(built)[-1]}", headers=_auth("E1"))
    assert other.status_code == ghost.status_code == unassigned.status_code == 403
    shape = [r.json()["error"].replace(p, "<id>") for r, p in (
        (other, owned["E2"][0]), (ghost, "P-ffffffffffffffff"),
        (unassigned, person_ids(built)[-1]))]
    assert len(set(shape)) == 1 and "not in your book" in shape[0]
    denied = open_workspace(built).read_access(agent_id="E1", action="portrait_denied")
    assert set(denied["person_id"]) >= {owned["E2"][0], "P-ffffffffffffffff"}


def test_a_manager_sees_the_team_and_an_admin_everyone(client: TestClient, owned: dict
                                                       ) -> None:
    east = _auth("M1", "manager", "east")
    assert client.get(f"/persons/{owned['E2'][3]}", headers=east).status_code == 200
    assert client.get(f"/persons/{owned['W1'][0]}", headers=east).status_code == 403
    admin = _auth("A1", "admin", None)
    assert client.get(f"/persons/{owned['W1'][0]}", headers=admin).status_code == 200
    assert client.get("/persons/P-ffffffffffffffff", headers=admin).status_code == 404


@pytest.mark.parametrize(("headers", "status", "words"), [
    ({}, 401, "missing credentials"),
    ({"Authorization": "Basic abc"}, 401, "Bearer"),
    ({"Authorization": "Bearer not.a.token"}, 401, "unreadable"),
    ({"Authorization": "Bearer " + mint_agent_token(
        token_secret("a different secret of at least 32 bytes", "x"), "E1", "agent", "east")},
     403, "not signed"),
])
def test_bad_credentials_are_refused_by_name(client: TestClient, owned: dict, headers: dict,
                                             status: int, words: str) -> None:
    answer = client.get(f"/persons/{owned['E1'][0]}", headers=headers)
    assert answer.status_code == status and words in answer.json()["error"]


def test_bad_portrait_requests_name_the_problem(client: TestClient, owned: dict) -> None:
    person = owned["E1"][0]
    bad_id = client.get("/persons/138%2000138000", headers=_auth("E1"))
    assert bad_id.status_code == 422 and bad_id.json()["detail"][0]["loc"] == [
        "path", "person_id"]
    past = client.get(f"/persons/{person}?page=999&page_size=50", headers=_auth("E1"))
    assert past.status_code == 422 and "past the end" in past.json()["detail"][0]["msg"]
    big = client.get(f"/persons/{person}?page_size=5000", headers=_auth("E1"))
    assert big.status_code == 422 and big.json()["detail"][0]["loc"] == ["query", "page_size"]
    assert "input" not in json.dumps(big.json())


def test_only_an_admin_posts_assignments(client: TestClient, owned: dict) -> None:
    rows = {"assignments": [{"person_id": owned["E1"][0], "agent_id": "E2", "team": "east"}]}
    assert client.post("/assignments", json=rows, headers=_auth("E1")).status_code == 403
    bad = client.post("/assignments", json={"assignments": [{"person_id": "P-1",
                                                              "agent_id": "E 1",
                                                              "team": "east"}]},
                      headers=ADMIN)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "agent_id"


def test_audience_count_save_and_scoped_members(built: Settings, client: TestClient,
                                                owned: dict) -> None:
    count = client.post("/audiences/count", json={"tree": TWO_RULES}, headers=_auth("E1"))
    assert count.status_code == 200, count.text
    body = count.json()
    store = PortraitStore(built.portrait_store_path)
    expected = run_count(store.cursor(), parse_tree({"tree": TWO_RULES}), NOW)
    store.close()
    assert body["total"] == expected.total and len(body["steps"]) == 2
    first = client.post("/audiences", json={"name": "math course", "tree": TWO_RULES},
                        headers=_auth("E1"))
    again = client.post("/audiences", json={"name": "math course", "tree": TWO_RULES},
                        headers=_auth("E1"))
    assert (first.json()["version"], again.json()["version"]) == (1, 2)
    audience_id = again.json()["audience_id"]
    everyone = client.get(f"/audiences/{audience_id}/members?page_size=1000", headers=ADMIN)
    mine = client.get(f"/audiences/{audience_id}/members?page_size=1000", headers=_auth("E1"))
    assert everyone.json()["total"] == expected.total
    assert set(mine.json()["person_ids"]) == set(everyone.json()["person_ids"]) & set(
        owned["E1"])
    past = client.get(f"/audiences/{audience_id}/members?page=50&page_size=10",
                      headers=ADMIN)
    assert past.status_code == 422 and past.json()["detail"][0]["loc"] == ["query", "page"]
    assert client.get("/audiences/9999/members", headers=ADMIN).status_code == 404
    log = open_workspace(built).read_access(action="audience_members")
    assert set(log["agent_id"]) >= {"E1", "crm-system"}


@pytest.mark.parametrize(("tree", "loc", "words"), [
    ({"type": "or", "rules": [{"type": "behaviour", "event_type": "web_visit",
                               "url_glob": "(a|b)*"}]}, ["tree", "rules", 0, "url_glob"],
     "regular expressions"),
    ({"type": "behaviour", "event_type": "web_visit", "within_days": 900},
     ["tree", "within_days"], "beyond the data"),
    ({"type": "tag", "field": "tier", "op": "regex", "value": "A"}, ["body", "tree", "tag", "op"],
     "Input should be"),
])
def test_bad_trees_are_a_422_naming_the_node(client: TestClient, tree: dict, loc: list,
                                             words: str) -> None:
    answer = client.post("/audiences/count", json={"tree": tree}, headers=_auth("E1"))
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert any(p["loc"] == loc and words in p["msg"] for p in detail), detail


def test_the_page_may_be_framed_by_the_crm_origin_only(client: TestClient) -> None:
    page = client.get("/ui")
    assert page.status_code == 200 and "audience-total" in page.text
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'self' https://crm.example.com" in policy
    assert "script-src 'self'" in policy and "x-frame-options" not in page.headers
    assert client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/secrets.txt").status_code == 404


def test_agent_paths_are_left_to_the_app_by_the_api_key_check() -> None:
    seen: list[str] = []

    async def inner(scope, receive, send) -> None:  # noqa: ANN001
        seen.append(scope["path"])

    import asyncio

    middleware = ApiKeyMiddleware(inner, api_key="k", delegated=AGENT_PATHS)
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    for path in ("/persons/P-1", "/ui", "/audiences/count", "/predict", "/personsX"):
        asyncio.run(middleware({"type": "http", "path": path, "headers": []}, None, send))
    assert seen == ["/persons/P-1", "/ui", "/audiences/count"]
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [401, 401]


def test_cli_exports_an_audience_and_queries_the_access_log(built: Settings, tmp_path: Path,
                                                            owned: dict) -> None:
    tree_file = tmp_path / "tree.json"
    tree_file.write_text(json.dumps({"tree": TWO_RULES}))
    runner = CliRunner()
    out = tmp_path / "audience.parquet"
    result = runner.invoke(cli, ["audience", "export", "--tree", str(tree_file), "--out",
                                 str(out), "--operator", "ops-1", "--workdir",
                                 str(built.workdir)])
    assert result.exit_code == 0, result.output
    import pandas as pd

    frame = pd.read_parquet(out)
    assert "person_id" in frame.columns and not {"phone", "email", "masked"} & set(frame)
    log = runner.invoke(cli, ["access-log", "--action", "audience_export", "--json",
                              "--workdir", str(built.workdir)])
    assert log.exit_code == 0 and '"agent_id": "ops-1"' in log.output
    bad = runner.invoke(cli, ["audience", "export", "--tree", str(tree_file), "--out",
                              str(tmp_path / "a.xlsx"), "--workdir", str(built.workdir)])
    assert bad.exit_code == 2 and ".csv or a .parquet" in bad.output
    wrong = runner.invoke(cli, ["access-log", "--action", "peek", "--workdir",
                                str(built.workdir)])
    assert wrong.exit_code == 2


@pytest.mark.services
def test_the_workspace_and_audience_sql_run_on_postgresql(built: Settings) -> None:
    require_service(*POSTGRES)
    prefix = f"t_portrait_{uuid.uuid4().hex[:8]}"
    settings = built.with_(profile="production", database_prefix=prefix)
    workspace = open_workspace(settings)
    try:
        workspace.assign([Assignment("P-1", "E1", "east")], "test")
        assert workspace.owner("P-1") == ("E1", "east")
        audience_id, version = workspace.save_audience("pg", TWO_RULES, "E1")
        assert workspace.audience(audience_id)["tree"] == TWO_RULES and version == 1
    finally:
        workspace.close()
    dsn = postgres_url(settings, prefix, driver=None)
    counts = copy_store_to_postgres(built.portrait_store_path, dsn, schema="audience")
    assert counts["persons"] == len(person_ids(built))
    store = PortraitStore(built.portrait_store_path)
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute("SET search_path TO audience")
            for tree in (TWO_RULES, {"type": "or", "rules": [
                    {"type": "behaviour", "event_type": "email_open", "url_glob": "/c*",
                     "min_count": 2, "within_days": 30},
                    {"type": "not", "rule": {"type": "tag", "field": "probability",
                                             "op": "gte", "value": 0.3}}]}):
                parsed = parse_tree({"tree": tree})
                on_pg = run_count(conn, parsed, NOW, dialect="postgres")
                on_duck = run_count(store.cursor(), parsed, NOW)
                assert (on_pg.total, on_pg.steps) == (on_duck.total, on_duck.steps)
        app = create_app(settings, API_KEY)  # the production profile counts in PostgreSQL
        with TestClient(app) as client:
            answer = client.post("/audiences/count", json={"tree": TWO_RULES}, headers=ADMIN)
            expected = run_count(store.cursor(), parse_tree({"tree": TWO_RULES}), NOW)
            assert answer.status_code == 200 and answer.json()["total"] == expected.total
            saved = client.post("/audiences", json={"name": "pg", "tree": TWO_RULES},
                                headers=ADMIN).json()
            workspace = open_workspace(settings)
            workspace.assign([Assignment(p, "E9", "north") for p in person_ids(built)[:15]],
                             "test")
            workspace.close()
            mine = client.get(f"/audiences/{saved['audience_id']}/members?page_size=1000",
                              headers=_auth("E9", team="north"))
            everyone = client.get(f"/audiences/{saved['audience_id']}/members?page_size=1000",
                                  headers=ADMIN)
            assert set(mine.json()["person_ids"]) == set(everyone.json()["person_ids"]) & set(
                person_ids(built)[:15])
            assert everyone.json()["total"] == expected.total
        app.state.portrait.close()
    finally:
        store.close()
        with psycopg.connect(postgres_url(settings, "postgres", driver=None),
                             autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{prefix}" WITH (FORCE)')
