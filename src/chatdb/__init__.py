"""chatdb: a chat storage service on PostgreSQL."""

__version__ = "0.1.0"
