"""Domain errors: what the data layer raises instead of driver exceptions.

Each carries a message fit to show a user as is; the CLI prints it on one line
and the HTTP API maps the class to a status code.
"""


class ChatdbError(Exception):
    """Base of every error chatdb reports to a user."""


class NotFound(ChatdbError):
    """The thing asked for does not exist (or the caller may not know it does)."""


class Conflict(ChatdbError):
    """The request contradicts what is stored (a taken username, a duplicate)."""


class Forbidden(ChatdbError):
    """The caller may not do this."""


class Invalid(ChatdbError):
    """The input breaks a rule (too long, empty, out of range)."""


class Gone(ChatdbError):
    """What was asked for is no longer kept: changes older than the change
    log's retention window. The caller reloads instead of catching up."""


class DatabaseUnavailable(ChatdbError):
    """PostgreSQL cannot be reached or refused the connection."""


class SchemaOutdated(ChatdbError):
    """The database schema is behind (or ahead of) this version of chatdb."""


class TooManyAttempts(ChatdbError):
    """Too many failed sign-ins for an account or from an address; retry later."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
