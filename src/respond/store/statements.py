"""Every SQL statement of the stores, each written once (rendered per database by
store/dialect.py).

Most statements serve both databases. The few that exist for one alone are marked
``only=...`` and gathered at the end of their section, with the reason: PostgreSQL saves a
response with its items (and a job, and a notification) in one statement of data-modifying
CTEs and loads a whole context in one statement, because round trips are its cost; SQLite,
which has neither data-modifying CTEs nor round trips, runs the shared upserts one after the
other in a transaction and inserts rows with ``executemany``.

Rules: a row is hidden once ``expires_at <= now``. Deleting a response that later rows still
build on leaves a tombstone (body wiped, ``expires_at`` 0) that keeps the items it
introduced; a tombstone or expired row is removed, items and all, once no live response
descends from it. Items are immutable: a known id keeps its first content and owner.
"""

from __future__ import annotations

from respond.store import TERMINAL_STATUSES
from respond.store.dialect import Sql

TOMBSTONE_EXPIRES_AT = 0

_RESPONSE_COLUMNS = "body, context_ids, output_ids, previous_response_id, created_at, expires_at"
_FILE_COLUMNS = "id, filename, purpose, bytes, content_type, created_at, expires_at"

# The values of a response row, in the order the saving statements take them.
RESPONSE_PARAMS = ("id", "body", "context_ids", "output_ids", "previous_response_id",
                   "created_at", "expires_at")

# -- responses and items -----------------------------------------------------------------------

# An upsert, not INSERT OR REPLACE: REPLACE deletes the old row, which would cascade to items.
_UPSERT_RESPONSE = f"""
INSERT INTO responses (id, {_RESPONSE_COLUMNS})
VALUES (:id, :body, :context_ids, :output_ids, :previous_response_id, :created_at, :expires_at)
ON CONFLICT (id) DO UPDATE SET
    body = excluded.body, context_ids = excluded.context_ids, output_ids = excluded.output_ids,
    previous_response_id = excluded.previous_response_id, created_at = excluded.created_at,
    expires_at = excluded.expires_at
"""

# ``save_response(..., unless_terminal=True)``: a stored final status is never overwritten.
_UNLESS_TERMINAL = (
    "WHERE coalesce({field:responses.body|status}, '') NOT IN ("
    + ", ".join(f"'{status}'" for status in sorted(TERMINAL_STATUSES)) + ")"
)

SELECT_RESPONSE = Sql(
    f"SELECT {_RESPONSE_COLUMNS} FROM responses WHERE id = :id AND expires_at > :now",
    params=("id", "now"))

SELECT_CONTEXT_IDS = Sql("SELECT context_ids FROM responses WHERE id = :id AND expires_at > :now")

# The items of an id list as one text of JSON documents, in the list's order. On SQLite the
# CROSS JOIN keeps the id list the outer loop, which gives that order; callers check it.
_ITEMS_IN_ORDER = (
    "SELECT {concat:i.data ORDER BY j.key} "
    "FROM {each:%s AS j} CROSS JOIN items AS i WHERE i.id = j.value"
)
SELECT_ITEMS_IN_ORDER = Sql(_ITEMS_IN_ORDER % ":ids", params=("ids",))

SELECT_ITEMS_BY_ID = Sql("SELECT i.id, i.data FROM {lookup:items AS i|i.id|:ids}",
                         params=("ids",))

TOMBSTONE = Sql(f"""
UPDATE responses SET body = '{{}}', context_ids = {{empty_ids}}, output_ids = {{empty_ids}},
    expires_at = {TOMBSTONE_EXPIRES_AT}
WHERE id = :id AND expires_at > :now
""")

# The response itself if nothing builds on it, then each hidden ancestor left childless by
# the removal below it. Items, jobs and events go with their rows (ON DELETE CASCADE).
DELETE_UNBUILT = Sql("""
DELETE FROM responses WHERE id IN (
    WITH RECURSIVE doomed (id, parent) AS (
        SELECT id, previous_response_id FROM responses
        WHERE id = :id AND NOT EXISTS (SELECT 1 FROM responses WHERE previous_response_id = :id)
        UNION
        SELECT p.id, p.previous_response_id
        FROM doomed AS d JOIN responses AS p ON p.id = d.parent
        WHERE p.expires_at <= :now AND NOT EXISTS (
            SELECT 1 FROM responses AS c WHERE c.previous_response_id = p.id AND c.id <> d.id)
    )
    SELECT id FROM doomed
)
""")

# Hidden rows with no live descendant, a batch at a time. "keep" starts from hidden rows with
# a live child and climbs through hidden ancestors; everything else hidden can go.
PURGE_BATCH = Sql("""
DELETE FROM responses WHERE id IN (
    SELECT id FROM responses
    WHERE expires_at <= :now AND id NOT IN (
        WITH RECURSIVE keep (id) AS (
            SELECT p.id FROM responses AS p
            WHERE p.expires_at <= :now AND EXISTS (
                SELECT 1 FROM responses AS c
                WHERE c.previous_response_id = p.id AND c.expires_at > :now)
            UNION
            SELECT p.id FROM keep AS k
            JOIN responses AS c ON c.id = k.id
            JOIN responses AS p ON p.id = c.previous_response_id
            WHERE p.expires_at <= :now
        )
        SELECT id FROM keep
    )
    LIMIT :limit
)
""")

# A finished job; and the job and events of a row that stays as a tombstone or as a hidden
# ancestor, which nothing can read any more.
DROP_JOB = Sql("DELETE FROM jobs WHERE response_id = :id")
DROP_EVENTS = Sql("DELETE FROM events WHERE response_id = :id")
DROP_HIDDEN_JOBS = Sql(
    "DELETE FROM jobs WHERE response_id IN (SELECT id FROM responses WHERE expires_at <= :now)")
DROP_HIDDEN_EVENTS = Sql(
    "DELETE FROM events WHERE response_id IN (SELECT id FROM responses WHERE expires_at <= :now)")

SAVE_RESPONSE = Sql(_UPSERT_RESPONSE, only="sqlite", params=RESPONSE_PARAMS)
SAVE_RESPONSE_UNLESS_TERMINAL = Sql(_UPSERT_RESPONSE + _UNLESS_TERMINAL, only="sqlite",
                                    params=RESPONSE_PARAMS)
INSERT_ITEM = Sql(
    "INSERT INTO items (id, response_id, data) VALUES (:item_id, :id, :data) "
    "ON CONFLICT (id) DO NOTHING", only="sqlite", params=("item_id", "id", "data"))


def _save_ctes(guard: str) -> str:
    """PostgreSQL: the response and its items in one statement (the items' foreign key is
    checked at its end, when the parent row is there); no items when the row was kept."""
    return f"""
WITH saved AS (
    {_UPSERT_RESPONSE} {guard}
    RETURNING id
), new_items AS (
    INSERT INTO items (id, response_id, data)
    SELECT n.id, :id, n.data::json FROM unnest(:item_ids::text[], :item_data::text[]) AS n (id, data)
    WHERE EXISTS (SELECT 1 FROM saved)
    ON CONFLICT (id) DO NOTHING
)"""


_PG_SAVE_PARAMS = (*RESPONSE_PARAMS, "item_ids", "item_data")
PG_SAVE = Sql(_save_ctes("") + "\nSELECT count(*) FROM saved", only="postgresql",
              params=_PG_SAVE_PARAMS)
PG_SAVE_UNLESS_TERMINAL = Sql(_save_ctes(_UNLESS_TERMINAL) + "\nSELECT count(*) FROM saved",
                              only="postgresql", params=_PG_SAVE_PARAMS)

# The response row and its whole context in one round trip, whatever the depth.
PG_LOAD_CONTEXT = Sql(f"""
SELECT {_RESPONSE_COLUMNS}, ({_ITEMS_IN_ORDER % "r.context_ids || r.output_ids"})
FROM responses AS r WHERE r.id = :id AND r.expires_at > :now
""", only="postgresql", params=("id", "now"))

# -- background work ---------------------------------------------------------------------------

# A new job replaces any job the response had (and so the lease of whoever held it).
_UPSERT_JOB = """
INSERT INTO jobs (response_id, payload, worker, lease_until, attempts, cancel_requested,
                  created_at)
VALUES (:id, :payload, NULL, NULL, 0, false, {clock})
ON CONFLICT (response_id) DO UPDATE SET
    payload = excluded.payload, worker = NULL, lease_until = NULL, attempts = 0,
    cancel_requested = false, created_at = excluded.created_at
"""

HAS_UNCLAIMED = Sql("SELECT EXISTS (SELECT 1 FROM jobs WHERE worker IS NULL)")

# SQLite runs it inside BEGIN IMMEDIATE (the write lock is held from the look-up to the
# update); PostgreSQL's concurrent claimers pass over a row another one is taking.
CLAIM = Sql("""
UPDATE jobs SET worker = :worker, lease_until = :lease_until, attempts = attempts + 1
WHERE response_id = (
    SELECT response_id FROM jobs WHERE worker IS NULL
    ORDER BY created_at, response_id LIMIT 1 {skip_locked}
)
RETURNING response_id, payload, attempts
""")

RENEW = Sql(
    "UPDATE jobs SET lease_until = :lease_until WHERE response_id = :id AND worker = :worker")


# A job is reaped when its lease ran out and its holder is not known to be alive.
_REAPABLE = "worker IS NOT NULL AND lease_until < :now AND NOT {alive:jobs.worker}"
HAS_REAPABLE = Sql(f"SELECT EXISTS (SELECT 1 FROM jobs WHERE {_REAPABLE})")
REAP = Sql(f"DELETE FROM jobs WHERE {_REAPABLE} RETURNING response_id")

REQUEST_CANCEL = Sql("UPDATE jobs SET cancel_requested = true WHERE response_id = :id")

CANCEL_REQUESTED = Sql("SELECT cancel_requested FROM jobs WHERE response_id = :id")

UPSERT_JOB = Sql(_UPSERT_JOB, only="sqlite")

PG_ENQUEUE = Sql(_save_ctes("") + f""", job AS ({_UPSERT_JOB})
SELECT pg_notify(:channel, :id)""", only="postgresql")

# A session-level lock on the store's own connection: while it is held, the worker lives.
PG_LOCK_WORKER = Sql("SELECT pg_try_advisory_lock(hashtextextended(:worker, 0))",
                     only="postgresql")

# -- event logs --------------------------------------------------------------------------------

# The first write of a sequence number wins, so a retried append never fails on a duplicate.
INSERT_EVENT = Sql(
    "INSERT INTO events (response_id, sequence_number, data) VALUES (:id, :seq, :data) "
    "ON CONFLICT (response_id, sequence_number) DO NOTHING", only="sqlite",
    params=("id", "seq", "data"))

# PostgreSQL: the events and the notification naming the response and its last number.
PG_APPEND_EVENTS = Sql("""
WITH appended AS (
    INSERT INTO events (response_id, sequence_number, data)
    SELECT :id, e.seq, e.data::json FROM unnest(:seqs::int[], :datas::text[]) AS e (seq, data)
    ON CONFLICT (response_id, sequence_number) DO NOTHING
)
SELECT pg_notify(:channel, :message)
""", only="postgresql")

READ_EVENTS = Sql(
    "SELECT data FROM events WHERE response_id = :id AND sequence_number > :after "
    "ORDER BY sequence_number")

HAS_EVENT_AFTER = Sql(
    "SELECT EXISTS (SELECT 1 FROM events WHERE response_id = :id AND sequence_number > :after)")

# The poll: the last sequence number of each followed response.
LAST_EVENTS = Sql(
    "SELECT j.value, (SELECT max(sequence_number) FROM events WHERE response_id = j.value) "
    "FROM {each::ids AS j}")

# -- files -------------------------------------------------------------------------------------

INSERT_FILE = Sql(f"""
INSERT INTO files ({_FILE_COLUMNS}, complete)
VALUES (:id, :filename, :purpose, :bytes, :content_type, :created_at, :expires_at, false)
""")

INSERT_CHUNK = Sql("INSERT INTO file_chunks (file_id, seq, data) VALUES (:id, :seq, :data)")

COMPLETE_FILE = Sql("UPDATE files SET complete = true, expires_at = :expires_at WHERE id = :id")

DROP_FILE = Sql("DELETE FROM files WHERE id = :id")

SELECT_FILE = Sql(
    f"SELECT {_FILE_COLUMNS} FROM files WHERE id = :id AND complete AND expires_at > :now")

# Upload order (``ordinal``); the cursor's own row gives the place to resume. An unknown
# cursor makes the comparison NULL: an empty page.
LIST_FILES = {
    order: Sql(f"""
SELECT {_FILE_COLUMNS} FROM files
WHERE complete AND expires_at > :now AND (:purpose::text IS NULL OR purpose = :purpose)
  AND (:after::text IS NULL OR ordinal {op} (SELECT ordinal FROM files WHERE id = :after))
ORDER BY ordinal {order.upper()} LIMIT :limit
""")
    for order, op in (("asc", ">"), ("desc", "<"))
}

READ_CHUNKS = Sql(
    "SELECT data FROM file_chunks WHERE file_id = :id AND seq >= :seq ORDER BY seq LIMIT :limit")

DELETE_FILE = Sql("DELETE FROM files WHERE id = :id AND complete AND expires_at > :now")

PURGE_FILES = Sql(
    "DELETE FROM files WHERE id IN (SELECT id FROM files WHERE expires_at <= :now LIMIT :limit)")

# -- transactions and connections -------------------------------------------------------------

# SQLite's write transactions take the write lock up front (store/sqlite.py).
BEGIN_WRITE = Sql("BEGIN IMMEDIATE", only="sqlite")
COMMIT = Sql("COMMIT", only="sqlite")
ROLLBACK = Sql("ROLLBACK", only="sqlite")

KEEPALIVE = Sql("SELECT 1")

CURRENT_SCHEMA = Sql("SELECT current_schema()", only="postgresql")

# -- migrations (store/migrations.py) ----------------------------------------------------------

# Portable between SQLite and PostgreSQL on purpose: one bookkeeping table for every dialect.
CREATE_SCHEMA_MIGRATIONS = Sql(
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")

# Replicas migrating one schema together: a transaction-scoped lock keyed by the schema.
MIGRATION_LOCK = Sql(
    "SELECT pg_advisory_xact_lock(:lock_class, hashtext(current_setting('search_path')))",
    only="postgresql")


MIGRATION_DONE = Sql("SELECT 1 FROM schema_migrations WHERE version = :version")
MIGRATIONS_DONE = Sql("SELECT version FROM schema_migrations")
RECORD_MIGRATION = Sql(
    "INSERT INTO schema_migrations (version, applied_at) VALUES (:version, :applied_at)")
NEWEST_MIGRATION = Sql("SELECT max(version) FROM schema_migrations")
