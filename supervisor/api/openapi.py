"""The OpenAPI 3.1 document of `/api/v1`, generated from the route table and its pydantic models."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from supervise.protocol.version import VERSION
from supervise.supervisor.api.models import Problem
from supervise.supervisor.api.server import PREFIX, PROBLEM_TYPE, Route
from supervise.supervisor.api.session import SESSION_COOKIE

REF = "#/components/schemas/{model}"
_ERROR_TEXT = {
    400: "Malformed request (not JSON, a token in the query string, a bad header)",
    401: "No token, or a token that is unknown, revoked or expired",
    403: "The token's role is below what this needs",
    404: "No such object (or it belongs to another tenant)",
    409: "Conflict with the object's state, or an Idempotency-Key reused with another body",
    413: "The body is over the size cap",
    415: "The body is not JSON",
    422: "The body or query does not match its schema",
    429: "Too many failed authentications, or a tenant over its quota (see Retry-After)",
    503: "A store the answer is read from cannot be reached now (retry later)",
}


def document(routes: Sequence[Route]) -> dict[str, Any]:
    """The whole document; `components.schemas` holds every model a route names."""
    models: set[type[BaseModel]] = {Problem}
    for r in routes:
        models.update(m for m in (r.body, r.response) if m is not None)
    keyed = [
        (m, "validation" if any(r.body is m for r in routes) else "serialization")
        for m in sorted(models, key=lambda m: m.__name__)
    ]
    _, defs = models_json_schema(keyed, ref_template=REF)  # type: ignore[arg-type]
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        paths.setdefault(PREFIX + r.path, {})[r.method.lower()] = _operation(r)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "supervise HTTP API",
            "version": VERSION,
            "description": "Services, scheduled jobs, runs, one-shot URL tasks and events of one supervise daemon.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "supervise token create"},
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE,
                    "description": "set by POST /api/v1/session; state changes also need X-CSRF-Token",
                },
            },
        },
        "security": [{"bearer": []}, {"session": []}],
    }


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": _operation_id(route),
        "summary": route.summary,
        "tags": [route.tag],
        "description": f"Needs the `{route.role}` role (or higher).",
        "x-role": str(route.role),
    }
    if route.public:
        op.update(description="Needs no token.", security=[])
        op["x-role"] = "none"
    params = [_path_param(name, route.path_patterns.get(name)) for name in re.findall(r"{(\w+)}", route.path)]
    if route.query is not None:
        params += _query_params(route.query)
    if route.method == "POST":
        params.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": "the same key and body return the first answer; another body: 409",
            }
        )
    if route.stream:
        params.append({"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}})
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=route.body.__name__)}}},
        }
    op["responses"] = _responses(route)
    return op


def _responses(route: Route) -> dict[str, Any]:
    ok: dict[str, Any] = {
        "description": "OK" if route.status == 200 else {201: "Created", 202: "Accepted"}.get(route.status, "OK")
    }
    if route.stream:
        ok["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
    elif route.response is not None:
        ok["content"] = {"application/json": {"schema": {"$ref": REF.format(model=route.response.__name__)}}}
    else:
        ok["content"] = {"application/json": {"schema": {"type": "object"}}}
    if route.status == 201:
        ok["headers"] = {"Location": {"schema": {"type": "string"}, "description": "the new object's URL"}}
    codes = {400, 429, *route.errors} if route.public else {400, 401, 403, 429, *route.errors}
    if route.body is not None:
        codes |= {413, 415, 422}
    if route.query is not None:
        codes.add(422)
    if route.method == "POST":
        codes.add(409)
    problem = {PROBLEM_TYPE: {"schema": {"$ref": REF.format(model="Problem")}}}
    responses: dict[str, Any] = {str(route.status): ok}
    for code in sorted(codes):
        responses[str(code)] = {"description": _ERROR_TEXT[code], "content": problem}
    return responses


def _path_param(name: str, pattern: str | None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = f"^{pattern}$"
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            param["description"] = description
        out.append(param)
    return out


def _operation_id(route: Route) -> str:
    words = [w for w in re.split(r"[/{}]+", route.path) if w]
    return route.method.lower() + "".join(w[:1].upper() + w[1:] for w in words).replace("_", "")


def reference_markdown(routes: Sequence[Route]) -> str:
    """The endpoint table of docs/api.md, from the same route table."""
    lines = ["| method | path | role | what |", "|---|---|---|---|"]
    for r in routes:
        lines.append(f"| {r.method} | `{PREFIX}{r.path}` | {'none' if r.public else r.role} | {r.summary} |")
    return "\n".join(lines)
