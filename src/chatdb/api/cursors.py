"""Opaque, tamper-evident page cursors (a tampered cursor is a 400)."""

import base64
import hashlib
import hmac
import json
from datetime import datetime
from typing import Any

from chatdb.api.errors import ApiError
from chatdb.store.types import InboxCursor, SearchCursor


class CursorCodec:
    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"chatdb cursor\0" + secret.encode("utf-8", "replace")).digest()

    def _sign(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(
            hmac.new(self._key, payload, hashlib.sha256).digest()[:12]
        ).decode()

    def encode(self, kind: str, value: Any) -> str:
        payload = json.dumps([kind, value], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + self._sign(payload)

    def decode(self, kind: str, cursor: str) -> Any:
        try:
            data, signature = cursor.split(".", 1)
            payload = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
            if not hmac.compare_digest(signature, self._sign(payload)):
                raise ValueError("bad signature")
            found_kind, value = json.loads(payload)
        except (ValueError, TypeError, UnicodeError) as exc:
            raise ApiError(
                400, "bad_cursor", "the cursor is not valid; start from the first page"
            ) from exc
        if found_kind != kind:
            raise ApiError(400, "bad_cursor", "the cursor belongs to another list")
        return value

    def inbox(self, cursor: InboxCursor | None) -> str | None:
        if cursor is None:
            return None
        return self.encode("inbox", [cursor.last_activity_at.isoformat(), cursor.conversation_id])

    def parse_inbox(self, cursor: str | None) -> InboxCursor | None:
        if cursor is None:
            return None
        stamp, conversation_id = self.decode("inbox", cursor)
        return InboxCursor(datetime.fromisoformat(stamp), int(conversation_id))

    def search(self, cursor: SearchCursor | None) -> str | None:
        if cursor is None:
            return None
        return self.encode(
            "search",
            [cursor.rank, cursor.created_at.isoformat(), cursor.conversation_id, cursor.seq],
        )

    def parse_search(self, cursor: str | None) -> SearchCursor | None:
        if cursor is None:
            return None
        value = self.decode("search", cursor)
        try:
            rank, stamp, conversation_id, seq = value
            return SearchCursor(
                float(rank), datetime.fromisoformat(stamp), int(conversation_id), int(seq)
            )
        except (ValueError, TypeError) as exc:
            raise ApiError(400, "bad_cursor", "the cursor is not valid") from exc
