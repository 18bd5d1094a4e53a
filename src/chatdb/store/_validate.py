"""Input checks done before SQL: what PostgreSQL cannot store, and clear limits."""

import unicodedata

from chatdb.errors import Invalid

MAX_PAGE = 200
# Ids and seqs are bigint.
BIGINT_MAX = 2**63 - 1


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
    if not 1 <= value <= BIGINT_MAX:
        raise Invalid(f"{field} must be a positive integer")
    return value


def seq_value(value: int, *, field: str = "seq") -> int:
    if not 0 <= value <= BIGINT_MAX:
        raise Invalid(f"{field} must be zero or a positive integer")
    return value


# What an emoji is made of besides symbols (So, Sk): variation selectors and
# other marks (Mn, Me: FE0F, the keycap U+20E3), the zero-width joiner of
# sequences, tag characters (subdivision flags), and the keycap bases.
_EMOJI_PARTS = frozenset("\u200d0123456789#*\u203c\u2049\u3030\u303d")


def clean_emoji(value: str, *, max_length: int) -> str:
    """One emoji (a single symbol or a sequence): not text, not whitespace."""
    if not value:
        raise Invalid("emoji cannot be empty")
    if len(value) > max_length:
        raise Invalid(f"emoji is at most {max_length} characters (got {len(value)})")
    symbols = 0
    for char in value:
        category = unicodedata.category(char)
        if category in ("So", "Sk"):
            symbols += category == "So"
        elif category in ("Mn", "Me") or char in _EMOJI_PARTS or 0xE0020 <= ord(char) <= 0xE007F:
            continue
        else:
            raise Invalid(f"{value!r} is not an emoji")
    if symbols == 0 and not any(char in "\u20e3\u203c\u2049\u3030\u303d" for char in value):
        raise Invalid(f"{value!r} is not an emoji")
    return value
