-- Every login attempt, successful or not, for security review (issue: staff API hardening).
-- No password, hash or token is ever stored here; the e-mail is what was presented (lowercased
-- when it parsed as an address), user_id is set only when it matched a user.
CREATE TABLE login_audit
(
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email        text        NOT NULL,
    user_id      uuid,
    succeeded    boolean     NOT NULL,
    attempted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_audit_email ON login_audit (email, attempted_at DESC);
