"""Settings, read from the environment (prefix CHATDB_) when first asked for."""

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Usable only with the embedded server (a developer's machine); chatdb refuses to
# serve a configured database with it.
DEV_ADMIN_KEY = "chatdb-dev-admin-key"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHATDB_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL. Unset: an embedded server under data_dir is used.",
    )
    data_dir: Path = Field(
        default=Path(".chatdb"), description="Where the embedded server keeps its data."
    )
    replica_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Streaming replicas for reads that may lag, comma-separated URLs.",
    )
    replica_retry_seconds: float = Field(
        default=5.0, gt=0, description="How long an unreachable replica is left out."
    )
    pool_size: int = Field(default=10, ge=1, le=1000)
    pool_max_overflow: int = Field(default=5, ge=0, le=1000)
    # The reads a GET makes take connections from a pool of their own (chatdb.db).
    read_pool_size: int | None = Field(
        default=None, ge=1, le=1000, description="Unset: the same as pool_size."
    )
    read_pool_max_overflow: int | None = Field(
        default=None, ge=0, le=1000, description="Unset: the same as pool_max_overflow."
    )
    pool_timeout_seconds: float = Field(default=5.0, gt=0)
    connect_timeout_seconds: int = Field(default=5, ge=1)
    statement_timeout_ms: int = Field(
        default=30_000, ge=0, description="Per-statement limit; 0 disables it."
    )
    echo_sql: bool = False
    message_partitions: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="Hash partitions of messages by conversation, applied by migration 0007 "
        "when it runs (0: one plain table).",
    )
    retention_days: int = Field(
        default=30,
        ge=1,
        le=36500,
        description="Deleted conversations (and deleted messages' text) can be restored "
        "for this many days; `chatdb purge` removes them after.",
    )
    change_retention_days: int = Field(
        default=30,
        ge=1,
        le=36500,
        description="The change log behind live updates keeps this many days; `chatdb purge` "
        "removes older changes. A client away for longer reloads instead of catching up.",
    )
    search_language: str = Field(
        default="english",
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$",
        description="Text search configuration for message search (stemming, stop words); "
        "read by migration 0005, which bakes it into the search index.",
    )

    # The HTTP API
    admin_key: str = Field(
        default=DEV_ADMIN_KEY,
        description="Bearer key for operator routes. Must be changed outside embedded mode.",
    )
    token_lifetime_hours: float = Field(default=24 * 7, gt=0, le=24 * 366)
    # Sign-in throttling (see chatdb.store.accounts.SignInLimits).
    sign_in_account_failures: int = Field(default=5, ge=1, le=1000)
    sign_in_address_failures: int = Field(default=20, ge=1, le=100_000)
    sign_in_first_block_seconds: float = Field(default=1.0, gt=0, le=3600)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    sse_keepalive_seconds: float = Field(default=15.0, gt=0)
    sse_poll_seconds: float = Field(
        default=1.0, gt=0, description="Fallback poll of the change log if a NOTIFY is missed."
    )
    sse_queue_size: int = Field(default=1000, ge=10)
    demo: bool = Field(
        default=False, description="Serving demo data: the sign-in page lists the demo users."
    )

    @field_validator("replica_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [url.strip() for url in value.split(",") if url.strip()]
        return value

    @property
    def admin_key_is_default(self) -> bool:
        return self.admin_key == DEV_ADMIN_KEY

    def unsafe_for_serving(self) -> str | None:
        """Why serving with these settings would be unsafe, if it would."""
        if not self.embedded and self.admin_key_is_default:
            return (
                "CHATDB_ADMIN_KEY is still the development default; set a secret of your "
                "own before serving a configured database"
            )
        return None

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @property
    def read_pool(self) -> tuple[int, int]:
        """The pool for reads' size and overflow: its own settings, else the pool's."""
        size = self.pool_size if self.read_pool_size is None else self.read_pool_size
        overflow = (
            self.pool_max_overflow
            if self.read_pool_max_overflow is None
            else self.read_pool_max_overflow
        )
        return size, overflow


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
