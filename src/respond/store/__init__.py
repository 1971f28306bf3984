"""store: persistence of responses, items, background jobs, event logs and uploaded files,
behind ``Store``.

Rule: a store speaks SQL to its database and nothing else; it imports only ``errors`` and
plain data types. Each SQL statement is written once, for both databases; what truly
differs between them is named and kept in one place. Items are stored once, as the JSON the
wire shows; a response records the ordered ids of the items that formed its context, so
rebuilding any conversation is one query for the response row and one for its items, never
a walk of the chain.

Layout:
- here: the data types and the role protocols ``ResponseStore``, ``JobStore`` and
  ``FileStore``; ``Store`` is all three (what ``open.open_store(url)`` returns).
- ``statements``: every SQL statement, once; ``dialect``: how one is rendered for SQLite or
  PostgreSQL (placeholders, casts, id lists, JSON access, locks).
- ``core``: the logic both adapters share (reads, paging, purges, job queue, event logs,
  files), over a few one-statement primitives.
- ``sqlite`` (with ``sqlite_connection``) and ``postgres`` (with ``listener``): the
  adapters, holding only what differs: SQLite's inline execution, thread hop and WAL
  checkpoints; PostgreSQL's pool, one-statement saves and context loads, LISTEN/NOTIFY
  and advisory locks.
- ``cache``, ``pages``, ``wakeups``, ``migrations``: helpers the adapters share.

The shared contract tests are tests/store/test_contract.py, test_background.py and
test_file_storage.py, run on both adapters.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Item = dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    body: dict[str, Any]  # the Response object as returned by GET /responses/{id}
    context_ids: list[str]  # ordered ids of the input context (inherited + this request's input)
    output_ids: list[str]  # ordered ids of this response's output items
    previous_response_id: str | None
    created_at: int  # unix seconds
    expires_at: int  # unix seconds


@dataclass(frozen=True, slots=True)
class Job:
    """A background response waiting for (or held by) a worker."""

    response_id: str
    payload: dict[str, Any]  # what the worker needs to run it, as given to ``enqueue``
    attempts: int  # how many times a worker has claimed it (1 on the first claim)


@dataclass(frozen=True, slots=True)
class ItemPage:
    items: list[Item]
    has_more: bool


@dataclass(frozen=True, slots=True)
class StoredFile:
    """An uploaded file's metadata (its contents are stored beside it, in chunks)."""

    id: str
    filename: str
    purpose: str
    bytes: int  # the size of the contents
    content_type: str  # what GET /files/{id}/content answers with
    created_at: int  # unix seconds
    expires_at: int  # unix seconds; hidden once <= now, then purged


@dataclass(frozen=True, slots=True)
class FilePage:
    files: list[StoredFile]
    has_more: bool



TERMINAL_STATUSES = frozenset({"completed", "incomplete", "failed", "cancelled"})


class ResponseStore(Protocol):
    """Responses and their items. All methods are coroutines; none blocks the event loop.

    Writes are atomic: a response and the items it introduces are saved in one transaction,
    so a failed write leaves nothing half-stored.
    """

    async def save_response(self, response: StoredResponse, new_items: list[Item], *,
                            unless_terminal: bool = False) -> bool:
        """Insert or replace ``response`` and insert ``new_items`` (items carry their ``id``);
        True when written.

        Items already stored under the same id are left as they are (items are immutable).
        With ``unless_terminal``, a stored response whose body's ``status`` is final (one of
        ``TERMINAL_STATUSES``) is left as it is, and so are the new items: returns False.
        Without it, the write always happens (True).
        """
        ...

    async def get_response(self, response_id: str, now: int) -> StoredResponse | None:
        """The response, or None when unknown, deleted or expired at ``now``."""
        ...

    async def get_items(self, item_ids: list[str]) -> dict[str, Item]:
        """The stored items among ``item_ids``, by id (missing ids are simply absent)."""
        ...

    async def load_context(
        self, response_id: str, now: int
    ) -> tuple[StoredResponse, list[Item]] | None:
        """The response and its full context in order: context items, then output items.

        At most two queries whatever the depth of the conversation.
        """
        ...

    async def list_input_items(
        self,
        response_id: str,
        *,
        limit: int,
        order: Literal["asc", "desc"],
        after: str | None,
        before: str | None,
        now: int,
    ) -> ItemPage | None:
        """A page of the response's context items; None when the response is unknown.

        ``order`` "desc" pages the context from its end. ``after`` / ``before`` are item
        ids: the page holds items strictly after / before that id in ``order`` (with only
        ``before``, the ``limit`` items just before it). An unknown cursor gives an empty
        page. ``has_more``: more items lie beyond the page in the direction of travel.
        """
        ...

    async def delete_response(self, response_id: str, now: int) -> bool:
        """Delete the response. Its items go too, unless a later response still builds on
        them (they then stay until no live response needs them); its job and event log go
        in any case. False when it was unknown or already hidden at ``now``."""
        ...

    async def purge_expired(self, now: int) -> int:
        """Delete every response (with its items, job and event log) whose ``expires_at`` is
        past; return the count.

        A hidden response that a live one still builds on keeps its items until that one
        goes (its job and event log go now).
        """
        ...


class JobStore(Protocol):
    """Background jobs and the event logs of background streams.

    A job row lives from ``enqueue`` until ``finish_job`` (or ``reap``, or the deletion of
    its response). A worker that claims it holds a lease that it renews. Workers are named
    by ``register_worker``, and the store can tell whether a registered worker's process
    still lives: a job is reaped only when its lease ran out and its holder is not known to
    be alive (a live process never loses its own jobs, however late its renewals). A reaped
    job is never claimed again: ``reap`` removes it and hands its response id to the caller,
    whose job it is to mark the response failed (a partial stream may already have been
    delivered, so re-running it would contradict it). Jobs are delivered at most once per
    ``enqueue``; the service settles what reap reports.
    """

    async def enqueue(
        self, response: StoredResponse, new_items: list[Item], payload: dict[str, Any]
    ) -> None:
        """Save the (queued) response, its new items and its job in one transaction, and
        wake waiting workers on every replica.

        A job the response already had is replaced: unclaimed, cancel flag cleared, its
        former holder's lease gone (``renew`` then returns False)."""
        ...

    async def register_worker(self) -> str:
        """A new worker name for this process, ``host:pid:random``, known to be alive on
        every replica while this store is open (PostgreSQL: the store holds an advisory lock
        keyed by the name; SQLite: the process lives)."""
        ...

    async def claim(self, worker: str, now: float, lease_seconds: float) -> Job | None:
        """Atomically take the oldest unclaimed job (exactly one worker across all replicas
        gets it), leased to ``worker`` until ``now + lease_seconds``; None when none waits.

        Unclaimed means never claimed: a job whose lease ran out is not taken (see ``reap``).
        None may also mean that every waiting job is being taken by another replica."""
        ...

    async def renew(self, response_id: str, worker: str, now: float, lease_seconds: float) -> bool:
        """Extend ``worker``'s lease to ``now + lease_seconds``; False when the job is gone
        (finished, reaped, its response deleted) or held by another worker. A lease that ran
        out but was not reaped yet can still be renewed by its holder."""
        ...

    async def finish_job(self, response_id: str) -> None:
        """Remove the job (the response row stays); a job already gone is no error."""
        ...

    async def reap(self, now: float) -> list[str]:
        """Remove claimed jobs whose lease ran out (``lease_until < now``) and whose holder
        is not known to be alive, and return their response ids; each id is returned to
        exactly one caller across replicas. Unclaimed jobs are never reaped, however old,
        nor are the jobs of a live registered worker, however late their lease. A holder
        whose name ``register_worker`` did not give counts as dead."""
        ...

    async def request_cancel(self, response_id: str) -> bool:
        """Flag the job for cancellation; False when no job exists for it any more."""
        ...

    async def cancel_requested(self, response_id: str) -> bool:
        """Whether ``request_cancel`` was called for this job."""
        ...

    async def wait_for_jobs(self, timeout: float) -> None:
        """Return when a job may have been enqueued (on any replica) or after ``timeout``.

        Returns at once when an unclaimed job already waits. A write on this store wakes
        waiters at once; one on another replica promptly (PostgreSQL: NOTIFY; SQLite: a
        0.2 s poll), and within one poll (1 s) should a notification be lost. Never raises
        for a database failure (it is logged and the wait runs on until its timeout), so a
        worker loop cannot die here; raises ``RuntimeError`` once the store is closed."""
        ...

    async def append_events(self, response_id: str, events: list[dict[str, Any]]) -> None:
        """Append events (each has a ``sequence_number``) in order, in one transaction, and
        wake followers of this response on every replica.

        The response must be stored. A sequence number already logged keeps its first event
        (the new one is dropped), so a retried append is harmless."""
        ...

    async def read_events(self, response_id: str, after: int) -> list[dict[str, Any]]:
        """Logged events with ``sequence_number > after``, in order."""
        ...

    async def wait_for_events(self, response_id: str, after: int, timeout: float) -> None:
        """Return when an event after ``after`` may exist for the response (or after
        ``timeout``); callers re-read with ``read_events``.

        Returns at once when one already exists. Wake-ups and failures as for
        ``wait_for_jobs``; events of other responses do not wake it."""
        ...


class FileStore(Protocol):
    """Uploaded files. Contents live in the database, in the chunks they were written in, so
    every replica (and every background worker) reads the same files with no shared volume.
    A file is visible only once all of its contents are stored; a row is hidden once its
    ``expires_at`` is past and purged by ``purge_files``."""

    async def save_file(self, file: StoredFile, chunks: AsyncIterable[bytes]) -> None:
        """Store the contents, chunk by chunk as ``chunks`` yields them (each its own short
        write, so a big upload never holds the database's write lock for long), then make
        the file visible. When ``chunks`` raises or a write fails, the error propagates and
        nothing of the file stays visible (what was written is removed, or purged later)."""
        ...

    async def get_file(self, file_id: str, now: int) -> StoredFile | None:
        """The file's metadata, or None when unknown, deleted, expired or still uploading."""
        ...

    async def list_files(
        self, *, purpose: str | None, limit: int, order: Literal["asc", "desc"],
        after: str | None, now: int,
    ) -> FilePage:
        """Visible files by upload order in ``order``, optionally of one ``purpose``;
        ``after`` is a file id: the page starts just beyond it (an unknown or hidden cursor
        gives an empty page). ``has_more``: more files lie beyond the page."""
        ...

    def read_file(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's contents, chunk by chunk in order (check ``get_file`` first: an
        unknown file yields nothing). A file deleted while it is read may end early; the
        caller compares the total with ``StoredFile.bytes``."""
        ...

    async def delete_file(self, file_id: str, now: int) -> bool:
        """Delete the file and its contents; False when unknown or already hidden."""
        ...

    async def purge_files(self, now: int) -> int:
        """Delete every file (and its contents) whose ``expires_at`` is past, uploads that
        never finished included; return the count."""
        ...


class Store(ResponseStore, JobStore, FileStore, Protocol):
    """Durable state: every role, as one store opened on one database."""

    async def aclose(self) -> None:
        """Close the connections (releasing this store's worker locks); idempotent. Every
        other method raises ``RuntimeError`` afterwards."""
        ...
