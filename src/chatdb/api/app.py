"""The FastAPI application: wiring, health checks and the live-update stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatdb import migrate
from chatdb.api import errors, schemas
from chatdb.api.cursors import CursorCodec
from chatdb.api.deps import Caller
from chatdb.api.errors import ApiError, problem
from chatdb.api.events import ChangeHub
from chatdb.api.metrics import Metrics, RequestTimer
from chatdb.api.routes import change_out, router
from chatdb.api.web_routes import WebFiles
from chatdb.api.web_routes import router as web_router
from chatdb.config import Settings
from chatdb.db import make_engine, normalize_url, retry_if_connection_lost
from chatdb.errors import Gone
from chatdb.replicas import ReadRouter
from chatdb.store.changes import Change


def create_app(engine: Engine, settings: Settings) -> FastAPI:
    """The app, serving the database behind `engine`."""
    hub = ChangeHub(engine, settings)
    read_router = ReadRouter(
        engine,
        # Pinged before use: a read there has no statement to retry on a dead
        # connection (the primary's transactions do, see api.deps.Database).
        # Their reads run in transactions (ReadRouter): no pool for reads.
        [
            make_engine(normalize_url(url), settings, pre_ping=True, read_pool=False)
            for url in settings.replica_urls
        ],
        settings.replica_retry_seconds,
    )
    metrics = Metrics(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()
            read_router.dispose()
            metrics.close()

    app = FastAPI(
        title="chatdb",
        version="1",
        summary="A chat storage service on PostgreSQL.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.settings = settings
    app.state.cursors = CursorCodec(settings.admin_key)
    app.state.hub = hub
    app.state.read_router = read_router
    app.state.metrics = metrics
    errors.install(app)
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    # Outermost, so refused bodies and errors are timed too.
    app.add_middleware(RequestTimer, metrics=metrics)
    app.include_router(router)
    app.include_router(web_router)
    app.mount("/web", WebFiles(), name="web")

    @app.get("/healthz", tags=["health"])
    def healthz() -> schemas.Health:
        """The process is up."""
        return schemas.Health(status="ok")

    @app.get("/readyz", tags=["health"], responses={503: {"model": schemas.Problem}})
    def readyz() -> schemas.Health:
        """The database answers and its schema is current."""

        def read_revision() -> str | None:
            with engine.connect() as connection:
                return migrate.current_revision(connection)

        try:
            # Once more on a new connection if a pooled one died with a restart.
            current = retry_if_connection_lost(read_revision, attempts=2)
        except Exception as exc:
            raise ApiError(503, "database_unavailable", "the database is not reachable") from exc
        if current != migrate.head_revision():
            raise ApiError(503, "schema_outdated", "the database schema is not current")
        return schemas.Health(status="ready", schema_revision=current)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE_LATEST: {}}},
            401: {"model": schemas.Problem},
            403: {"model": schemas.Problem},
        },
    )
    def prometheus_metrics(caller: Caller) -> Response:
        """Prometheus metrics (admin key): request latency per route template,
        the connection pool (in use, idle, waiting), database round trips."""
        caller.require_admin()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/v1/events",
        tags=["live updates"],
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}},
            400: {"model": schemas.Problem},
            401: {"model": schemas.Problem},
        },
    )
    async def events(
        request: Request,
        caller: Caller,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Server-Sent Events: the caller's changes, as `event: change` with the
        change as JSON and its stream position as `id`. Reconnect with
        Last-Event-ID (browsers do) to receive every change since, exactly once.
        A position older than the change log keeps (CHATDB_CHANGE_RETENTION_DAYS)
        gets `event: reset` and the stream ends: reconnect without
        Last-Event-ID and reload what you show."""
        user_id = caller.require_user()
        resume = _parse_event_id(last_event_id)
        subscriber = await hub.subscribe(user_id, resume)

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 2000\n\n"
                try:
                    async for change in hub.catch_up(subscriber):
                        yield _event(change)
                except Gone:
                    # Too far behind to catch up: the client reconnects without a
                    # position and reloads what it shows.
                    yield b"event: reset\ndata: {}\n\n"
                    return
                while True:
                    try:
                        # Not wait_for, which in Python 3.11 can swallow a cancellation.
                        async with asyncio.timeout(settings.sse_keepalive_seconds):
                            next_change: Change | None = await subscriber.queue.get()
                    except TimeoutError:
                        # Nothing queued: every change up to the reader's position
                        # that this user gets has been sent. Moving the client's
                        # position there keeps a quiet client's position inside
                        # the change log's retention window.
                        position = max(hub.watermark, subscriber.seen_up_to)
                        yield f"id: {position}\n\n".encode()
                        continue
                    if next_change is None:  # cut off (too slow) or shutting down
                        return
                    yield _event(next_change)
            finally:
                hub.unsubscribe(subscriber)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return app


def _parse_event_id(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    # ASCII digits only: headers arrive as latin-1, and str.isdigit() accepts
    # "²", which int() then refuses (a 500). The length check, not a header
    # max_length, bounds it, so every malformed id gets this same 400.
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise ApiError(400, "bad_event_id", "Last-Event-ID must be an id this stream sent")
    return int(value)


def _event(change: Any) -> bytes:
    data = json.dumps(change_out(change).model_dump(mode="json"), ensure_ascii=False)
    return f"id: {change.id}\nevent: change\ndata: {data}\n\n".encode()


class _TooLarge(StarletteHTTPException):
    """Raised while a body arrives. An HTTPException, because FastAPI turns any
    other error raised while it reads a body into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is larger than {limit} bytes")


class BodySizeLimit:
    """413 for bodies over `limit` bytes, counted as they arrive, so a missing
    or false Content-Length does not get around it. Plain ASGI middleware."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge(self.limit)
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        response = problem(413, "too_large", f"the body is larger than {self.limit} bytes")
        await response(scope, receive, send)
