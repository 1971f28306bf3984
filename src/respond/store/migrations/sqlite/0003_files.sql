-- 0003: uploaded files (POST /files) and their contents.
--
-- Contents are stored in the database, in chunks of about 1 MiB (file_chunks), so every
-- replica and background worker reads the same files without a shared volume, a file goes
-- with its metadata in one DELETE (ON DELETE CASCADE), and neither an upload nor a download
-- ever holds a whole file in memory. A file row is written first with complete = 0 and an
-- expires_at a day ahead, its chunks one short transaction each, then complete = 1 and its
-- real expires_at: readers see complete files only, and an upload that died half-way is
-- purged with the expired files. file_chunks keeps its rowid (no WITHOUT ROWID): its rows
-- are big, which WITHOUT ROWID tables handle badly.

CREATE TABLE files (
    ordinal      INTEGER PRIMARY KEY,        -- the rowid: upload order, which listings follow
    id           TEXT NOT NULL UNIQUE,
    filename     TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    bytes        INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    created_at   INTEGER NOT NULL,           -- unix seconds
    expires_at   INTEGER NOT NULL,           -- unix seconds; hidden once <= now
    complete     INTEGER NOT NULL DEFAULT 0  -- boolean: all chunks are stored
);

CREATE INDEX files_expires_at ON files (expires_at);

CREATE TABLE file_chunks (
    file_id TEXT NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,                -- 0, 1, 2... in content order
    data    BLOB NOT NULL,
    PRIMARY KEY (file_id, seq)
);
