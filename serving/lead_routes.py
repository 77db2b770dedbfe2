"""``GET /leads/{lead_id}`` and ``GET /nurture``: a lead's moving answer and the nurturing pool.

A small Starlette app mounted on the BentoML service (``@bentoml.asgi_app(LEADS_APP)`` in
``serving.service``; BentoML mounts it passively: only these two paths reach it), so the
service's middlewares wrap it like the API routes: the request metrics (``/leads/{lead_id}``
and ``/nurture`` are labelled by route), the header cap, the API key and the OpenAPI document
(``OPENAPI_PATHS``, merged into ``/docs.json``).

* ``GET /leads/{lead_id}[?history=N]`` → the lead's current answer (probability, tier,
  channel, model version, when scored), what the CRM was last told, status (``open``,
  ``converted``, ``closed``, ``dropped``), funnel step, ``trend`` (``improving`` / ``steady``
  / ``declining``: the probability now against a week earlier, beyond the hysteresis margin),
  ``rise_7d`` and its score history (the latest N, default 50, at most 500). 404 when the
  service never scored the lead.
* ``GET /nurture?tier=A|B|C|D&rising=true|false&limit=N&offset=M`` → open leads, of the tier
  when given; ``rising=true``: only those whose probability rose over the last week, the
  largest rise first (else the highest probability first). 422 names a bad parameter.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from crm_data.lead_state import LeadRow, from_us
from leadscore.schemas import TIERS

DEFAULT_HISTORY = 50
MAX_HISTORY = 500
MAX_LIMIT = 1_000
# the routes, as the request metrics label them
ROUTE_LABELS: dict[str, str] = {"/leads/": "/leads/{lead_id}", "/nurture": "/nurture"}
# the running service's re-scorer (set when the service starts; None: not available)
STATE: dict[str, Any] = {"rescorer": None}


def bind(rescorer: Any) -> None:
    """Serve the lead state of ``rescorer`` (None: answer 503)."""
    STATE["rescorer"] = rescorer


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), status_code=status,
                    media_type="application/json")


def _problem(field: str, message: str) -> Response:
    return _json({"error": f"1 validation error for {field}",
                  "detail": [{"type": "value_error", "loc": ["query", field], "msg": message}]},
                 422)


def _unavailable() -> Response:
    return _json({"error": "the lead state is not available (see the service log)"}, 503)


def _answer(lead: LeadRow) -> dict[str, Any]:
    return {"probability": round(lead.probability, 6), "tier": lead.tier,
            "channel": lead.channel, "control": lead.control,
            "model_version": lead.model_version, "scored_at": from_us(lead.scored_us).isoformat()}


def lead_summary(lead: LeadRow) -> dict[str, Any]:
    """A lead as ``/nurture`` lists it (no raw identifier: ids, scores, names)."""
    return {"lead_id": lead.lead_id, "person_id": lead.person_id, "status": lead.status,
            "submitted_at": from_us(lead.submitted_us).isoformat(),
            "funnel_step": lead.funnel_step, "answer": _answer(lead),
            "rise_7d": round(lead.rise, 6), "first_probability": round(lead.first_probability, 6)}


async def get_lead(request: Request) -> Response:
    rescorer = STATE["rescorer"]
    if rescorer is None:
        return _unavailable()
    lead_id = request.path_params["lead_id"]
    raw = request.query_params.get("history", str(DEFAULT_HISTORY))
    if not raw.isdigit() or not 0 <= int(raw) <= MAX_HISTORY:
        return _problem("history", f"must be a whole number from 0 to {MAX_HISTORY}")
    from serving.rescoring import trend

    store = rescorer.store
    lead = store.leads([lead_id]).get(lead_id)
    if lead is None:
        return _json({"error": "no lead with this lead_id has been scored"}, 404)
    full = store.history(lead_id, limit=MAX_HISTORY)
    shown = full[len(full) - int(raw):] if int(raw) else []
    return _json({
        **lead_summary(lead),
        "pushed": {"tier": lead.pushed_tier, "channel": lead.pushed_channel,
                   "notifications": lead.changes},
        "trend": trend(full, rescorer.margin),
        "history": [{"at": from_us(h.at_us).isoformat(), "probability": round(h.probability, 6),
                     "tier": h.tier, "channel": h.channel, "model_version": h.model_version,
                     "cause": h.cause, "funnel_step": h.funnel_step} for h in shown],
    })


async def get_nurture(request: Request) -> Response:
    rescorer = STATE["rescorer"]
    if rescorer is None:
        return _unavailable()
    params = request.query_params
    unknown = sorted(set(params) - {"tier", "rising", "limit", "offset"})
    if unknown:
        return _problem(unknown[0], "unknown parameter; known: tier, rising, limit, offset")
    tier = params.get("tier")
    if tier is not None and tier not in TIERS:
        return _problem("tier", f"must be one of {', '.join(TIERS)}")
    rising_text = params.get("rising", "false").lower()
    if rising_text not in {"true", "false", "1", "0"}:
        return _problem("rising", "must be true or false")
    limit, offset = params.get("limit", "100"), params.get("offset", "0")
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
        return _problem("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
    if not offset.isdigit():
        return _problem("offset", "must be a whole number, 0 or more")
    leads = rescorer.store.nurture(tier, rising_text in {"true", "1"}, int(limit), int(offset))
    return _json({"leads": [lead_summary(lead) for lead in leads], "count": len(leads)})


LEADS_APP = Starlette(routes=[Route("/leads/{lead_id}", get_lead, methods=["GET"]),
                              Route("/nurture", get_nurture, methods=["GET"])])

_ERRORS = {"401": {"description": "No API key."}, "403": {"description": "Wrong API key."},
           "431": {"description": "Request headers over 16 KiB."},
           "503": {"description": "The lead state is not available."}}
OPENAPI_PATHS: dict[str, Any] = {
    "/leads/{lead_id}": {"get": {
        "summary": "A lead's current answer, trend and score history",
        "operationId": "get_lead",
        "parameters": [
            {"name": "lead_id", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "history", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 0, "maximum": MAX_HISTORY,
                        "default": DEFAULT_HISTORY}}],
        "responses": {"200": {"description": "The lead."},
                      "404": {"description": "The service never scored this lead."},
                      "422": {"description": "A bad query parameter (named)."}, **_ERRORS}}},
    "/nurture": {"get": {
        "summary": "Open leads of the nurturing pool, by recent rise or probability",
        "operationId": "get_nurture",
        "parameters": [
            {"name": "tier", "in": "query", "required": False,
             "schema": {"type": "string", "enum": list(TIERS)}},
            {"name": "rising", "in": "query", "required": False,
             "schema": {"type": "boolean", "default": False}},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100}},
            {"name": "offset", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 0, "default": 0}}],
        "responses": {"200": {"description": "The leads."},
                      "422": {"description": "A bad query parameter (named)."}, **_ERRORS}}},
}
