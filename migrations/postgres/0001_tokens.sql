-- Tokens are stored as SHA-256 hashes only; `prefix` names a token in the CLI and logs.
CREATE TABLE tokens (
    id            BIGSERIAL PRIMARY KEY,
    token_hash    TEXT NOT NULL UNIQUE,
    prefix        TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    name          TEXT,
    email         TEXT,
    permissions   TEXT NOT NULL,
    enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    TIMESTAMPTZ NOT NULL,
    created_by    TEXT,
    expires_at    TIMESTAMPTZ,
    last_used_at  TIMESTAMPTZ
);
CREATE INDEX tokens_prefix ON tokens (prefix);
CREATE INDEX tokens_user_id ON tokens (user_id);

-- Every change to a token is announced on channel `memgate_tokens` with the
-- token's hash, so every running memgate drops that cache entry at once,
-- whichever process (CLI, another replica, plain SQL) made the change.
CREATE FUNCTION memgate_notify_token_change() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('memgate_tokens', NEW.token_hash);
        RETURN NEW;
    END IF;
    PERFORM pg_notify('memgate_tokens', OLD.token_hash);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tokens_changed
    AFTER INSERT OR UPDATE OF token_hash, user_id, permissions, enabled, expires_at OR DELETE ON tokens
    FOR EACH ROW EXECUTE FUNCTION memgate_notify_token_change();
