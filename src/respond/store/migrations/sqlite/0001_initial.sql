-- 0001: responses and the items they introduce.
--
-- Items are stored once, as the JSON the wire shows, and belong to the response that first
-- introduced them (input or output); deleting that response row deletes them (ON DELETE
-- CASCADE). A response row records the ordered ids of its context and its output as JSON
-- arrays, so any conversation is rebuilt from one row and one lookup of its items.
-- A row is hidden once expires_at <= now; see store/sqlite.py for deletion and purging.
-- Background jobs (status columns, an events table) come in a later migration.

CREATE TABLE responses (
    id                   TEXT NOT NULL PRIMARY KEY,
    body                 TEXT NOT NULL,     -- the Response object, JSON
    context_ids          TEXT NOT NULL,     -- JSON array: ids of the input context, in order
    output_ids           TEXT NOT NULL,     -- JSON array: ids of the output items, in order
    previous_response_id TEXT,
    created_at           INTEGER NOT NULL,  -- unix seconds
    expires_at           INTEGER NOT NULL   -- unix seconds
);

CREATE INDEX responses_expires_at ON responses (expires_at);
CREATE INDEX responses_previous_response_id ON responses (previous_response_id);

CREATE TABLE items (
    id          TEXT NOT NULL PRIMARY KEY,
    response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
    data        TEXT NOT NULL              -- the item, JSON
);

CREATE INDEX items_response_id ON items (response_id);
