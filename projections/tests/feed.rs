//! The feed's delivery guarantees, against a real Postgres (`#[sqlx::test]` gives each test a
//! fresh database with the migrations applied).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mpanel_projections::feed::read_after;
use mpanel_projections::runner::{self, catch_up, load_checkpoint, RunnerConfig, Subscriber};
use mpanel_projections::{Checkpoint, FeedEvent, Projector, SubscriberError};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// Records every event it sees into `seen`, in the runner's transaction.
struct Recorder {
    name: &'static str,
    delay: Duration,
    fail_once_at: Option<(i64, Arc<AtomicBool>)>,
}

impl Recorder {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            delay: Duration::ZERO,
            fail_once_at: None,
        }
    }
}

#[async_trait]
impl Projector for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }

    fn tables(&self) -> &'static [&'static str] {
        &["seen"]
    }

    async fn apply(&self, tx: &mut PgConnection, event: &FeedEvent) -> Result<(), SubscriberError> {
        sqlx::query("INSERT INTO seen (subscriber, position) VALUES ($1, $2)")
            .bind(self.name)
            .bind(event.position)
            .execute(&mut *tx)
            .await?;
        if let Some((at, fired)) = &self.fail_once_at {
            if *at == event.position && !fired.swap(true, Ordering::SeqCst) {
                return Err(SubscriberError::Other("simulated crash".into()));
            }
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(())
    }
}

async fn setup(pool: &PgPool) {
    sqlx::query("CREATE TABLE seen (seq bigserial PRIMARY KEY, subscriber text NOT NULL, position bigint NOT NULL)")
        .execute(pool)
        .await
        .expect("create seen");
}

async fn append(conn: &mut PgConnection, aggregate_id: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('Test', $1, 1, 'Tested', '1', '{}', '{}') RETURNING global_position",
    )
    .bind(aggregate_id)
    .fetch_one(conn)
    .await
    .expect("append")
}

async fn append_committed(pool: &PgPool, aggregate_id: &str) -> i64 {
    let mut conn = pool.acquire().await.expect("conn");
    append(&mut conn, aggregate_id).await
}

async fn seen(pool: &PgPool, subscriber: &str) -> Vec<i64> {
    sqlx::query_scalar("SELECT position FROM seen WHERE subscriber = $1 ORDER BY seq")
        .bind(subscriber)
        .fetch_all(pool)
        .await
        .expect("seen")
}

/// Catches up until `expected` events were seen. Snapshots are cluster-wide, so a transaction
/// of a test running in parallel (in another database) may hold the feed back for a moment:
/// delivery is eventual, and this waits for it (bounded).
async fn drain(pool: &PgPool, sub: &Subscriber, batch: i64, expected: usize) {
    for _ in 0..1000 {
        catch_up(pool, sub, batch).await.expect("catch up");
        if seen(pool, sub.name()).await.len() >= expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} did not reach {expected} events", sub.name());
}

fn projector(r: Recorder) -> Subscriber {
    Subscriber::Projector(Arc::new(r))
}

#[sqlx::test(migrations = "../migrations")]
async fn a_late_commit_is_waited_for_never_skipped(pool: PgPool) {
    setup(&pool).await;
    let sub = projector(Recorder::new("late"));

    // A transaction starts writing first and stays open...
    let mut early: Transaction<'_, Postgres> = pool.begin().await.expect("begin");
    let a = append(&mut early, "a").await;
    // ...while two others append and commit after it.
    let b = append_committed(&pool, "b").await;
    let c = append_committed(&pool, "c").await;
    assert!(a < b && b < c, "positions are handed out at insert time");

    // The trap: a reader following positions alone would see b and c now, move its checkpoint
    // past a's position, and never see a.
    let visible: Vec<i64> =
        sqlx::query_scalar("SELECT global_position FROM events ORDER BY global_position")
            .fetch_all(&pool)
            .await
            .expect("visible");
    assert_eq!(visible, vec![b, c]);

    // The feed waits instead: nothing is delivered while the early transaction runs.
    let reached = catch_up(&pool, &sub, 100).await.expect("catch up");
    assert_eq!(reached, Checkpoint::default());
    assert!(seen(&pool, "late").await.is_empty());

    early.commit().await.expect("commit");
    drain(&pool, &sub, 100, 3).await;
    // All three, in feed order: the early transaction's event first.
    assert_eq!(seen(&pool, "late").await, vec![a, b, c]);

    // And a second pass delivers nothing again.
    catch_up(&pool, &sub, 100).await.expect("catch up");
    assert_eq!(seen(&pool, "late").await.len(), 3);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_failed_event_rolls_back_and_is_retried_exactly_once(pool: PgPool) {
    setup(&pool).await;
    let mut positions = vec![];
    for id in ["1", "2", "3", "4", "5"] {
        positions.push(append_committed(&pool, id).await);
    }
    let fired = Arc::new(AtomicBool::new(false));
    let failing = projector(Recorder {
        name: "poison",
        delay: Duration::ZERO,
        fail_once_at: Some((positions[2], fired.clone())),
    });
    // One event per transaction: events 1 and 2 commit, 3 fails and rolls back.
    let failure = loop {
        match catch_up(&pool, &failing, 1).await {
            Err(failure) => break failure,
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    assert_eq!(failure.at, positions[2]);
    assert_eq!(seen(&pool, "poison").await, positions[..2].to_vec());
    let stored = load_checkpoint(&pool, "poison").await.expect("checkpoint");
    assert_eq!(
        stored.position, positions[1],
        "checkpoint stops before the failed event"
    );

    // Restarted, it resumes at its checkpoint: nothing twice, nothing missing.
    drain(&pool, &failing, 1, positions.len()).await;
    assert_eq!(seen(&pool, "poison").await, positions);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_runner_killed_between_events_resumes_without_double_applying(pool: PgPool) {
    setup(&pool).await;
    let mut positions = vec![];
    for i in 0..8 {
        positions.push(append_committed(&pool, &format!("k{i}")).await);
    }
    let slow = || {
        projector(Recorder {
            name: "killed",
            delay: Duration::from_millis(40),
            fail_once_at: None,
        })
    };
    let config = RunnerConfig {
        batch_size: 1,
        poll_interval: Duration::from_millis(20),
        standby_interval: Duration::from_millis(20),
        error_backoff: Duration::from_millis(20),
        ..RunnerConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let first = tokio::spawn(runner::run(pool.clone(), slow(), config, stop_rx.clone()));
    // Let it apply a few events, then kill it mid-way (the task is dropped wherever it is,
    // possibly inside a transaction).
    wait_until(&pool, "killed", |n| n >= 3).await;
    first.abort();
    let _ = first.await;
    let before_restart = seen(&pool, "killed").await.len();
    assert!(before_restart < positions.len(), "killed before the end");

    let second = tokio::spawn(runner::run(pool.clone(), slow(), config, stop_rx));
    wait_until(&pool, "killed", |n| n >= positions.len()).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop_tx.send(true).expect("stop");
    second.await.expect("runner ends");

    assert_eq!(
        seen(&pool, "killed").await,
        positions,
        "each event applied exactly once, in order"
    );
    let stored = load_checkpoint(&pool, "killed").await.expect("checkpoint");
    assert_eq!(stored.position, *positions.last().expect("events"));
}

async fn wait_until(pool: &PgPool, subscriber: &str, done: impl Fn(usize) -> bool) {
    for _ in 0..500 {
        if done(seen(pool, subscriber).await.len()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{subscriber} did not progress");
}

#[sqlx::test(migrations = "../migrations")]
async fn two_runners_for_one_subscriber_never_both_lead(pool: PgPool) {
    setup(&pool).await;
    let mut positions = vec![];
    for i in 0..20 {
        positions.push(append_committed(&pool, &format!("l{i}")).await);
    }
    let config = RunnerConfig {
        batch_size: 2,
        poll_interval: Duration::from_millis(10),
        standby_interval: Duration::from_millis(10),
        error_backoff: Duration::from_millis(10),
        ..RunnerConfig::default()
    };
    let make = || {
        projector(Recorder {
            name: "leader",
            delay: Duration::from_millis(5),
            fail_once_at: None,
        })
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let a = tokio::spawn(runner::run(pool.clone(), make(), config, stop_rx.clone()));
    let b = tokio::spawn(runner::run(pool.clone(), make(), config, stop_rx));
    wait_until(&pool, "leader", |n| n >= positions.len()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop_tx.send(true).expect("stop");
    a.await.expect("a ends");
    b.await.expect("b ends");
    assert_eq!(seen(&pool, "leader").await, positions);
}

/// One step of a random interleaving: which writer does what.
#[derive(Debug, Clone, Copy)]
enum Op {
    Append(usize),
    Commit(usize),
    Rollback(usize),
    Read,
}

fn op_strategy() -> impl Strategy<Value = Vec<Op>> {
    use proptest::prelude::*;
    let op = prop_oneof![
        4 => (0usize..3).prop_map(Op::Append),
        2 => (0usize..3).prop_map(Op::Commit),
        1 => (0usize..3).prop_map(Op::Rollback),
        2 => Just(Op::Read),
    ];
    proptest::collection::vec(op, 5..40)
}

/// Property: for any interleaving of three writers' appends, commits and rollbacks with feed
/// reads in between, the subscriber receives every committed event exactly once, no rolled-back
/// event, in (tx_id, position) order. Cases are generated by proptest; each runs in the same
/// database with the log cleared in between.
#[sqlx::test(migrations = "../migrations")]
async fn random_interleavings_deliver_every_committed_event_once_in_order(pool: PgPool) {
    setup(&pool).await;
    let mut runner = TestRunner::new(proptest::test_runner::Config {
        cases: 40,
        ..proptest::test_runner::Config::default()
    });
    let strategy = op_strategy();
    for case in 0..40 {
        let ops = strategy.new_tree(&mut runner).expect("generate").current();
        sqlx::query("TRUNCATE events, seen, checkpoints")
            .execute(&pool)
            .await
            .expect("reset");
        let sub = projector(Recorder::new("prop"));
        let mut writers: Vec<Option<Transaction<'_, Postgres>>> = vec![None, None, None];
        let mut pending: Vec<Vec<i64>> = vec![vec![], vec![], vec![]];
        let mut committed: Vec<i64> = vec![];
        for (i, op) in ops.iter().enumerate() {
            match *op {
                Op::Append(w) => {
                    if writers[w].is_none() {
                        writers[w] = Some(pool.begin().await.expect("begin"));
                    }
                    let tx = writers[w].as_mut().expect("open");
                    pending[w].push(append(tx, &format!("c{case}-{i}")).await);
                }
                Op::Commit(w) => {
                    if let Some(tx) = writers[w].take() {
                        tx.commit().await.expect("commit");
                        committed.append(&mut pending[w]);
                    }
                }
                Op::Rollback(w) => {
                    if let Some(tx) = writers[w].take() {
                        tx.rollback().await.expect("rollback");
                        pending[w].clear();
                    }
                }
                Op::Read => {
                    catch_up(&pool, &sub, 3).await.expect("read");
                    let delivered = seen(&pool, "prop").await;
                    assert!(
                        delivered.iter().all(|p| committed.contains(p)),
                        "case {case}: only committed events, {ops:?}"
                    );
                }
            }
        }
        for (w, slot) in writers.iter_mut().enumerate() {
            if let Some(tx) = slot.take() {
                tx.commit().await.expect("commit");
                committed.append(&mut pending[w]);
            }
        }
        drain(&pool, &sub, 3, committed.len()).await;
        let delivered = seen(&pool, "prop").await;
        let expected: Vec<i64> = read_after(
            &pool,
            Checkpoint::default(),
            10_000,
            mpanel_projections::feed::Metadata::Include,
        )
        .await
        .expect("log")
        .iter()
        .map(|e| e.position)
        .collect();
        let mut sorted_committed = committed.clone();
        sorted_committed.sort_unstable();
        let mut sorted_delivered = delivered.clone();
        sorted_delivered.sort_unstable();
        assert_eq!(
            sorted_delivered, sorted_committed,
            "case {case}: every committed event exactly once, {ops:?}"
        );
        assert_eq!(
            delivered, expected,
            "case {case}: delivered in (tx_id, position) order, {ops:?}"
        );
    }
}

/// Records reactions (outside any transaction, like the saga's commands) and fails once at one
/// position.
struct Reacting {
    pool: PgPool,
    fail_once_at: i64,
    fired: AtomicBool,
}

#[async_trait]
impl mpanel_projections::Reactor for Reacting {
    fn name(&self) -> &'static str {
        "reacting"
    }

    async fn react(&self, event: &FeedEvent) -> Result<(), SubscriberError> {
        if event.position == self.fail_once_at && !self.fired.swap(true, Ordering::SeqCst) {
            return Err(SubscriberError::Other("simulated failure".into()));
        }
        sqlx::query("INSERT INTO seen (subscriber, position) VALUES ('reacting', $1)")
            .bind(event.position)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_reactor_in_lanes_keeps_each_aggregates_order_and_retries_a_failure(pool: PgPool) {
    setup(&pool).await;
    // Three aggregates, interleaved; the reaction to b's second event fails once.
    let mut by_aggregate: Vec<(&str, i64)> = vec![];
    for round in 0..4 {
        for aggregate in ["a", "b", "c"] {
            let position: i64 = sqlx::query_scalar(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                 VALUES ('Test', $1, $2, 'Tested', '1', '{}', '{}') RETURNING global_position",
            )
            .bind(aggregate)
            .bind(round + 1)
            .fetch_one(&pool)
            .await
            .expect("append");
            by_aggregate.push((aggregate, position));
        }
    }
    let failing = by_aggregate[4].1;
    let reactor = Subscriber::Reactor(Arc::new(Reacting {
        pool: pool.clone(),
        fail_once_at: failing,
        fired: AtomicBool::new(false),
    }));
    let config = RunnerConfig {
        batch_size: 100,
        poll_interval: Duration::from_millis(10),
        standby_interval: Duration::from_millis(10),
        error_backoff: Duration::from_millis(10),
        reactor_lanes: 3,
        projector_linger: Duration::ZERO,
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(runner::run(pool.clone(), reactor, config, shutdown));
    let last = by_aggregate.last().expect("events").1;
    for _ in 0..1000 {
        if load_checkpoint(&pool, "reacting")
            .await
            .expect("checkpoint")
            .position
            == last
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).expect("stop");
    running.await.expect("runner");

    let reacted = seen(&pool, "reacting").await;
    for (aggregate, _) in &by_aggregate[..3] {
        let own: Vec<i64> = by_aggregate
            .iter()
            .filter(|(a, _)| a == aggregate)
            .map(|(_, p)| *p)
            .collect();
        let order: Vec<i64> = reacted
            .iter()
            .copied()
            .filter(|p| own.contains(p))
            .collect();
        // At least once: the failed batch is delivered again, but within an aggregate the
        // first reaction to each event comes after the first reaction to its predecessors (so
        // b's successors of the failing event wait for its successful retry).
        let mut first_reactions: Vec<i64> = vec![];
        for p in &order {
            if !first_reactions.contains(p) {
                first_reactions.push(*p);
            }
        }
        assert_eq!(first_reactions, own, "{aggregate}: {order:?}");
    }
    assert_eq!(
        load_checkpoint(&pool, "reacting")
            .await
            .expect("checkpoint")
            .position,
        last
    );
}
