"""The web client: its page at /, its files under /web/, and the routes it
needs beyond the core resources (the demo sign-in hint; finding a user by
username, to start a conversation or add a member).

The files are mounted under /web/ rather than at /: a mount at / would match
every path, and answer a wrong method on an API route with its own 404 or 405
instead of the API's. Like every handler: parse, authorize, one transaction
(a GET: its reads), call the store, render.
"""

import re
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Scope

from chatdb import models, store
from chatdb.api import schemas
from chatdb.api.deps import AppSettings, Caller, Db
from chatdb.api.errors import ApiError
from chatdb.api.routes import user_out
from chatdb.demo import DEMO_PASSWORD, DEMO_USERS
from chatdb.errors import NotFound

router = APIRouter()

# The users table's rule for usernames (models.User, username_format).
_USERNAME = re.compile(r"[A-Za-z0-9_.-]+")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# The same policy as the <meta> in index.html, plus what only a header can say
# (no framing). Scripts, styles and requests: this server only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _protect(response: Response) -> Response:
    # Revalidated on each load (ETag): a new version shows at once, and the
    # modules of two versions never mix.
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


class WebFiles(StaticFiles):
    """The web client's scripts and styles, mounted at /web."""

    def __init__(self) -> None:
        super().__init__(directory=WEB_DIR)

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = _protect(await super().get_response(path, scope))
        if path.endswith(".js"):  # some systems map .js to text/plain; modules need this
            response.headers["Content-Type"] = "text/javascript; charset=utf-8"
        return response


@router.get("/", include_in_schema=False)
def web_client() -> Response:
    """The web client: one page; conversations are #/c/<id> within it."""
    return _protect(FileResponse(WEB_DIR / "index.html", media_type="text/html"))


class DemoUserOut(BaseModel):
    username: str
    display_name: str


class DemoOut(BaseModel):
    """Who can sign in to the demo, and with which password (published on purpose)."""

    users: list[DemoUserOut]
    password: str


_NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": schemas.Problem, "description": "Not serving demo data"}
}
_USER_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": schemas.Problem, "description": "Not signed in"},
    422: {"model": schemas.Problem, "description": "Invalid input"},
}


@router.get("/v1/demo", responses=_NOT_FOUND, tags=["web client"])
def demo(settings: AppSettings) -> DemoOut:
    """The demo accounts, for the sign-in page; 404 unless serving with `--demo`."""
    if not settings.demo:
        raise ApiError(404, "not_found", "this server is not serving demo data")
    return DemoOut(
        users=[DemoUserOut(username=u, display_name=d) for u, d in DEMO_USERS],
        password=DEMO_PASSWORD,
    )


@router.get("/v1/users", responses=_USER_ERRORS, tags=["users"])
def find_users(
    caller: Caller,
    db: Db,
    username: Annotated[str, Query(min_length=1, max_length=models.USERNAME_MAX)],
) -> list[schemas.UserOut]:
    """The user with this username (case-insensitive, exact match): a list of
    zero or one. Signed-in users only; the email is shown only to its owner."""
    if not _USERNAME.fullmatch(username):
        return []  # no account can have this name (and NUL cannot reach PostgreSQL)
    with db.reads() as session:
        try:
            user = store.get_user_by_username(session=session, username=username)
        except NotFound:
            return []
    return [user_out(user, caller)]
