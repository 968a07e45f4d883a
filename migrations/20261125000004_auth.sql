-- Refresh tokens of staff and customer sessions (DESIGN §5, ADR 0008).
--
-- A token is 32 random bytes handed to the client once; only its SHA-256 is kept, so a dump of
-- this table cannot be replayed. Every login starts a family; each refresh marks the presented
-- token rotated (replaced_by points at its successor) and adds the next one to the same family.
-- Presenting a rotated token again is reuse: the whole family is revoked. Access tokens carry the
-- family as `sid`, so a revoked family also stops its access tokens at once.
CREATE TABLE refresh_tokens
(
    id          uuid PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   uuid        NOT NULL,
    token_hash  bytea       NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    issued_at   timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    rotated_at  timestamptz,
    revoked_at  timestamptz,
    replaced_by uuid REFERENCES refresh_tokens (id) ON DELETE SET NULL,
    CHECK (expires_at > issued_at),
    CHECK (replaced_by IS NULL OR rotated_at IS NOT NULL)
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

-- A super_admin belongs to no tenant; every other role to exactly one.
ALTER TABLE users
    ADD CONSTRAINT users_tenant_matches_role
        CHECK ((role = 'super_admin') = (tenant_id IS NULL));
