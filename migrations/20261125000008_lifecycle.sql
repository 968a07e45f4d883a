-- Subscription lifecycle (issue #10, docs/adr/0016-subscription-lifecycle.md): the operation a
-- subscription is in, who asked for it and why; what each job does and for which operation;
-- cancelled jobs; suspended accounts.

ALTER TABLE subscriptions
    ADD COLUMN generation        integer NOT NULL DEFAULT 0,
    ADD COLUMN operation         text    NOT NULL DEFAULT 'PROVISION',
    ADD COLUMN pending_steps     text[]  NOT NULL DEFAULT '{}',
    ADD COLUMN status_reason     text,
    ADD COLUMN status_changed_by text;

-- Rows written before this migration: what the order's provisioning still waits for.
UPDATE subscriptions
SET pending_steps = ARRAY(SELECT s FROM unnest(required_steps) AS s
                          WHERE NOT (s = ANY (succeeded_steps)) ORDER BY s)
WHERE status <> 'ACTIVE';

ALTER TABLE jobs
    ADD COLUMN action     text    NOT NULL DEFAULT 'PROVISION',
    ADD COLUMN generation integer NOT NULL DEFAULT 0,
    ADD COLUMN cancelled  boolean NOT NULL DEFAULT false;

ALTER TABLE hosting_accounts ADD COLUMN suspended boolean NOT NULL DEFAULT false;
ALTER TABLE mail_accounts ADD COLUMN suspended boolean NOT NULL DEFAULT false;
