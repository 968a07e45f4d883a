-- The due-job sweeper and lifecycle lookups by subscription read only what is live.
--
-- The sweeper (adapters/src/worker.rs, `due_jobs`) runs every second and also looks for
-- RUNNING jobs whose lease expired; no index covered that branch, so every sweep read the
-- whole `jobs` table — every job ever run, three per order — which grows without bound (a
-- year of orders makes it a continuous scan). The partial index holds only the jobs that are
-- not finished; the sweeper's query names the same predicate.
CREATE INDEX jobs_unfinished ON jobs (due_at)
    WHERE status IN ('SCHEDULED', 'RETRY_WAITING', 'RUNNING') AND NOT cancelled;

-- A lifecycle change (suspend, terminate) acts on a subscription's zone and accounts by
-- subscription id (projections/src/projectors/provisioning.rs, `apply_change`).
CREATE INDEX dns_zones_subscription ON dns_zones (subscription_id);
CREATE INDEX hosting_accounts_subscription ON hosting_accounts (subscription_id);
CREATE INDEX mail_accounts_subscription ON mail_accounts (subscription_id);
