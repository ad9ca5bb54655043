-- Tokens are stored as SHA-256 hashes only; `prefix` names a token in the CLI and logs.
CREATE TABLE tokens (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash    TEXT NOT NULL UNIQUE,
    prefix        TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    name          TEXT,
    email         TEXT,
    permissions   TEXT NOT NULL,
    enabled       BOOLEAN NOT NULL DEFAULT 1,
    created_at    TEXT NOT NULL,
    created_by    TEXT,
    expires_at    TEXT,
    last_used_at  TEXT
);
CREATE INDEX tokens_prefix ON tokens (prefix);
CREATE INDEX tokens_user_id ON tokens (user_id);

-- Every change to a token is logged here by triggers, so a running memgate can
-- poll one cheap indexed query and drop exactly the cache entries that changed,
-- whichever process (CLI, another server) made the change.
CREATE TABLE token_changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash  TEXT NOT NULL,
    changed_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TRIGGER tokens_changed_insert AFTER INSERT ON tokens
BEGIN
    INSERT INTO token_changes (token_hash) VALUES (NEW.token_hash);
END;
CREATE TRIGGER tokens_changed_update AFTER UPDATE OF token_hash, user_id, permissions, enabled, expires_at ON tokens
BEGIN
    INSERT INTO token_changes (token_hash) VALUES (OLD.token_hash);
END;
CREATE TRIGGER tokens_changed_delete AFTER DELETE ON tokens
BEGIN
    INSERT INTO token_changes (token_hash) VALUES (OLD.token_hash);
END;
