-- The event store: postgres-es's `events` table (payload and metadata as jsonb) plus the
-- columns of the durable feed (DESIGN §3). Append-only: no UPDATE or DELETE ever runs here.
CREATE TABLE events
(
    aggregate_type  text                         NOT NULL,
    aggregate_id    text                         NOT NULL,
    sequence        bigint CHECK (sequence >= 0) NOT NULL,
    event_type      text                         NOT NULL,
    event_version   text                         NOT NULL,
    payload         jsonb                        NOT NULL,
    metadata        jsonb                        NOT NULL,
    global_position bigint GENERATED ALWAYS AS IDENTITY,
    tx_id           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- The feed reads in (tx_id, global_position) order from a checkpoint.
CREATE UNIQUE INDEX events_feed ON events (tx_id, global_position);
CREATE UNIQUE INDEX events_global_position ON events (global_position);

-- Wake feed runners after each appending statement. Notifications are delivered at commit and
-- folded per transaction; a lost one costs latency only (runners also poll).
CREATE FUNCTION mpanel_notify_events() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('mpanel_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION mpanel_notify_events();

-- One row per feed subscriber (projector, saga, ...): where it is, and what went wrong last.
CREATE TABLE checkpoints
(
    subscriber       text PRIMARY KEY,
    tx_id            xid8        NOT NULL DEFAULT '0',
    position         bigint      NOT NULL DEFAULT 0,
    events_processed bigint      NOT NULL DEFAULT 0,
    last_error       text,
    last_error_at    timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
