"""Portraits, ownership, audiences and the ``/ui`` page: a FastAPI app mounted into the BentoML
service (``serving.service``: ``@bentoml.asgi_app(portrait_app, path="/")``).

Routes (docs/api.md, "Portraits and audiences"); every one but the static page needs an agent
token or the API key (``serving.agent_auth``; ``serving.auth.ApiKeyMiddleware`` leaves these
paths, ``AGENT_PATHS``, to this app):

* ``GET /persons/{person_id}`` — the portrait (``features.portrait_store``): masked
  identifiers, tags, leads with their scores over time, one timeline page (newest first). An
  agent sees its own persons, a manager its team's, an admin all; any other person → 403 with
  the same words whether the person exists or not. Every read, granted or refused, is logged.
* ``POST /assignments`` (admin) — ownership rows from the CRM (``crm_data.access``).
* ``POST /audiences/count`` — total and the count after each top-level rule
  (``features.audience``); ``POST /audiences`` saves a named, versioned tree;
  ``GET /audiences``, ``GET /audiences/{id}``; ``GET /audiences/{id}/members`` pages the person
  ids (scoped like portraits; logged).
* ``GET /ui`` — the page (builder with live count, portrait with masking and the viewer's
  watermark), framable by ``settings.crm_origin`` only (Content-Security-Policy).

Errors are ``{"error": …}`` JSON (422: ``{"error", "detail": [{loc, msg, type}]}``, never the
values sent); no stack trace leaves the app.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from fastapi import FastAPI, Query, Request
from fastapi import Path as FastApiPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from crm_data.access import (
    MAX_ASSIGNMENTS,
    PERSON_ID,
    AccessEvent,
    Assignment,
    Workspace,
    WorkspaceError,
    open_workspace,
)
from features.audience import (
    MAX_PAGE_SIZE,
    AudienceError,
    AudienceTree,
    Node,
    check_bounds,
    parse_tree,
    run_count,
    run_members,
)
from features.portrait_store import PortraitStore, PortraitStoreError, store_mtime
from leadscore.config import Settings, get_settings, production_service_url
from serving.agent_auth import Agent, AgentAuthError, authenticate, token_secret
from serving.auth import resolve_api_key

logger = logging.getLogger("leadscore.portrait")
AGENT_PATHS: tuple[str, ...] = ("/persons", "/assignments", "/audiences", "/ui")
# metric labels of these routes (``serving.http_metrics``: a prefix ending in "/" takes one more
# path segment); /audiences/{id}/members stays "other"
ROUTE_LABELS: dict[str, str] = {"/persons/": "/persons/{person_id}", "/assignments": "/assignments",
                                "/audiences/count": "/audiences/count", "/audiences": "/audiences",
                                "/audiences/": "/audiences/{audience_id}", "/ui": "/ui"}
UI_DIR = Path(__file__).parent / "ui"
UI_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
MAX_TIMELINE_PAGE = 200
DENIED = "person {} is not in your book of customers"


class AssignmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    person_id: str = Field(pattern=PERSON_ID.pattern, max_length=128)
    agent_id: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    team: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    assigned_at: datetime | None = None


class AssignmentsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assignments: list[AssignmentIn] = Field(min_length=1, max_length=10_000)


class AudienceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=80)
    tree: Node


AudienceId = Annotated[int, FastApiPath(ge=1, le=2**53)]


class ApiError(Exception):
    def __init__(self, status: int, message: str, detail: list | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


class PortraitState:
    """What the routes share: settings, credentials, the workspace and the (reloaded) store."""

    def __init__(self, settings: Settings | None = None, api_key: str | None = None) -> None:
        self._settings = settings
        self._api_key = api_key
        self._lock = threading.Lock()
        self._workspace: Workspace | None = None
        self._store: PortraitStore | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = get_settings()
        return self._settings

    @property
    def api_key(self) -> str:
        if self._api_key is None:
            self._api_key, _ = resolve_api_key(self.settings, create=False)
        return self._api_key

    def agent(self, request: Request) -> Agent:
        s = self.settings
        try:
            return authenticate(request.headers.get("authorization"), self.api_key,
                                token_secret(s.agent_token_secret, self.api_key),
                                s.agent_token_max_hours)
        except AgentAuthError as exc:
            raise ApiError(exc.status, exc.message) from None

    @property
    def workspace(self) -> Workspace:
        with self._lock:
            if self._workspace is None:
                self._workspace = open_workspace(self.settings)
            return self._workspace

    @property
    def store(self) -> PortraitStore:
        path = self.settings.portrait_store_path
        with self._lock:
            try:
                mtime = store_mtime(path)
            except FileNotFoundError:
                raise ApiError(503, "no person store yet: run `leadscore portrait build`") \
                    from None
            if self._store is None or self._store.mtime != mtime:
                try:
                    self._store = PortraitStore(path)
                except PortraitStoreError as exc:
                    raise ApiError(503, str(exc)) from None
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._workspace is not None:
                self._workspace.close()
                self._workspace = None
            self._store = None


@contextlib.contextmanager
def _postgres(settings: Settings) -> Iterator[Any]:
    """A connection to the production database with the ``audience`` schema first (the tables
    ``leadscore portrait build`` copies there)."""
    import psycopg

    try:
        conn = psycopg.connect(production_service_url(settings, "prediction_log"),
                               connect_timeout=5)
    except psycopg.OperationalError:
        raise ApiError(503, "the audience database is unreachable; retry later") from None
    try:
        conn.execute("SET search_path TO audience, public")
        yield conn
    finally:
        conn.close()


def _may_see(agent: Agent, owner: tuple[str, str] | None) -> bool:
    if agent.role == "admin":
        return True
    if owner is None:
        return False
    if agent.role == "manager":
        return owner[1] == agent.team
    return owner[0] == agent.agent_id


def _scope(workspace: Workspace, agent: Agent) -> pd.DataFrame | None:
    """The person ids an agent may see (None: all)."""
    if agent.role == "admin":
        return None
    owners = workspace.owners()
    mask = (owners["team"] == agent.team) if agent.role == "manager" else \
        (owners["agent_id"] == agent.agent_id)
    return owners.loc[mask, ["person_id"]].reset_index(drop=True)


def _log(state: PortraitState, agent: Agent, action: str, outcome: str, **fields: Any) -> None:
    state.workspace.log_access(AccessEvent(agent.agent_id, agent.role, agent.team, action,
                                           outcome, **fields))


def _frame_headers(settings: Settings) -> dict[str, str]:
    ancestors = "'self'" + (f" {settings.crm_origin}" if settings.crm_origin else "")
    return {
        "Content-Security-Policy": (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self'; object-src 'none'; base-uri 'none'; "
            f"frame-ancestors {ancestors}"),
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }


NO_STORE = {"Cache-Control": "no-store"}


def create_app(settings: Settings | None = None, api_key: str | None = None) -> FastAPI:
    """The app; without arguments it reads the process settings and key on first request."""
    state = PortraitState(settings, api_key)
    app = FastAPI(title="leadscore portraits and audiences", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.portrait = state

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        body: dict[str, Any] = {"error": exc.message}
        if exc.detail is not None:
            body["detail"] = exc.detail
        return JSONResponse(body, status_code=exc.status, headers=NO_STORE)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "bad request"
        if exc.status_code == 400:
            message = "the body is not readable JSON (UTF-8 text expected)"
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=NO_STORE)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""),
                     "type": e.get("type", "")} for e in exc.errors()]
        logger.warning("422 on %s %s: %s", request.method, request.scope.get("route").path
                       if request.scope.get("route") else "?",
                       ", ".join(".".join(map(str, p["loc"][:4])) for p in problems[:5]))
        n = len(problems)
        return JSONResponse({"error": f"{n} validation error{'s' if n != 1 else ''}",
                             "detail": problems}, status_code=422, headers=NO_STORE)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected %s on %s %s", type(exc).__name__, request.method,
                     request.scope.get("route").path if request.scope.get("route") else "?")
        return JSONResponse({"error": "An unexpected error has occurred, please check the "
                                      "server log."}, status_code=500)

    # ---- portraits ------------------------------------------------------------------------
    @app.get("/persons/{person_id}", tags=["portraits"],
             summary="A person's portrait (owner-scoped, masked, logged)")
    def portrait(request: Request, person_id: str,
                 page: int = Query(1, ge=1, le=100_000),
                 page_size: int = Query(50, ge=1, le=MAX_TIMELINE_PAGE)) -> JSONResponse:
        agent = state.agent(request)
        if not PERSON_ID.fullmatch(person_id):
            raise ApiError(422, "1 validation error", [{
                "loc": ["path", "person_id"], "type": "string_pattern_mismatch",
                "msg": "a person id is 1-128 letters, digits or '_.:-' (e.g. P-0123456789abcdef)"}])
        ws = state.workspace
        if not _may_see(agent, ws.owner(person_id)):
            _log(state, agent, "portrait_denied", "denied", person_id=person_id)
            raise ApiError(403, DENIED.format(person_id))
        try:
            body = state.store.portrait(person_id, page, page_size)
        except ValueError as exc:
            raise ApiError(422, "1 validation error", [{"loc": ["query", "page"],
                                                        "msg": str(exc),
                                                        "type": "page_past_end"}]) from None
        if body is None:
            _log(state, agent, "portrait_read", "not_found", person_id=person_id)
            raise ApiError(404, f"person {person_id} is not in the person store (built "
                                f"{state.store.built_at:%Y-%m-%d %H:%M} UTC)")
        _log(state, agent, "portrait_read", "granted", person_id=person_id,
             detail=f"timeline page {page}")
        body["viewer"] = {"agent_id": agent.agent_id, "role": agent.role, "team": agent.team}
        return JSONResponse(body, headers=NO_STORE)

    # ---- ownership ------------------------------------------------------------------------
    @app.post("/assignments", tags=["portraits"], summary="Ownership rows from the CRM (admin)")
    def assignments(request: Request, body: AssignmentsIn) -> JSONResponse:
        agent = state.agent(request)
        if not agent.is_admin:
            raise ApiError(403, "only an admin (or the CRM with the API key) posts assignments")
        rows = [Assignment(a.person_id, a.agent_id, a.team, a.assigned_at)
                for a in body.assignments]
        try:
            added = state.workspace.assign(rows, assigned_by=agent.agent_id)
        except WorkspaceError as exc:
            raise ApiError(422, str(exc)) from None
        _log(state, agent, "assignments_added", "ok", detail=f"{added} rows")
        return JSONResponse({"added": added, "max_per_call": min(MAX_ASSIGNMENTS, 10_000)})

    # ---- audiences ------------------------------------------------------------------------
    def _parsed(payload: dict, store: PortraitStore, root: str = "tree"
                ) -> tuple[AudienceTree, datetime]:
        try:
            parsed = parse_tree(payload, root)
            return parsed, check_bounds(parsed, store.bounds, store.built_at, root=root)
        except AudienceError as exc:
            n = len(exc.problems)
            raise ApiError(422, f"{n} problem{'s' if n != 1 else ''} in the audience tree",
                           exc.problems) from None

    @app.post("/audiences/count", tags=["audiences"],
              summary="Audience size: total and the count after each top-level rule")
    def audience_count(request: Request, body: AudienceTree) -> JSONResponse:
        state.agent(request)
        store = state.store
        parsed, as_of = _parsed(body.model_dump(mode="json", exclude_none=True), store)
        return JSONResponse(_count(parsed, as_of).to_dict(), headers=NO_STORE)

    def _count(parsed: AudienceTree, as_of: datetime) -> Any:
        """Counted in DuckDB (embedded) or in PostgreSQL's ``audience`` schema (production)."""
        if state.settings.profile != "production":
            return run_count(state.store.cursor(), parsed, as_of)
        with _postgres(state.settings) as conn:
            return run_count(conn, parsed, as_of, dialect="postgres")

    @app.post("/audiences", tags=["audiences"], summary="Save a named audience (new version)")
    def audience_save(request: Request, body: AudienceIn) -> JSONResponse:
        agent = state.agent(request)
        store = state.store
        tree = body.model_dump(mode="json", exclude_none=True)["tree"]
        parsed, as_of = _parsed({"tree": tree}, store)
        try:
            audience_id, version = state.workspace.save_audience(body.name, tree,
                                                                 agent.agent_id)
        except WorkspaceError as exc:
            raise ApiError(422, str(exc)) from None
        _log(state, agent, "audience_saved", "ok", audience_id=audience_id,
             detail=f"{body.name} v{version}")
        count = _count(parsed, as_of)
        return JSONResponse({"audience_id": audience_id, "name": body.name, "version": version,
                             "total": count.total, "as_of": as_of.isoformat()})

    @app.get("/audiences", tags=["audiences"], summary="Saved audiences")
    def audience_list(request: Request) -> JSONResponse:
        state.agent(request)
        return JSONResponse({"audiences": state.workspace.audiences()}, headers=NO_STORE)

    def _saved(audience_id: int) -> dict:
        saved = state.workspace.audience(audience_id)
        if saved is None:
            raise ApiError(404, f"no audience with id {audience_id}")
        return saved

    @app.get("/audiences/{audience_id}", tags=["audiences"], summary="A saved audience")
    def audience_get(request: Request, audience_id: AudienceId) -> JSONResponse:
        state.agent(request)
        return JSONResponse(_saved(audience_id), headers=NO_STORE)

    @app.get("/audiences/{audience_id}/members", tags=["audiences"],
             summary="Person ids of a saved audience, a page at a time (scoped, logged)")
    def audience_members(request: Request, audience_id: AudienceId,
                         page: int = Query(1, ge=1, le=1_000_000),
                         page_size: int = Query(100, ge=1, le=MAX_PAGE_SIZE)) -> JSONResponse:
        agent = state.agent(request)
        saved = _saved(audience_id)
        store = state.store
        parsed, as_of = _parsed({"tree": saved["tree"]}, store)
        scope = _scope(state.workspace, agent)
        window = {"limit": page_size, "offset": (page - 1) * page_size}
        if state.settings.profile == "production":
            with _postgres(state.settings) as conn:
                name = None
                if scope is not None:
                    name = "member_scope"
                    conn.execute("CREATE TEMP TABLE member_scope (person_id TEXT)")
                    with conn.cursor().copy("COPY member_scope FROM STDIN") as sink:
                        for person in scope["person_id"]:
                            sink.write_row((person,))
                ids, total = run_members(conn, parsed, as_of, "postgres", scope=name, **window)
        else:
            cur = store.cursor()
            name = None
            if scope is not None:
                name = f"scope_{threading.get_ident()}"
                cur.register(name, scope)
            try:
                ids, total = run_members(cur, parsed, as_of, scope=name, **window)
            finally:
                if name is not None:
                    cur.unregister(name)
        pages = max(1, -(-total // page_size))
        if page > pages:
            raise ApiError(422, "1 validation error", [{
                "loc": ["query", "page"], "type": "page_past_end",
                "msg": f"page {page} is past the end: {total} member(s), {pages} page(s) of "
                       f"{page_size}"}])
        _log(state, agent, "audience_members", "ok", audience_id=audience_id,
             detail=f"page {page}, {len(ids)} ids")
        return JSONResponse({"audience_id": audience_id, "name": saved["name"],
                             "version": saved["version"], "as_of": as_of.isoformat(),
                             "total": total, "page": page, "pages": pages,
                             "page_size": page_size, "person_ids": ids}, headers=NO_STORE)

    # ---- the page -------------------------------------------------------------------------
    @app.get("/ui", include_in_schema=False)
    def ui_page() -> FileResponse:
        return FileResponse(UI_DIR / "index.html", media_type="text/html",
                            headers=_frame_headers(state.settings))

    @app.get("/ui/{name}", include_in_schema=False)
    def ui_asset(name: str) -> FileResponse:
        if name not in UI_FILES:
            raise ApiError(404, "no such file")
        return FileResponse(UI_DIR / name, media_type=UI_FILES[name],
                            headers=_frame_headers(state.settings))

    return app


# the app the service mounts (settings and key read on first request)
portrait_app = create_app()


ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
INVALID_REF = {"application/json": {"schema": {
    "$ref": "#/components/schemas/ValidationErrorBody"}}}
ERRORS: dict[str, str] = {
    "400": "Malformed request: a body that is not readable JSON text, a bad header.",
    "401": "No, an unreadable or an expired agent token.",
    "403": "Token not signed with this service's secret, or the person / action is not the "
           "caller's (the same words whether the person exists or not).",
    "404": "No such person in the store, or no such audience (text/plain \"Not Found\" for a "
           "path the router cannot take, e.g. with a line break).",
    "413": "Request body over 2 MiB.",
    "415": "Body not sent as JSON (Content-Type: application/json).",
    "422": "Invalid input: each problem's `loc` names the field or tree node.",
    "431": "Request headers over 16 KiB.",
    "503": "The person store is not built yet (`leadscore portrait build`).",
}


TREE = {"type": "object", "description": "A condition tree: nodes of type and/or (rules), not "
        "(rule), tag (field, op, value) and behaviour (event_type, url_prefix | url_glob, "
        "min_count, within_days, last_before, last_after); see docs/portraits.md. A bad node "
        "is a 422 naming it."}
TREE_BODIES: dict[str, dict[str, Any]] = {
    "/audiences/count": {"type": "object", "title": "AudienceTree", "required": ["tree"],
                         "additionalProperties": False,
                         "properties": {"tree": TREE, "as_of": {"type": "string",
                                                                "format": "date-time"}}},
    "/audiences": {"type": "object", "title": "AudienceIn", "required": ["name", "tree"],
                   "additionalProperties": False,
                   "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 80},
                                  "tree": TREE}},
}


def portrait_openapi() -> dict[str, dict[str, Any]]:
    """This app's operations (``paths``) and the schemas they use (``schemas``), for
    ``serving.openapi.service_openapi``: each operation answers 200 and ``ERRORS``."""
    spec = portrait_app.openapi()
    for path in ("/audiences/count", "/audiences"):  # the tree: JSON checked by the server
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        body["schema"] = TREE_BODIES[path]
    paths: dict[str, Any] = {}
    for path, operations in spec.get("paths", {}).items():
        paths[path] = {}
        for method, operation in operations.items():
            responses = {"200": operation.get("responses", {}).get(
                "200", {"description": "Successful Response"})}
            for status, text in ERRORS.items():
                if method == "get" and status in ("413", "415"):
                    continue
                content = INVALID_REF if status == "422" else ERROR_REF
                if status == "404":  # a path with a line break is not routed: the server's
                    content = {**ERROR_REF, "text/plain": {"schema": {"type": "string"}}}
                responses[status] = {"description": text, "content": content}
            paths[path][method] = {**operation, "responses": responses}
    schemas = {name: schema for name, schema in
               spec.get("components", {}).get("schemas", {}).items()
               if name in ("AssignmentIn", "AssignmentsIn")}
    return {"paths": paths, "schemas": schemas}
