"""The OpenAPI document the service answers at ``GET /docs.json``: BentoML's, with the statuses
the service really answers.

BentoML lists 200/400/404/500 for every API, while the guards and the door validation answer
401/403 (key), 413/415 (body), 422 (validation), 431 (headers) and 503 (no model, store down).
``service_openapi`` takes BentoML's document (request and 200 schemas, from the pydantic
models) and replaces each operation's responses with the table below, so that the spec and the
answers agree (``tests/integration/test_service_fuzz.py`` checks every answer against it).
"""

from __future__ import annotations

from typing import Any

REF = "#/components/schemas/{}"
ERROR = "ErrorBody"
VALIDATION_ERROR = "ValidationErrorBody"

SCHEMAS: dict[str, dict[str, Any]] = {
    ERROR: {
        "type": "object", "title": ERROR, "required": ["error"],
        "properties": {"error": {"type": "string", "title": "Error"}},
        "description": "What went wrong, in one sentence (never the values sent).",
    },
    VALIDATION_ERROR: {
        "type": "object", "title": VALIDATION_ERROR, "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "title": "Error"},
            "detail": {"type": "array", "title": "Detail", "items": {
                "type": "object", "required": ["type", "loc", "msg"],
                "properties": {
                    "type": {"type": "string"},
                    "loc": {"type": "array",
                            "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string"},
                }}},
        },
        "description": "One entry per problem: `loc` names the field, `msg` says what is wrong.",
    },
}

# status → (description, schema name or None for no JSON body)
API_ERRORS: dict[int, tuple[str, str]] = {
    400: ("Malformed request header (e.g. Content-Length).", ERROR),
    401: ("No API key: send 'Authorization: Bearer <key>'.", ERROR),
    403: ("Wrong API key.", ERROR),
    413: ("Request body over 2 MiB.", ERROR),
    415: ("Body not sent as JSON (Content-Type: application/json).", ERROR),
    422: ("Invalid input: malformed JSON, a repeated key, a wrong type or value, a missing "
          "field or an unknown key.", VALIDATION_ERROR),
    431: ("Request headers over 16 KiB.", ERROR),
    500: ("Unexpected error (logged; no details in the answer).", ERROR),
}
UNAVAILABLE = (503, ("No model loaded, or the online feature store unreachable.", ERROR))
HEADERS_TOO_LARGE = (431, API_ERRORS[431])
# per path: the error statuses answered besides 200
ERRORS_BY_PATH: dict[str, dict[int, tuple[str, str]]] = {
    "/predict": dict([*API_ERRORS.items(), UNAVAILABLE]),
    "/predict_batch": dict([*API_ERRORS.items(), UNAVAILABLE]),
    "/events": dict([*API_ERRORS.items(), UNAVAILABLE]),
    "/outcomes": dict([*API_ERRORS.items(),
                       (503, ("The lead state is not available, or it is recovering the leads "
                              "answered before a restart: retry shortly.", ERROR))]),
    "/reload": dict(API_ERRORS),
    "/healthz": dict([HEADERS_TOO_LARGE]),
    "/livez": dict([HEADERS_TOO_LARGE]),
    "/readyz": dict([HEADERS_TOO_LARGE,
                     (503, ("Not ready: no model, or a store the answers need is down.",
                            ERROR))]),
    "/metrics": dict([HEADERS_TOO_LARGE]),
}
BENTOML_ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError")


def _response(description: str, schema: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": REF.format(schema)}}}}


def service_openapi(bentoml_spec: dict[str, Any],
                    extra_paths: dict[str, Any] | None = None,
                    extra_schemas: dict[str, Any] | None = None) -> dict[str, Any]:
    """``bentoml_spec`` (``Service.openapi_spec.asdict()``) with each operation's responses
    replaced by its 200 answer and the errors of ``ERRORS_BY_PATH``, plus ``extra_paths``
    (operations of mounted apps, documented as given) and the ``extra_schemas`` they refer to."""
    spec = {**bentoml_spec, "paths": {}}
    schemas = {name: schema
               for name, schema in bentoml_spec.get("components", {}).get("schemas", {}).items()
               if name not in BENTOML_ERROR_SCHEMAS}
    spec["components"] = {**bentoml_spec.get("components", {}), "schemas": {**schemas,
                                                                           **SCHEMAS}}
    for path, operations in bentoml_spec["paths"].items():
        errors = ERRORS_BY_PATH.get(path, dict([HEADERS_TOO_LARGE]))
        spec["paths"][path] = {}
        for method, operation in operations.items():
            ok = operation.get("responses", {}).get("200", {"description": "Successful Response"})
            responses = {"200": ok}
            for status, (description, schema) in sorted(errors.items()):
                responses[str(status)] = _response(description, schema)
            spec["paths"][path][method] = {**operation, "responses": responses}
    spec["paths"].update(extra_paths or {})
    spec["components"]["schemas"].update(extra_schemas or {})
    return spec
