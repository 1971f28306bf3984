-- 0002: background jobs and the event logs of background streams (as sqlite/0002).
--
-- worker IS NULL: not claimed yet. A claimed job whose lease_until has passed is reaped
-- (removed), never claimed again. Both tables go with their response row.

CREATE TABLE jobs (
    response_id      TEXT NOT NULL PRIMARY KEY REFERENCES responses (id) ON DELETE CASCADE,
    payload          JSON NOT NULL,              -- as given to enqueue
    worker           TEXT,                       -- NULL until claimed
    lease_until      DOUBLE PRECISION,           -- unix seconds; NULL until claimed
    attempts         INTEGER NOT NULL DEFAULT 0, -- claims so far
    cancel_requested BOOLEAN NOT NULL DEFAULT false,
    created_at       DOUBLE PRECISION NOT NULL   -- unix seconds (server clock); queue order
        DEFAULT extract(epoch FROM clock_timestamp())
);

CREATE INDEX jobs_unclaimed ON jobs (created_at) WHERE worker IS NULL;
CREATE INDEX jobs_lease_until ON jobs (lease_until) WHERE worker IS NOT NULL;

CREATE TABLE events (
    response_id     TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
    sequence_number INTEGER NOT NULL,
    data            JSON NOT NULL,               -- the event
    PRIMARY KEY (response_id, sequence_number)
);
