"""Wake-ups behind ``wait_for_jobs`` and ``wait_for_events``, shared by the store adapters.

Rules:
- A waiter is registered *before* its condition is checked against the database, so a write
  that commits after the check always finds it: no wake-up is lost between the check and
  the wait.
- Writes through this store wake its waiters directly, right after they commit. Writes by
  other processes arrive through the adapter (LISTEN/NOTIFY on PostgreSQL) and through
  ``probe``, which a poller runs every ``interval`` seconds while anyone waits (and only
  then), so a lost notification delays a waiter by one interval instead of hanging it.
- Event waiters are woken only by an event after the one they have seen, so a writer's own
  notification that arrives late does not wake a follower that has already read it.
- A wake-up means "may have happened": callers re-read. Waiting never fails on a database
  error: the check or probe is logged and the wait goes on until a wake-up or its timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from respond.errors import ServerError

log = logging.getLogger(__name__)

# probe(watched: response id -> lowest ``after`` waited on, jobs: whether anyone waits for
# jobs) -> (an unclaimed job exists, response id -> its last sequence number or None), or
# None when nothing can have changed since the previous probe.
Probe = Callable[[dict[str, int], bool], Awaitable[tuple[bool, dict[str, int | None]] | None]]


class Wakeups:
    def __init__(self, probe: Probe, interval: float) -> None:
        self._probe = probe
        self._interval = interval
        self._jobs: set[asyncio.Future[None]] = set()
        self._events: dict[str, dict[asyncio.Future[None], int]] = {}
        self._poller: asyncio.Task[None] | None = None

    # -- writers -----------------------------------------------------------------------------

    def jobs_enqueued(self) -> None:
        for waiter in self._jobs:
            _settle(waiter)

    def events_appended(self, response_id: str, last: int | None) -> None:
        """Events up to ``last`` exist for the response (None: unknown, wake every follower)."""
        waiters = self._events.get(response_id)
        if waiters:
            for waiter, after in waiters.items():
                if last is None or last > after:
                    _settle(waiter)

    def wake_all(self) -> None:
        """Wake every waiter (after notifications may have been lost)."""
        self.jobs_enqueued()
        for waiters in self._events.values():
            for waiter in waiters:
                _settle(waiter)

    # -- waiters -----------------------------------------------------------------------------

    async def wait_for_jobs(self, timeout: float, check: Callable[[], Awaitable[bool]]) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._jobs.add(waiter)
        try:
            await self._wait(waiter, timeout, check)
        finally:
            self._jobs.discard(waiter)

    async def wait_for_events(
        self, response_id: str, after: int, timeout: float, check: Callable[[], Awaitable[bool]]
    ) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._events.setdefault(response_id, {})[waiter] = after
        try:
            await self._wait(waiter, timeout, check)
        finally:
            waiters = self._events.get(response_id)
            if waiters is not None:
                waiters.pop(waiter, None)
                if not waiters:
                    del self._events[response_id]

    async def _wait(
        self, waiter: asyncio.Future[None], timeout: float, check: Callable[[], Awaitable[bool]]
    ) -> None:
        if timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        timer = loop.call_later(timeout, _settle, waiter)
        try:
            self._ensure_poller()
            try:
                if await check():
                    return
            except ServerError:
                log.warning("checking the store before waiting failed; waiting anyway",
                            exc_info=True)
            await waiter
        finally:
            timer.cancel()

    # -- the poller ----------------------------------------------------------------------------

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(), name="respond-store-poller")

    async def _poll(self) -> None:
        """Probe while anyone waits; stop at the first tick with no waiter."""
        while True:
            await asyncio.sleep(self._interval)
            if not self._jobs and not self._events:
                return
            watched = {rid: min(waiters.values()) for rid, waiters in self._events.items()}
            try:
                found = await self._probe(watched, bool(self._jobs))
            except Exception:  # the poller must outlive a database hiccup
                log.warning("polling the store for new jobs and events failed", exc_info=True)
                continue
            if found is None:
                continue
            jobs, lasts = found
            if jobs:
                self.jobs_enqueued()
            for response_id, last in lasts.items():
                if last is not None:
                    self.events_appended(response_id, last)

    async def aclose(self) -> None:
        """Stop polling and release every waiter."""
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    raise
            self._poller = None
        self.wake_all()


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
