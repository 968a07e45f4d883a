-- Read models: projections of the event log, served by the API. They can be dropped and
-- rebuilt from the log at any time; nothing here is the truth.

CREATE TABLE tenants
(
    id            uuid PRIMARY KEY,
    slug          text        NOT NULL UNIQUE,
    name          text        NOT NULL,
    registered_at timestamptz NOT NULL
);

CREATE TABLE products
(
    id          uuid PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    name        text        NOT NULL,
    description text        NOT NULL,
    plan        text[]      NOT NULL,
    archived    boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX products_tenant ON products (tenant_id);

CREATE TABLE prices
(
    id           uuid PRIMARY KEY,
    product_id   uuid        NOT NULL,
    tenant_id    uuid        NOT NULL,
    amount_minor bigint      NOT NULL,
    currency     text        NOT NULL,
    interval     text        NOT NULL,
    active       boolean     NOT NULL DEFAULT true,
    added_at     timestamptz NOT NULL
);
CREATE INDEX prices_product ON prices (product_id);

CREATE TABLE customers
(
    id             uuid PRIMARY KEY,
    tenant_id      uuid        NOT NULL,
    email          text        NOT NULL,
    first_order_id uuid        NOT NULL,
    orders_count   integer     NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL,
    UNIQUE (tenant_id, email)
);

CREATE TABLE orders
(
    id              uuid PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    customer_id     uuid        NOT NULL,
    customer_email  text        NOT NULL,
    product_id      uuid        NOT NULL,
    product_name    text        NOT NULL,
    price_id        uuid        NOT NULL,
    amount_minor    bigint      NOT NULL,
    currency        text        NOT NULL,
    interval        text        NOT NULL,
    domain          text,
    payment_ref     text        NOT NULL,
    subscription_id uuid        NOT NULL,
    status          text        NOT NULL,
    placed_at       timestamptz NOT NULL,
    fulfilled_at    timestamptz,
    cancelled_at    timestamptz,
    cancel_reason   text
);
CREATE INDEX orders_tenant_placed ON orders (tenant_id, placed_at DESC);

CREATE TABLE subscriptions
(
    id              uuid PRIMARY KEY,
    order_id        uuid        NOT NULL,
    tenant_id       uuid        NOT NULL,
    customer_id     uuid        NOT NULL,
    domain          text,
    status          text        NOT NULL,
    required_steps  text[]      NOT NULL,
    succeeded_steps text[]      NOT NULL DEFAULT '{}',
    failed_step     text,
    last_error      text,
    opened_at       timestamptz NOT NULL,
    activated_at    timestamptz,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX subscriptions_tenant ON subscriptions (tenant_id);

CREATE TABLE jobs
(
    id               uuid PRIMARY KEY,
    subscription_id  uuid        NOT NULL,
    order_id         uuid        NOT NULL,
    tenant_id        uuid        NOT NULL,
    step             text        NOT NULL,
    domain           text,
    status           text        NOT NULL,
    series           integer     NOT NULL DEFAULT 0,
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL,
    due_at           timestamptz,
    lease_expires_at timestamptz,
    worker           text,
    last_error       text,
    outcome          jsonb,
    scheduled_at     timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX jobs_subscription ON jobs (subscription_id);
CREATE INDEX jobs_due ON jobs (due_at) WHERE status IN ('SCHEDULED', 'RETRY_WAITING');

-- Staff and customer logins. Credentials are not business events and hold secrets (hashes),
-- so they live in a plain table rather than the log (ADR 0006).
CREATE TABLE users
(
    id            uuid PRIMARY KEY,
    tenant_id     uuid,
    email         text        NOT NULL UNIQUE,
    role          text        NOT NULL CHECK (role IN ('super_admin', 'admin', 'support', 'auditor', 'customer')),
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
