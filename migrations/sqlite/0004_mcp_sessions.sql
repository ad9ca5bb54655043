-- MCP session ownership (DESIGN.md §5), shared by every replica: the user who
-- created a session owns it, whichever replica the next request reaches.
CREATE TABLE mcp_sessions (
    session_id  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    last_seen   TEXT NOT NULL
);
CREATE INDEX mcp_sessions_last_seen ON mcp_sessions (last_seen);
