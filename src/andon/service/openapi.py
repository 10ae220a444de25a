"""The OpenAPI document says what the service really answers: every error is ``{"error", "message"}``.

FastAPI documents a 422 as ``HTTPValidationError`` (``{"detail": [...]}``), a shape this service never sends
(``andon.service.errors`` answers every error, validation included, as ``{"error": code, "message": text}``).
``install(app)`` rewrites the generated document once: an ``Error`` component, the 422s pointed at it, and a
``default`` response (any other error status) with it, so that a client generated from ``/openapi.json``, or a
schema fuzzer (``tests/test_access_fuzz.py``), sees the shape it will get.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "description": "every error answer of the service",
    "properties": {
        "error": {"type": "string", "description": "stable machine-readable code, e.g. invalid_request"},
        "message": {"type": "string", "description": "what was wrong, naming the bad value and what is allowed"},
    },
    "required": ["error", "message"],
    "additionalProperties": False,
}
_ERROR_CONTENT = {"application/json": {"schema": ERROR_REF}}


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (an OpenAPI document made by FastAPI) with the service's one error shape; idempotent."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {"description": "invalid request (error invalid_request)", "content": _ERROR_CONTENT}
            responses.setdefault(
                "default",
                {"description": "any other error: 401, 403, 404, 409, 413, 415, 503", "content": _ERROR_CONTENT},
            )
    text = json.dumps(schema.get("paths", {}))
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{unused}" not in text:
            components.pop(unused, None)
    return schema


def install(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None or "Error" not in app.openapi_schema.get("components", {}).get("schemas", {}):
            app.openapi_schema = document_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
