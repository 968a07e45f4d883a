-- The feed runners' wake-up moves out of the appending transaction (docs/adr/0017).
--
-- A NOTIFY inside a transaction takes Postgres's cluster-wide notify lock at commit, so every
-- appending commit queued behind every other one: at 16 clients it halved the insert rate of
-- the raw baseline. The command bus now rings the runners after its appends, coalesced, from a
-- task of its own (adapters/src/bus.rs, `Doorbell`); anything else that appends (an import, a
-- test) is picked up by the runners' polling.
DROP TRIGGER IF EXISTS events_notify ON events;
DROP FUNCTION IF EXISTS mpanel_notify_events();
