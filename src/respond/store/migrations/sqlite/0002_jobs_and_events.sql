-- 0002: background jobs and the event logs of background streams.
--
-- A job row lives from enqueue until the worker finishes it. worker IS NULL means nobody
-- has claimed it yet; a claimed job whose lease_until has passed is not claimed again but
-- reaped (removed), and the service marks its response failed. Events are the stream events
-- of a background response, in sequence_number order, replayed on any replica. Both go with
-- their response row (ON DELETE CASCADE); a tombstoned or expired row loses them explicitly
-- (see store/sqlite.py).

CREATE TABLE jobs (
    response_id      TEXT NOT NULL PRIMARY KEY REFERENCES responses (id) ON DELETE CASCADE,
    payload          TEXT NOT NULL,              -- JSON, as given to enqueue
    worker           TEXT,                       -- NULL until claimed
    lease_until      REAL,                       -- unix seconds; NULL until claimed
    attempts         INTEGER NOT NULL DEFAULT 0, -- claims so far
    cancel_requested INTEGER NOT NULL DEFAULT 0, -- boolean
    created_at       REAL NOT NULL               -- unix seconds; the queue's order
);

-- Claiming reads the oldest unclaimed job; reaping reads the claimed ones by lease.
CREATE INDEX jobs_unclaimed ON jobs (created_at) WHERE worker IS NULL;
CREATE INDEX jobs_lease_until ON jobs (lease_until) WHERE worker IS NOT NULL;

CREATE TABLE events (
    response_id     TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
    sequence_number INTEGER NOT NULL,
    data            TEXT NOT NULL,               -- the event, JSON
    PRIMARY KEY (response_id, sequence_number)
) WITHOUT ROWID;
