//! The audit chain against a real Postgres: sealing, tamper detection, export, offline
//! verification, replay into a second database, and read-model checksums.

use std::io::Cursor;

use mpanel_domain::product::ProductEvent;
use mpanel_domain::tenant::TenantEvent;
use mpanel_domain::values::TenantSlug;
use mpanel_projections::audit::{
    export, read_model_checksums, replay_export, verify_database, verify_export, AuditError,
    BreakKind, ExportFilter, ExportLine, ExportScope, VerifyReport, SEALER_NAME,
};
use mpanel_projections::projectors;
use mpanel_projections::runner::{catch_up, load_checkpoint};
use mpanel_projections::status::status;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

mod common;

use common::*;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Every event's position in feed order.
async fn feed_positions(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT global_position FROM events ORDER BY tx_id, global_position")
        .fetch_all(pool)
        .await
        .expect("positions")
}

/// Catches every projector (and the sealer) up to the last event.
async fn settle(pool: &PgPool) {
    common::settle(pool, 100).await;
}

async fn seal_hash_at(pool: &PgPool, position: i64) -> String {
    let hash: Vec<u8> =
        sqlx::query_scalar("SELECT hash FROM event_seals WHERE global_position = $1")
            .bind(position)
            .fetch_one(pool)
            .await
            .expect("seal");
    hex::encode(hash)
}

fn broken_at(report: &VerifyReport) -> (i64, BreakKind) {
    match report {
        VerifyReport::Broken { position, kind, .. } => (*position, *kind),
        VerifyReport::Ok { .. } => panic!("expected a broken chain, got {report:?}"),
    }
}

async fn export_all(pool: &PgPool, filter: &ExportFilter) -> Vec<u8> {
    let mut out = Vec::new();
    export(pool, filter, &mut out).await.expect("export");
    out
}

fn lines(ndjson: &[u8]) -> Vec<ExportLine> {
    ndjson
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("export line"))
        .collect()
}

/// A second, migrated database on the same server, for replays.
struct OtherDatabase {
    name: String,
    pool: PgPool,
}

impl OtherDatabase {
    async fn create(admin: &PgPool) -> Self {
        let name = format!("mpanel_replay_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(admin)
            .await
            .expect("create database");
        let options = admin.connect_options().as_ref().clone().database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .expect("connect");
        sqlx::migrate!("../migrations")
            .run(&pool)
            .await
            .expect("migrate");
        Self { name, pool }
    }

    async fn drop(self, admin: &PgPool) {
        self.pool.close().await;
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(admin)
            .await
            .expect("drop database");
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[sqlx::test(migrations = "../migrations")]
async fn an_untouched_log_verifies_up_to_its_head_and_reports_the_unsealed_tail(pool: PgPool) {
    seed_tenant(&pool, "acme", "pi_acme_1", "acme.example").await;
    settle(&pool).await;
    let positions = feed_positions(&pool).await;
    let head = *positions.last().expect("events");

    let report = verify_database(&pool).await.expect("verify");
    assert_eq!(
        report,
        VerifyReport::Ok {
            head_position: Some(head),
            head_hash: seal_hash_at(&pool, head).await,
            events: positions.len() as u64,
            unsealed_tail: 0,
            first_prev_hash: "0".repeat(64),
        }
    );

    // New events the sealer has not reached yet are a tail, not an error.
    seed_tenant(&pool, "later", "pi_later_1", "later.example").await;
    let VerifyReport::Ok {
        head_position,
        unsealed_tail,
        events,
        ..
    } = verify_database(&pool).await.expect("verify")
    else {
        panic!("an unsealed tail is not a break");
    };
    assert_eq!(head_position, Some(head));
    assert_eq!(events, positions.len() as u64);
    assert_eq!(
        unsealed_tail,
        feed_positions(&pool).await.len() as u64 - events
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn each_kind_of_tampering_is_named_at_the_first_broken_position(pool: PgPool) {
    seed_tenant(&pool, "acme", "pi_acme_1", "acme.example").await;
    settle(&pool).await;
    let positions = feed_positions(&pool).await;
    assert!(positions.len() >= 12);
    assert!(verify_database(&pool).await.expect("verify").is_ok());

    // 1. A forged event slipped into the past: an old transaction id and an unused position,
    //    so it sorts after positions[9] and before everything the sealer did later.
    let (early_tx,): (i64,) =
        sqlx::query_as("SELECT tx_id::text::bigint FROM events WHERE global_position = $1")
            .bind(positions[9])
            .fetch_one(&pool)
            .await
            .expect("tx of an early event");
    let forged = 1_000_000;
    sqlx::query(
        "INSERT INTO events (global_position, tx_id, aggregate_type, aggregate_id, sequence, event_type, \
           event_version, payload, metadata) OVERRIDING SYSTEM VALUE \
         VALUES ($1, $2::bigint::text::xid8, 'Order', $3, 1, 'OrderCancelled', '1', \
           '{\"OrderCancelled\": {\"reason\": \"forged\", \"cancelledAt\": \"2026-11-25T17:00:00Z\"}}', '{\"actor\": \"cli\"}')",
    )
    .bind(forged)
    .bind(early_tx)
    .bind(Uuid::new_v4().to_string())
    .execute(&pool)
    .await
    .expect("forge");
    let report = verify_database(&pool).await.expect("verify");
    assert_eq!(
        broken_at(&report),
        (forged, BreakKind::Inserted),
        "{report:?}"
    );
    // With the sealer's checkpoint reset, the seals that follow it still give it away.
    let saved = load_checkpoint(&pool, SEALER_NAME)
        .await
        .expect("checkpoint");
    sqlx::query("UPDATE checkpoints SET tx_id = '0', position = 0 WHERE subscriber = 'audit'")
        .execute(&pool)
        .await
        .expect("reset");
    assert_eq!(
        broken_at(&verify_database(&pool).await.expect("verify")),
        (forged, BreakKind::Inserted)
    );
    sqlx::query(
        "UPDATE checkpoints SET tx_id = $1::bigint::text::xid8, position = $2 WHERE subscriber = 'audit'",
    )
    .bind(saved.tx_id)
    .bind(saved.position)
    .execute(&pool)
    .await
    .expect("restore");
    // The sealer's checkpoint has passed it, so no catch-up will ever seal it.
    settle(&pool).await;
    assert_eq!(
        broken_at(&verify_database(&pool).await.expect("verify")),
        (forged, BreakKind::Inserted)
    );

    // 2. Deleting an earlier event: now that one is named first.
    sqlx::query("DELETE FROM events WHERE global_position = $1")
        .bind(positions[7])
        .execute(&pool)
        .await
        .expect("delete");
    let report = verify_database(&pool).await.expect("verify");
    assert_eq!(
        broken_at(&report),
        (positions[7], BreakKind::Deleted),
        "{report:?}"
    );

    // 3. Editing a payload before both.
    sqlx::query(
        "UPDATE events SET payload = jsonb_set(payload, '{ProductCreated,name}', '\"Cheap Hosting\"') \
         WHERE global_position = $1",
    )
    .bind(positions[1])
    .execute(&pool)
    .await
    .expect("edit");
    let report = verify_database(&pool).await.expect("verify");
    let VerifyReport::Broken {
        position,
        kind,
        events,
        ..
    } = report
    else {
        panic!("edit not found");
    };
    assert_eq!(
        (position, kind, events),
        (positions[1], BreakKind::Changed, 1)
    );

    // Metadata is sealed too.
    sqlx::query("UPDATE events SET metadata = metadata || '{\"actor\": \"someone\"}' WHERE global_position = $1")
        .bind(positions[0])
        .execute(&pool)
        .await
        .expect("edit metadata");
    assert_eq!(
        broken_at(&verify_database(&pool).await.expect("verify")),
        (positions[0], BreakKind::Changed)
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn rewriting_an_events_seal_breaks_the_chain_at_the_next_event(pool: PgPool) {
    seed_tenant(&pool, "acme", "pi_acme_1", "acme.example").await;
    settle(&pool).await;
    let positions = feed_positions(&pool).await;

    // An attacker edits event 4 and recomputes its seal: event 5's prev_hash gives it away.
    sqlx::query("UPDATE events SET payload = jsonb_set(payload, '{SubscriptionOpened,requiredSteps}', '[]') WHERE global_position = $1")
        .bind(positions[4])
        .execute(&pool)
        .await
        .expect("edit");
    let prev: Vec<u8> =
        sqlx::query_scalar("SELECT prev_hash FROM event_seals WHERE global_position = $1")
            .bind(positions[4])
            .fetch_one(&pool)
            .await
            .expect("prev");
    let event = mpanel_projections::feed::read_after(
        &pool,
        mpanel_projections::Checkpoint::default(),
        100,
        mpanel_projections::feed::Metadata::Include,
    )
    .await
    .expect("events")
    .into_iter()
    .find(|e| e.position == positions[4])
    .expect("event");
    let prev = <[u8; 32]>::try_from(prev.as_slice()).expect("32 bytes");
    let forged = mpanel_projections::audit::seal_event(&prev, &event);
    sqlx::query("UPDATE event_seals SET hash = $2 WHERE global_position = $1")
        .bind(positions[4])
        .bind(forged.as_slice())
        .execute(&pool)
        .await
        .expect("reseal");
    assert_eq!(
        broken_at(&verify_database(&pool).await.expect("verify")),
        (positions[5], BreakKind::ChainBroken)
    );

    // Deleting an event together with its seal is found the same way.
    sqlx::query("DELETE FROM events WHERE global_position = $1")
        .bind(positions[2])
        .execute(&pool)
        .await
        .expect("delete event");
    sqlx::query("DELETE FROM event_seals WHERE global_position = $1")
        .bind(positions[2])
        .execute(&pool)
        .await
        .expect("delete seal");
    assert_eq!(
        broken_at(&verify_database(&pool).await.expect("verify")),
        (positions[3], BreakKind::ChainBroken)
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_reset_sealer_rewalks_the_chain_and_stops_where_the_log_changed(pool: PgPool) {
    seed_tenant(&pool, "acme", "pi_acme_1", "acme.example").await;
    settle(&pool).await;
    let positions = feed_positions(&pool).await;
    let before: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT hash FROM event_seals ORDER BY global_position")
            .fetch_all(&pool)
            .await
            .expect("seals");

    let reset = "UPDATE checkpoints SET tx_id = '0', position = 0 WHERE subscriber = 'audit'";
    sqlx::query(reset).execute(&pool).await.expect("reset");
    settle(&pool).await;
    let after: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT hash FROM event_seals ORDER BY global_position")
            .fetch_all(&pool)
            .await
            .expect("seals");
    assert_eq!(before, after, "existing seals are confirmed, not rewritten");

    sqlx::query("UPDATE events SET payload = jsonb_set(payload, '{OrderPlaced,domain}', '\"evil.example\"') WHERE global_position = $1")
        .bind(positions[3])
        .execute(&pool)
        .await
        .expect("edit");
    sqlx::query(reset).execute(&pool).await.expect("reset");
    let sealer = projectors::all()
        .into_iter()
        .find(|s| s.name() == SEALER_NAME)
        .expect("sealer registered");
    let failure = catch_up(&pool, &sealer, 1)
        .await
        .expect_err("sealer refuses");
    assert_eq!(failure.at, positions[3]);
    let stored = load_checkpoint(&pool, SEALER_NAME)
        .await
        .expect("checkpoint");
    assert_eq!(stored.position, positions[2]);
}

#[sqlx::test(migrations = "../migrations")]
async fn an_export_verifies_offline_and_a_tampered_line_is_named(pool: PgPool) {
    let acme = seed_tenant(&pool, "acme", "pi_acme_1", "acme.example").await;
    seed_tenant(&pool, "other", "pi_other_1", "other.example").await;
    // One more of acme's after the other tenant's, so acme's events are not one stretch.
    commit(
        &pool,
        &[new_event(
            "Product",
            Uuid::new_v5(&acme, b"product"),
            3,
            &ProductEvent::ProductArchived {
                archived_at: at(40),
            },
        )],
        "cli",
    )
    .await;
    settle(&pool).await;
    let positions = feed_positions(&pool).await;
    let VerifyReport::Ok { head_hash, .. } = verify_database(&pool).await.expect("verify") else {
        panic!("untouched log");
    };

    let full = export_all(&pool, &ExportFilter::default()).await;
    let exported = lines(&full);
    assert_eq!(
        exported.iter().map(|l| l.position).collect::<Vec<_>>(),
        positions
    );
    let report = verify_export(Cursor::new(&full), ExportScope::Full).expect("verify export");
    assert_eq!(
        report,
        VerifyReport::Ok {
            head_position: positions.last().copied(),
            head_hash: head_hash.clone(),
            events: positions.len() as u64,
            unsealed_tail: 0,
            first_prev_hash: "0".repeat(64),
        },
        "offline verification arrives at the live head"
    );

    // One edited line: named by its position.
    let mut tampered = exported.clone();
    tampered[6].payload = json!({"JobScheduled": {"forged": true}});
    let text = tampered
        .iter()
        .map(|l| serde_json::to_string(l).expect("line"))
        .collect::<Vec<_>>()
        .join("\n");
    let report = verify_export(Cursor::new(text), ExportScope::Full).expect("verify");
    assert_eq!(broken_at(&report), (positions[6], BreakKind::Changed));

    // One missing line: the next line's prevHash does not follow.
    let mut missing = exported.clone();
    missing.remove(4);
    let text = missing
        .iter()
        .map(|l| serde_json::to_string(l).expect("line"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        broken_at(&verify_export(Cursor::new(text.clone()), ExportScope::Full).expect("verify")),
        (positions[5], BreakKind::ChainBroken)
    );
    assert!(verify_export(Cursor::new(text), ExportScope::SubChain)
        .expect("verify")
        .is_ok());

    // Garbage is an error, not a verdict.
    assert!(matches!(
        verify_export(Cursor::new("{\"position\": 1}\n"), ExportScope::Full),
        Err(AuditError::Malformed { line: 1, .. })
    ));

    // Paging: after a position, in feed order, at most `limit` lines.
    let page = lines(
        &export_all(
            &pool,
            &ExportFilter {
                after: positions[4],
                tenant: None,
                limit: Some(3),
            },
        )
        .await,
    );
    assert_eq!(
        page.iter().map(|l| l.position).collect::<Vec<_>>(),
        positions[5..8].to_vec()
    );
    assert!(matches!(
        export(
            &pool,
            &ExportFilter {
                after: 987_654,
                ..ExportFilter::default()
            },
            &mut Vec::new()
        )
        .await,
        Err(AuditError::UnknownPosition(987_654))
    ));

    // A tenant's export: exactly its aggregates' events, each line still carrying its seal.
    let only_acme = export_all(
        &pool,
        &ExportFilter {
            tenant: Some(acme),
            ..ExportFilter::default()
        },
    )
    .await;
    let acme_lines = lines(&only_acme);
    let acme_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE (aggregate_type, aggregate_id) IN \
           (SELECT aggregate_type, aggregate_id FROM events \
            WHERE aggregate_id = $1::text OR payload -> event_type ->> 'tenantId' = $1::text)",
    )
    .bind(acme)
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(acme_lines.len() as i64, acme_events);
    assert!(acme_lines.len() < exported.len());
    assert_eq!(
        acme_lines.last().map(|l| l.position),
        positions.last().copied()
    );
    assert!(!only_acme.windows(5).any(|w| w == b"other"));
    assert!(
        verify_export(Cursor::new(&only_acme), ExportScope::SubChain)
            .expect("verify")
            .is_ok()
    );
    assert_eq!(
        broken_at(&verify_export(Cursor::new(&only_acme), ExportScope::Full).expect("verify")).1,
        BreakKind::ChainBroken,
        "a sub-chain is not a full chain"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_replayed_export_rebuilds_identical_read_models_and_seals(pool: PgPool) {
    seed_tenant(&pool, "acme", "pi_acme_1", "acme.example").await;
    seed_tenant(&pool, "other", "pi_other_1", "other.example").await;
    settle(&pool).await;
    let full = export_all(&pool, &ExportFilter::default()).await;
    let exported = lines(&full);
    assert!(
        exported.windows(2).any(|w| w[1].position < w[0].position),
        "the seed has a late commit, so feed order is not position order"
    );

    let other = OtherDatabase::create(&pool).await;
    // Small batches, so several transactions are used and the late commit splits one.
    let summary = replay_export(Cursor::new(&full), &other.pool, 4)
        .await
        .expect("replay");
    assert_eq!(summary.events, exported.len() as u64);
    assert!(summary.transactions >= exported.len() as u64 / 4);
    assert!(matches!(
        replay_export(Cursor::new(&full), &other.pool, 4).await,
        Err(AuditError::NotEmpty)
    ));
    settle(&other.pool).await;

    // Same feed order, same events: the same chain.
    assert_eq!(
        feed_positions(&other.pool).await,
        feed_positions(&pool).await
    );
    let original = verify_database(&pool).await.expect("verify");
    let replayed = verify_database(&other.pool).await.expect("verify");
    assert!(original.is_ok());
    assert_eq!(replayed, original);

    // Same read models, and they are not trivially empty.
    let sums = read_model_checksums(&pool).await.expect("checksums");
    assert_eq!(sums.len(), 12);
    assert_eq!(
        read_model_checksums(&other.pool).await.expect("checksums"),
        sums
    );
    for table in [
        "tenants",
        "prices",
        "customers",
        "orders",
        "subscriptions",
        "jobs",
        "dns_records",
        "hosting_accounts",
    ] {
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&other.pool)
            .await
            .expect("count");
        assert!(rows > 0, "{table} is empty");
    }

    // New appends continue after the replayed positions.
    let max: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events")
        .fetch_one(&other.pool)
        .await
        .expect("max");
    let next = commit(
        &other.pool,
        &[new_event(
            "Tenant",
            Uuid::new_v4(),
            1,
            &TenantEvent::TenantRegistered {
                slug: TenantSlug::parse("newcomer").expect("slug"),
                name: "Newcomer".into(),
                registered_at: at(30),
            },
        )],
        "cli",
    )
    .await;
    assert!(next[0] > max);

    // A read model that differs shows up in its table's checksum only.
    sqlx::query("UPDATE jobs SET attempts = attempts + 1 WHERE id = (SELECT id FROM jobs LIMIT 1)")
        .execute(&pool)
        .await
        .expect("drift");
    let drifted = read_model_checksums(&pool).await.expect("checksums");
    let differing: Vec<&String> = sums
        .keys()
        .filter(|table| sums[*table] != drifted[*table])
        .collect();
    assert_eq!(differing, vec!["jobs"]);

    other.drop(&pool).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_tampered_export_is_refused_by_replay(pool: PgPool) {
    seed_tenant(&pool, "acme", "pi_acme_1", "acme.example").await;
    settle(&pool).await;
    let mut exported = lines(&export_all(&pool, &ExportFilter::default()).await);
    let bad = exported[2].position;
    exported[2].metadata = json!({"actor": "mallory"});
    let text = exported
        .iter()
        .map(|l| serde_json::to_string(l).expect("line"))
        .collect::<Vec<_>>()
        .join("\n");
    let other = OtherDatabase::create(&pool).await;
    let result = replay_export(Cursor::new(text), &other.pool, 100).await;
    assert!(
        matches!(result, Err(AuditError::Tampered { line: 3, position, committed: 0 }) if position == bad),
        "{result:?}"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&other.pool)
        .await
        .expect("count");
    assert_eq!(count, 0, "the open batch was rolled back");
    other.drop(&pool).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn status_shows_every_subscriber_with_its_lag(pool: PgPool) {
    seed_tenant(&pool, "acme", "pi_acme_1", "acme.example").await;
    settle(&pool).await;
    let positions = feed_positions(&pool).await;
    let head = *positions.last().expect("events");

    let rows = status(&pool, &["saga"]).await.expect("status");
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "audit",
            "catalog",
            "customers",
            "jobs",
            "orders",
            "provisioning",
            "saga",
            "subscriptions"
        ]
    );
    for row in &rows {
        assert_eq!(row.head_position, Some(head));
        if row.name == "saga" {
            assert_eq!(row.position, 0);
            assert_eq!(row.lag_events, positions.len() as i64);
            assert!(row.lag_seconds >= 0.0);
        } else {
            assert_eq!((row.position, row.lag_events), (head, 0), "{}", row.name);
            assert!(row.lag_seconds.abs() < f64::EPSILON);
            assert!(row.last_error.is_none());
        }
    }
    assert_eq!(
        rows.iter()
            .find(|r| r.name == "audit")
            .map(|r| r.events_processed),
        Some(positions.len() as i64)
    );
}
