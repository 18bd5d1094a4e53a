"""Input checks done before SQL: what PostgreSQL cannot store, and clear limits."""

from chatdb.errors import Invalid

MAX_PAGE = 200


def clean_text(value: str, *, field: str, max_length: int, allow_blank: bool = False) -> str:
    """Refuse text PostgreSQL cannot hold (NUL, lone surrogates) or that breaks a limit."""
    if "\x00" in value:
        raise Invalid(f"{field} cannot contain the NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Invalid(f"{field} is not valid Unicode text (it has a lone surrogate)") from exc
    if len(value) > max_length:
        raise Invalid(f"{field} is at most {max_length} characters (got {len(value)})")
    if not allow_blank and not value.strip():
        raise Invalid(f"{field} cannot be empty")
    return value


def page_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be between 1 and {MAX_PAGE}")
    return limit


def positive_id(value: int, *, field: str) -> int:
    # Ids are bigint; anything outside is no row, and would overflow the parameter.
    if not 1 <= value <= 2**63 - 1:
        raise Invalid(f"{field} must be a positive integer")
    return value


def seq_value(value: int, *, field: str = "seq") -> int:
    if not 0 <= value <= 2**63 - 1:
        raise Invalid(f"{field} must be zero or a positive integer")
    return value
