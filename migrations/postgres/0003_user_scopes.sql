-- Every mem0 scope a user has used besides their own user_id (`auto` isolation's
-- project_{slug}_{hash}), so `memgate user export|delete` can find memories
-- that memgate cannot derive from the user id alone. Written in batches by the
-- proxy (src/scopes.rs); `last_seen` is bumped at most once per interval.
CREATE TABLE user_scopes (
    user_id     TEXT NOT NULL,
    scope       TEXT NOT NULL,
    first_seen  TIMESTAMPTZ NOT NULL,
    last_seen   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, scope)
);
