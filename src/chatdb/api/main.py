"""The app as uvicorn loads it (`chatdb.api.main:app_from_environment`, a factory),
so every worker process builds its own engine and change reader."""

from fastapi import FastAPI

from chatdb import migrate
from chatdb.api.app import create_app
from chatdb.config import get_settings
from chatdb.db import check_connection, get_engine
from chatdb.errors import ChatdbError


def app_from_environment() -> FastAPI:
    settings = get_settings()
    problem = settings.unsafe_for_serving()
    if problem:
        raise ChatdbError(problem)
    engine = get_engine()
    check_connection(engine)
    migrate.ensure_current(engine, auto_upgrade=settings.embedded)
    return create_app(engine, settings)
