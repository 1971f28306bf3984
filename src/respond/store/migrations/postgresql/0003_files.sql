-- 0003: uploaded files and their contents (as sqlite/0003).
--
-- Contents are bytea chunks of about 1 MiB: every replica reads the same files with no
-- shared volume, no statement carries more than a chunk, and TOAST keeps the chunks out of
-- the table's main pages. A file row is complete only once all its chunks are stored.

CREATE TABLE files (
    id           TEXT NOT NULL PRIMARY KEY,
    ordinal      BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,  -- upload order, for listings
    filename     TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    bytes        BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    created_at   BIGINT NOT NULL,             -- unix seconds
    expires_at   BIGINT NOT NULL,             -- unix seconds; hidden once <= now
    complete     BOOLEAN NOT NULL DEFAULT false
);

CREATE INDEX files_expires_at ON files (expires_at);

CREATE TABLE file_chunks (
    file_id TEXT NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    data    BYTEA NOT NULL,
    PRIMARY KEY (file_id, seq)
);
