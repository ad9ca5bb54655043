-- How each audited request authenticated: token (memgate's own), jwt or
-- introspection (OAuth access tokens); empty for rows written before.
ALTER TABLE audit_events ADD COLUMN auth_method TEXT;
