-- Read models of what provisioning made real, built from job events (issue: provisioning).

-- Every domain a subscription provisions, with where each step stands.
CREATE TABLE domains
(
    domain          text PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    subscription_id uuid        NOT NULL,
    order_id        uuid        NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX domains_tenant ON domains (tenant_id);
CREATE INDEX domains_subscription ON domains (subscription_id);

CREATE TABLE dns_zones
(
    zone            text PRIMARY KEY,
    domain          text        NOT NULL,
    tenant_id       uuid        NOT NULL,
    subscription_id uuid        NOT NULL,
    job_id          uuid        NOT NULL,
    updated_at      timestamptz NOT NULL
);

CREATE TABLE dns_records
(
    zone        text    NOT NULL,
    name        text    NOT NULL,
    record_type text    NOT NULL,
    ttl         integer NOT NULL,
    contents    text[]  NOT NULL,
    PRIMARY KEY (zone, name, record_type)
);

CREATE TABLE hosting_accounts
(
    domain          text PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    subscription_id uuid        NOT NULL,
    job_id          uuid        NOT NULL,
    server          text        NOT NULL,
    system_user     text        NOT NULL,
    web_root        text        NOT NULL,
    vhost_path      text        NOT NULL,
    updated_at      timestamptz NOT NULL
);

CREATE TABLE mail_accounts
(
    address         text PRIMARY KEY,
    domain          text        NOT NULL,
    tenant_id       uuid        NOT NULL,
    subscription_id uuid        NOT NULL,
    job_id          uuid        NOT NULL,
    server          text        NOT NULL,
    maildir         text        NOT NULL,
    updated_at      timestamptz NOT NULL
);
