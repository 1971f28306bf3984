"""Opening the configured store: the URL's scheme picks the adapter (imported only then)."""

from __future__ import annotations

from respond.store import Store

SQLITE_SCHEMES = ("sqlite",)
POSTGRESQL_SCHEMES = ("postgresql", "postgres")


async def open_store(url: str) -> Store:
    """The store behind ``url`` (``server.database_url``), opened and migrated.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or ``sqlite:///:memory:``;
    ``postgresql://user:password@host:port/database`` (or ``postgres://``). Any other
    scheme is a ``ValueError`` that names the setting.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in SQLITE_SCHEMES:
        from respond.store.sqlite import SQLiteStore

        return await SQLiteStore.open(url)
    if scheme in POSTGRESQL_SCHEMES:
        from respond.store.postgres import PostgresStore

        return await PostgresStore.open(url)
    problem = f"unsupported scheme {scheme!r}" if scheme else "not a URL"
    # The URL itself is not repeated: it may carry a password.
    raise ValueError(
        f"server.database_url: {problem}; use sqlite:///path/to/respond.db or "
        "postgresql://user@host:5432/database"
    )
