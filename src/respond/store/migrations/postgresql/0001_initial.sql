-- 0001: responses and the items they introduce (the same model as sqlite/0001).
--
-- Documents are stored as json, not jsonb: json keeps the text exactly as written (key order,
-- number spelling, "\u0000" in strings, which jsonb refuses), costs no re-serialisation on
-- the way out, and no query ever looks inside a document. Id lists are text[].

CREATE TABLE responses (
    id                   TEXT NOT NULL PRIMARY KEY,
    body                 JSON NOT NULL,      -- the Response object
    context_ids          TEXT[] NOT NULL,    -- ids of the input context, in order
    output_ids           TEXT[] NOT NULL,    -- ids of the output items, in order
    previous_response_id TEXT,
    created_at           BIGINT NOT NULL,    -- unix seconds
    expires_at           BIGINT NOT NULL     -- unix seconds; hidden once <= now
);

CREATE INDEX responses_expires_at ON responses (expires_at);
CREATE INDEX responses_previous_response_id ON responses (previous_response_id);

CREATE TABLE items (
    id          TEXT NOT NULL PRIMARY KEY,
    response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
    data        JSON NOT NULL               -- the item
);

CREATE INDEX items_response_id ON items (response_id);
