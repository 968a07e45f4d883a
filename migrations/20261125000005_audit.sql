-- Tamper evidence for the event log (DESIGN §6, docs/EVENTS.md "Canonical bytes").
--
-- The audit sealer (a feed subscriber named `audit`) stores one seal per event, in feed order
-- (tx_id, global_position): hash = sha256(prev_hash || canonical bytes of the event), where
-- prev_hash is the hash of the previous seal in feed order (32 zero bytes for the first).
-- Changing, deleting or slipping in an event below the sealer's checkpoint breaks the chain,
-- and `mpanel events verify` names the first position where it breaks.
--
-- Seals are written in the sealer's transaction together with its checkpoint; nothing else
-- writes here. The table is not a read model: do not truncate it when rebuilding read models
-- (the sealer re-derives and compares existing seals when its checkpoint is reset).
CREATE TABLE event_seals
(
    global_position bigint PRIMARY KEY,
    tx_id           xid8        NOT NULL,
    hash            bytea       NOT NULL CHECK (length(hash) = 32),
    prev_hash       bytea       NOT NULL CHECK (length(prev_hash) = 32),
    sealed_at       timestamptz NOT NULL DEFAULT now()
);

-- Seals are walked (and the previous one looked up) in feed order.
CREATE UNIQUE INDEX event_seals_feed ON event_seals (tx_id, global_position);
