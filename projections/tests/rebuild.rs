//! Rebuilding read models beside the live ones, against a real Postgres: identical results,
//! readers never see a half-built model, live runners carry on after the swap on the new
//! tables, a failing projector leaves the live model untouched.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mpanel_projections::audit::read_model_checksums;
use mpanel_projections::rebuild::{self, RebuildError, RebuildOptions};
use mpanel_projections::runner::{self, load_checkpoint, RunnerConfig};
use mpanel_projections::{projectors, Checkpoint};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::watch;

mod common;

use common::seed_tenant;

async fn seed(pool: &PgPool, from: usize, to: usize) {
    for i in from..to {
        seed_tenant(
            pool,
            &format!("tenant-{i}"),
            &format!("pi_{i}"),
            &format!("t{i}.example"),
        )
        .await;
    }
}

/// The head in feed order.
async fn head(pool: &PgPool) -> Checkpoint {
    common::log_head(pool).await.expect("head")
}

/// Catches every projector up to the head.
async fn settle(pool: &PgPool) {
    common::settle(pool, 500).await;
}

/// Waits until every projector's checkpoint (moved by live runners) is at the head.
async fn wait_for_live(pool: &PgPool) {
    let head = head(pool).await;
    for _ in 0..1000 {
        let mut done = true;
        for sub in projectors::all() {
            done &= load_checkpoint(pool, sub.name()).await.expect("checkpoint") == head;
        }
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("live runners did not reach the head");
}

async fn index_names(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT tablename::text, indexname::text FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .expect("indexes")
}

async fn leftovers(pool: &PgPool) -> (Vec<String>, Vec<String>) {
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'rebuild\\_%' OR nspname LIKE 'retired\\_%' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("schemas");
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT subscriber FROM checkpoints WHERE subscriber LIKE '%#rebuild'")
            .fetch_all(pool)
            .await
            .expect("checkpoints");
    (schemas, rows)
}

async fn saga_checkpoint(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT tx_id::text::bigint, position FROM checkpoints WHERE subscriber = 'saga'",
    )
    .fetch_one(pool)
    .await
    .expect("saga checkpoint")
}

fn without_seals(mut sums: BTreeMap<String, String>) -> BTreeMap<String, String> {
    sums.remove("event_seals");
    sums
}

#[sqlx::test(migrations = "../migrations")]
async fn rebuilding_all_gives_identical_read_models_and_leaves_the_saga_alone(pool: PgPool) {
    seed(&pool, 0, 60).await;
    settle(&pool).await;
    // The saga sits somewhere in the middle; a rebuild must not move it.
    sqlx::query("INSERT INTO checkpoints (subscriber, tx_id, position) VALUES ('saga', '5', 7)")
        .execute(&pool)
        .await
        .expect("saga checkpoint");
    let before = read_model_checksums(&pool).await.expect("checksums");
    let indexes = index_names(&pool).await;
    let seals: i64 = sqlx::query_scalar("SELECT count(*) FROM event_seals")
        .fetch_one(&pool)
        .await
        .expect("seals");

    let reports = rebuild::rebuild_all(
        &pool,
        &rebuild::select("all").expect("all"),
        &RebuildOptions::default(),
    )
    .await
    .expect("rebuild all");
    for r in &reports {
        eprintln!(
            "rebuilt {}: {} events in {:.3} s ({:.0} events/s)",
            r.name, r.events, r.seconds, r.events_per_second
        );
    }
    let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "catalog",
            "customers",
            "orders",
            "subscriptions",
            "jobs",
            "provisioning"
        ]
    );
    let head = head(&pool).await;
    assert!(reports.iter().all(|r| r.position == head.position));

    assert_eq!(
        read_model_checksums(&pool).await.expect("checksums"),
        before
    );
    assert_eq!(
        index_names(&pool).await,
        indexes,
        "indexes keep their names"
    );
    assert_eq!(saga_checkpoint(&pool).await, (5, 7));
    let (schemas, rows) = leftovers(&pool).await;
    assert!(
        schemas.is_empty() && rows.is_empty(),
        "{schemas:?} {rows:?}"
    );
    for r in &reports {
        assert_eq!(
            load_checkpoint(&pool, &r.name).await.expect("checkpoint"),
            head
        );
    }
    let seals_after: i64 = sqlx::query_scalar("SELECT count(*) FROM event_seals")
        .fetch_one(&pool)
        .await
        .expect("seals");
    assert_eq!(seals_after, seals, "the sealer is not rebuilt");
}

#[sqlx::test(migrations = "../migrations")]
async fn readers_keep_being_served_and_live_runners_carry_on_on_the_new_tables(test_pool: PgPool) {
    // The test pool has 5 connections; every live runner's listener holds one.
    let pool = PgPoolOptions::new()
        .max_connections(30)
        .connect_with(test_pool.connect_options().as_ref().clone())
        .await
        .expect("pool");
    seed(&pool, 0, 40).await;
    settle(&pool).await;
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(before, 40);

    // Live runners for every projector, as `mpanel serve` runs them.
    let (stop, shutdown) = watch::channel(false);
    let config = RunnerConfig {
        poll_interval: Duration::from_millis(50),
        standby_interval: Duration::from_millis(100),
        ..RunnerConfig::default()
    };
    let runners: Vec<_> = projectors::all()
        .into_iter()
        .map(|sub| tokio::spawn(runner::run(pool.clone(), sub, config, shutdown.clone())))
        .collect();

    // A reader on ONE connection, so its cached prepared statement is reused across the swap.
    let reader_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .expect("reader pool");
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (pool, done) = (reader_pool.clone(), done.clone());
        tokio::spawn(async move {
            let mut counts = vec![];
            while !done.load(Ordering::SeqCst) {
                let n: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM orders")
                    .fetch_one(&pool)
                    .await;
                counts.push(n.map_err(|e| e.to_string()));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            counts
        })
    };
    // A writer: orders keep arriving during the rebuild.
    let writer = {
        let (pool, done) = (pool.clone(), done.clone());
        tokio::spawn(async move {
            let mut i = 1000;
            while !done.load(Ordering::SeqCst) {
                seed(&pool, i, i + 1).await;
                i += 1;
            }
            i - 1000
        })
    };

    let options = RebuildOptions {
        keep_old: true,
        batch_size: 100,
        ..RebuildOptions::default()
    };
    let orders = rebuild::select("orders").expect("orders");
    let report = rebuild::rebuild(&pool, Arc::clone(&orders[0]), &options)
        .await
        .expect("rebuild orders");
    tokio::time::sleep(Duration::from_millis(200)).await;
    done.store(true, Ordering::SeqCst);
    let written = writer.await.expect("writer");
    let counts = reader.await.expect("reader");
    assert!(written > 0, "the writer ran during the rebuild");
    assert!(counts.len() > 10, "the reader ran during the rebuild");
    for n in &counts {
        let n = n.as_ref().expect("no reader query failed");
        assert!(*n >= before, "a reader saw {n} orders, fewer than {before}");
    }

    // Live runners carry on, on the new tables: everything written is projected there.
    let total = 40 + written;
    wait_for_live(&pool).await;
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&reader_pool)
        .await
        .expect("count");
    assert_eq!(live, i64::try_from(total).expect("small"));
    let retired = report.retired_schema.expect("kept");
    let old: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {retired}.orders"))
        .fetch_one(&pool)
        .await
        .expect("retired count");
    assert!(
        old < live,
        "new events went to the new table ({live}), not the retired one ({old})"
    );
    // One more order after the swap settled reaches the new table through the live runner, and
    // the reader's cached statement sees it.
    seed(&pool, 5000, 5001).await;
    wait_for_live(&pool).await;
    let live_after: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&reader_pool)
        .await
        .expect("count");
    assert_eq!(live_after, live + 1);

    stop.send(true).expect("stop runners");
    for r in runners {
        r.await.expect("runner");
    }
    // The swapped model equals one built from scratch now.
    let live_sums = without_seals(read_model_checksums(&pool).await.expect("sums"));
    rebuild::rebuild(&pool, Arc::clone(&orders[0]), &RebuildOptions::default())
        .await
        .expect("second rebuild");
    assert_eq!(
        without_seals(read_model_checksums(&pool).await.expect("sums")),
        live_sums
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_projector_failing_during_a_rebuild_leaves_the_live_model_untouched(pool: PgPool) {
    seed(&pool, 0, 5).await;
    settle(&pool).await;
    let before = read_model_checksums(&pool).await.expect("checksums");
    let checkpoint = load_checkpoint(&pool, "orders").await.expect("checkpoint");
    // An event the orders projector cannot decode, after the live one passed (it is not running).
    let poison: i64 = sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('Order', '6f1c1c4e-4a43-4a8e-9f57-1d3d8f0c0c01', 1, 'OrderPlaced', '1', '{\"OrderPlaced\": {\"nonsense\": true}}', '{}') \
         RETURNING global_position",
    )
    .fetch_one(&pool)
    .await
    .expect("poison");

    let orders = rebuild::select("orders").expect("orders");
    let error = rebuild::rebuild(&pool, Arc::clone(&orders[0]), &RebuildOptions::default())
        .await
        .expect_err("the rebuild fails");
    match &error {
        RebuildError::Failed { name, position, .. } => {
            assert_eq!((name.as_str(), *position), ("orders", poison));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(error.to_string().contains(&format!("position {poison}")));
    assert_eq!(
        read_model_checksums(&pool).await.expect("checksums"),
        before
    );
    assert_eq!(
        load_checkpoint(&pool, "orders").await.expect("checkpoint"),
        checkpoint
    );
    let (schemas, rows) = leftovers(&pool).await;
    assert!(
        schemas.is_empty() && rows.is_empty(),
        "{schemas:?} {rows:?}"
    );
}

#[test]
fn the_sealer_and_unknown_names_are_refused() {
    assert!(matches!(
        rebuild::select("audit"),
        Err(RebuildError::NotAReadModel(_))
    ));
    assert!(matches!(
        rebuild::select("nope"),
        Err(RebuildError::UnknownProjector(..))
    ));
    let all: Vec<&str> = rebuild::select("all")
        .expect("all")
        .iter()
        .map(|p| p.name())
        .collect();
    assert!(!all.contains(&"audit"));
}
