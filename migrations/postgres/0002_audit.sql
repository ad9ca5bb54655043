-- One row per decision worth keeping (DESIGN.md §6). `event_id` makes replays
-- from the on-disk spool idempotent.
CREATE TABLE audit_events (
    id            BIGSERIAL PRIMARY KEY,
    event_id      TEXT NOT NULL UNIQUE,
    time          TIMESTAMPTZ NOT NULL,
    event         TEXT NOT NULL,
    success       BOOLEAN NOT NULL,
    user_id       TEXT,
    token_prefix  TEXT,
    ip            TEXT,
    user_agent    TEXT,
    method        TEXT,
    path          TEXT,
    mcp_method    TEXT,
    tool          TEXT,
    reason        TEXT,
    request_id    TEXT
);
CREATE INDEX audit_events_time ON audit_events (time);
CREATE INDEX audit_events_user_time ON audit_events (user_id, time);

ALTER TABLE tokens ADD COLUMN rate_limit_rps INTEGER;
