"""Every error as RFC 9457 application/problem+json with a stable `code`."""

import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatdb.api.schemas import Problem
from chatdb.errors import (
    ChatdbError,
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    SchemaOutdated,
    TooManyAttempts,
)

PROBLEM_JSON = "application/problem+json"

_STATUS_CODES: dict[type[ChatdbError], tuple[int, str]] = {
    NotFound: (404, "not_found"),
    Conflict: (409, "conflict"),
    Forbidden: (403, "forbidden"),
    Invalid: (422, "invalid"),
    Gone: (410, "gone"),
    DatabaseUnavailable: (503, "database_unavailable"),
    SchemaOutdated: (503, "schema_outdated"),
    TooManyAttempts: (429, "too_many_attempts"),
}

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


class ApiError(Exception):
    """An error raised by a handler with its HTTP status and code."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def problem(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _safe(value: Any) -> str:
    # Validation errors may quote the input; never echo text that cannot be encoded.
    return str(value).encode("utf-8", "replace").decode("utf-8")


def _is_json(request: Request) -> bool:
    """Whether the body says it is JSON (FastAPI reads no other body as JSON)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    main, _, sub = media_type.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def _paths(app: FastAPI) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """The app's path templates as patterns, with the methods each serves
    (from the OpenAPI document: the routes' own structures are FastAPI's
    private business). Built on the first 405, then kept with the app."""
    cached: list[tuple[re.Pattern[str], frozenset[str]]] | None = getattr(
        app.state, "allowed_methods_by_path", None
    )
    if cached is not None:
        return cached
    patterns = []
    for template, item in app.openapi().get("paths", {}).items():
        # /v1/users/{user_id} matches /v1/users/7: a parameter is one segment.
        pattern = "[^/]+".join(re.escape(part) for part in re.split(r"\{[^}]+\}", template))
        methods = frozenset(m.upper() for m in item if m in _HTTP_METHODS)
        patterns.append((re.compile(pattern), methods))
    app.state.allowed_methods_by_path = patterns
    return patterns


def _allowed_methods(request: Request, starlette_allows: str | None) -> str:
    """Every method some route serves at this path. (Starlette names only the
    methods of the first route whose path matches.)"""
    methods = {m.strip() for m in (starlette_allows or "").split(",") if m.strip()}
    # The app's own path: behind a proxy prefix, scope["path"] includes root_path.
    path = request.scope["path"].removeprefix(request.scope.get("root_path", ""))
    for pattern, served in _paths(request.app):
        if pattern.fullmatch(path):
            methods |= served
    return ", ".join(sorted(methods))


def _document_problems(openapi: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document as the app behaves: every 4xx and 5xx response is
    application/problem+json with the Problem schema, and an operation that
    takes a body may answer 415. (FastAPI documents error models as
    application/json, and adds a 422 with its own validation-error schema,
    which handlers above replace with a problem.)"""

    def document() -> dict[str, Any]:
        result = openapi()
        problem_schema = {"$ref": "#/components/schemas/Problem"}
        for path_item in result.get("paths", {}).values():
            for operation in path_item.values():
                if "requestBody" in operation:
                    operation["responses"].setdefault(
                        "415", {"description": "The body is not JSON (application/json)"}
                    )
                for status, response in operation.get("responses", {}).items():
                    if str(status)[:1] in ("4", "5"):
                        response["content"] = {PROBLEM_JSON: {"schema": problem_schema}}
        schemas = result.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("Problem", Problem.model_json_schema())
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        return result

    return document


def install(app: FastAPI) -> None:
    app.openapi = _document_problems(app.openapi)  # type: ignore[method-assign]

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return problem(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(ChatdbError)
    async def domain_error(_: Request, exc: ChatdbError) -> JSONResponse:
        status, code = next(
            (v for k, v in _STATUS_CODES.items() if isinstance(exc, k)), (500, "error")
        )
        headers = {"Retry-After": "5"} if status == 503 else None
        if isinstance(exc, TooManyAttempts):
            headers = {"Retry-After": str(exc.retry_after)}
        return problem(status, code, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI validates a body of another type as raw bytes, and says the
        # fields are missing: name the real problem.
        if not _is_json(request) and any(e.get("loc", ())[:1] == ("body",) for e in exc.errors()):
            return problem(
                415, "unsupported_media_type", "send the body as JSON (application/json)"
            )
        errors = [
            {"loc": [_safe(p) for p in e.get("loc", ())], "msg": _safe(e.get("msg", ""))}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return problem(422, "invalid_request", f"{where}: {first['msg']}", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error"
        )
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            allowed = _allowed_methods(request, (headers or {}).get("Allow"))
            headers = {**(headers or {}), "Allow": allowed}
        return problem(exc.status_code, code, _safe(exc.detail), headers)

    @app.exception_handler(PoolTimeout)
    async def pool_exhausted(_: Request, exc: PoolTimeout) -> JSONResponse:
        return problem(
            503,
            "busy",
            "all database connections are in use; retry shortly",
            {"Retry-After": "1"},
        )

    @app.exception_handler(OperationalError)
    async def database_down(_: Request, exc: OperationalError) -> JSONResponse:
        return problem(
            503,
            "database_unavailable",
            "the database is not reachable; retry shortly",
            {"Retry-After": "2"},
        )

    @app.exception_handler(DBAPIError)
    async def database_refused(_: Request, exc: DBAPIError) -> JSONResponse:
        # A statement PostgreSQL refused that validation did not foresee: say
        # so without internals; the server log has the details.
        sqlstate = getattr(getattr(exc.orig, "diag", None), "sqlstate", None) or ""
        if sqlstate.startswith(("22", "23")):
            return problem(422, "invalid", "the database refused this value")
        if sqlstate in ("40001", "40P01", "57014", "55P03"):
            return problem(
                503,
                "retry",
                "the operation collided with another; retry",
                {"Retry-After": "1"},
            )
        raise exc

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        # Anything unforeseen: a plain problem, no exception text or stack
        # trace (uvicorn logs those on the server side).
        return problem(500, "internal", "an internal error; it has been logged")
