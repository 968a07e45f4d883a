//! Rebuilding a read model beside the live one and swapping it in atomically (DESIGN §5).
//!
//! `mpanel projections rebuild NAME` must never let the API serve a half-built model, must not
//! stop the live projector for longer than a swap, and must not re-run anything with effects
//! outside the read model (the saga is a reactor, not a projector, and is never rebuilt; the
//! audit sealer's seals are evidence, not a read model, and are refused). How:
//!
//! 1. **Build beside.** Schema `rebuild_<name>` gets `CREATE TABLE t (LIKE public.t INCLUDING
//!    ALL)` for each of the projector's [`Projector::tables`]. The projector runs on a dedicated
//!    pool whose connections `SET search_path TO rebuild_<name>, public`: its SQL names tables
//!    unqualified, so its writes land in the new tables while `events` and `checkpoints` still
//!    resolve to `public`. Its checkpoint is a row of its own, `<name>#rebuild`, and it applies
//!    the feed from position 0 in large batches (one transaction each), exactly as a live
//!    runner would, so the result is what the live model would be. Several projectors rebuilt
//!    together (`all`) share one read of the log: each batch is read once and every projector
//!    applies it on its own connection, in a task of its own, up to two batches behind the
//!    reader and without waiting for the others. The reads leave out `metadata`, which no
//!    read model uses ([`Projector::reads_metadata`]).
//! 2. **Take over.** Caught up, the rebuild holds the subscriber's handover lock; the live
//!    leader checks it before every batch and steps down (its batch in flight commits first);
//!    the rebuild then takes the leadership lock itself, so no live runner of this subscriber
//!    runs until the swap is done. It catches up once more: the new model is now exactly at the
//!    head.
//! 3. **Swap, in one transaction**: lock the live tables, move each into a fresh schema
//!    `retired_<name>_<unix>` (its indexes go with it, so no index name collides), move each new
//!    table into `public` and give its indexes the live ones' names, set the live checkpoint to
//!    the rebuild's and delete the `#rebuild` row. Readers block for the length of this
//!    transaction (milliseconds) and then read the new tables: Postgres re-resolves a cached
//!    plan's table names after the DDL invalidated it, so the pooled connections' prepared
//!    statements follow the swap (see `tests/rebuild.rs`).
//! 4. Release the locks (a live runner leads again, from the new checkpoint, on the new tables)
//!    and drop the retired schema unless asked to keep it.
//!
//! A projector that fails on an event aborts the rebuild with the event's position; the build
//! schema and checkpoint are dropped and the live model was never touched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, Executor, PgConnection, PgPool};

use crate::audit::SEALER_NAME;
use crate::feed::{read_after, Checkpoint, FeedEvent, Metadata};
use crate::runner::{try_lead, Subscriber, HANDOVER_LOCK};
use crate::{Projector, SubscriberError};

/// How a rebuild runs.
#[derive(Debug, Clone, Copy)]
pub struct RebuildOptions {
    /// Events per build transaction. Larger is faster; each build transaction, like any
    /// writing transaction, holds the live feed back while it runs (docs/OPERATIONS.md).
    pub batch_size: i64,
    /// Keep the retired tables (in `retired_<name>_<unix>`) instead of dropping them.
    pub keep_old: bool,
    /// How long to wait for the live leader to step down before giving up.
    pub handover_timeout: Duration,
    /// How long the swap may wait for a table lock (a long-running reader) per attempt; the
    /// swap is retried a few times before the rebuild gives up, the live model untouched.
    pub lock_timeout: Duration,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            batch_size: 5000,
            keep_old: false,
            handover_timeout: Duration::from_secs(60),
            lock_timeout: Duration::from_secs(5),
        }
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RebuildReport {
    /// The projector.
    pub name: String,
    /// The tables swapped in.
    pub tables: Vec<String>,
    /// Events the new model was built from.
    pub events: u64,
    /// Global position of the last of them (the live checkpoint after the swap).
    pub position: i64,
    /// Seconds from start to swap.
    pub seconds: f64,
    /// Build throughput.
    pub events_per_second: f64,
    /// Where the old tables are, when they were kept (`--keep-old`).
    pub retired_schema: Option<String>,
}

/// Why a rebuild did not happen. In every case the live model is untouched.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// No projector has this name.
    #[error("no projector named {0:?}; expected one of: {1}")]
    UnknownProjector(String, String),
    /// The audit sealer's seals are evidence of the log, not a read model.
    #[error("{0} is not a read model and cannot be rebuilt (see `mpanel events verify`)")]
    NotAReadModel(String),
    /// Another rebuild of the same projector is running.
    #[error("a rebuild of {0} is already running")]
    AlreadyRunning(String),
    /// The projector failed on an event while building.
    #[error("{name} failed on the event at position {position}: {error}")]
    Failed {
        /// The projector.
        name: String,
        /// The event's global position.
        position: i64,
        /// What went wrong.
        error: SubscriberError,
    },
    /// The live leader did not step down in time (an mpanel too old to hand over?).
    #[error("the live runner of {0} did not hand over within {1:?}")]
    HandoverTimeout(String, Duration),
    /// A database call failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Every projector a rebuild accepts: all read-model projectors, not the audit sealer.
#[must_use]
pub fn rebuildable() -> Vec<Arc<dyn Projector>> {
    crate::projectors::all()
        .into_iter()
        .filter_map(|s| match s {
            Subscriber::Projector(p) if p.name() != SEALER_NAME => Some(p),
            _ => None,
        })
        .collect()
}

/// The projectors `name` stands for: one by name, or every rebuildable one for `all`.
///
/// # Errors
/// [`RebuildError::NotAReadModel`] for the sealer, [`RebuildError::UnknownProjector`] otherwise.
pub fn select(name: &str) -> Result<Vec<Arc<dyn Projector>>, RebuildError> {
    let all = rebuildable();
    if name == "all" {
        return Ok(all);
    }
    if name == SEALER_NAME {
        return Err(RebuildError::NotAReadModel(name.to_owned()));
    }
    let names = all.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ");
    all.into_iter()
        .find(|p| p.name() == name)
        .map(|p| vec![p])
        .ok_or_else(|| RebuildError::UnknownProjector(name.to_owned(), format!("{names}, all")))
}

/// Rebuilds several projectors: their build tables are filled together from **one** read of
/// the log (each batch is read once and applied by every projector concurrently, each in its
/// own transaction on its own connection, while the next batch is read), then each is caught
/// up and swapped in turn (each swap is atomic on its own; `all` is not one swap).
///
/// # Errors
/// The first failure. A failure while building leaves every live model untouched; one while
/// swapping leaves the projectors swapped before it swapped in.
pub async fn rebuild_all(
    pool: &PgPool,
    projectors: &[Arc<dyn Projector>],
    options: &RebuildOptions,
) -> Result<Vec<RebuildReport>, RebuildError> {
    rebuild_together(pool, projectors, options).await
}

/// Rebuilds one projector's tables from position 0 beside the live ones and swaps them in.
///
/// # Errors
/// See [`RebuildError`]; on any error the build schema is dropped and the live model untouched.
pub async fn rebuild(
    pool: &PgPool,
    projector: Arc<dyn Projector>,
    options: &RebuildOptions,
) -> Result<RebuildReport, RebuildError> {
    let mut reports = rebuild_together(pool, &[projector], options).await?;
    reports
        .pop()
        .ok_or_else(|| RebuildError::Database(sqlx::Error::Protocol("no rebuild report".into())))
}

async fn rebuild_together(
    pool: &PgPool,
    projectors: &[Arc<dyn Projector>],
    options: &RebuildOptions,
) -> Result<Vec<RebuildReport>, RebuildError> {
    let started = Instant::now();
    let mut guards = Vec::with_capacity(projectors.len());
    let mut builds: Vec<Building> = Vec::with_capacity(projectors.len());
    let mut outcome = async {
        for projector in projectors {
            let name = projector.name();
            if name == SEALER_NAME {
                return Err(RebuildError::NotAReadModel(name.to_owned()));
            }
            assert_identifier(name);
            let mut guard = PgConnection::connect_with(&pool.connect_options()).await?;
            let ours: bool = sqlx::query_scalar(
                "SELECT pg_try_advisory_lock(hashtext('mpanel-rebuild:' || $1))",
            )
            .bind(name)
            .fetch_one(&mut guard)
            .await?;
            guards.push(guard);
            if !ours {
                return Err(RebuildError::AlreadyRunning(name.to_owned()));
            }
            builds.push(Building::start(pool, Arc::clone(projector)).await?);
        }
        // Phase 1: from position 0 to (about) the head, the live runners untouched.
        build_together(pool, &mut builds, options).await?;
        Ok(())
    }
    .await
    .map(|()| Vec::new());
    // Phase 2, one projector at a time: take over, catch up, swap.
    let mut done = 0;
    if let Ok(reports) = &mut outcome {
        for building in &builds {
            match building.finish(pool, options, started).await {
                Ok(report) => {
                    reports.push(report);
                    done += 1;
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
    }
    for building in &builds {
        building.pool.close().await;
    }
    if outcome.is_err() {
        for building in builds.iter().skip(done) {
            if let Err(e) = building.build.discard(pool).await {
                tracing::warn!(subscriber = building.build.name, error = %e, "could not drop the rebuild schema");
            }
        }
    }
    for guard in guards {
        let _ = guard.close().await;
    }
    outcome
}

/// One projector being rebuilt: its names, its build pool (search path on the build schema)
/// and how far it got.
struct Building {
    projector: Arc<dyn Projector>,
    build: Build,
    pool: PgPool,
    progress: Progress,
}

impl Building {
    async fn start(pool: &PgPool, projector: Arc<dyn Projector>) -> Result<Self, RebuildError> {
        let build = Build::new(projector.name());
        prepare(pool, &build, projector.tables()).await?;
        let schema = build.schema.clone();
        let build_pool = PgPoolOptions::new()
            .max_connections(1)
            .after_connect(move |conn, _meta| {
                let sql = format!("SET search_path TO {schema}, public");
                Box::pin(async move {
                    conn.execute(sql.as_str()).await?;
                    Ok(())
                })
            })
            .connect_with(pool.connect_options().as_ref().clone())
            .await;
        let build_pool = match build_pool {
            Ok(p) => p,
            Err(e) => {
                let _ = build.discard(pool).await;
                return Err(e.into());
            }
        };
        Ok(Self {
            projector,
            build,
            pool: build_pool,
            progress: Progress::default(),
        })
    }

    /// Phase 2 and the swap (see the module doc).
    async fn finish(
        &self,
        pool: &PgPool,
        options: &RebuildOptions,
        started: Instant,
    ) -> Result<RebuildReport, RebuildError> {
        let (projector, build) = (self.projector.as_ref(), &self.build);
        let tables = projector.tables();
        tracing::info!(
            subscriber = build.name,
            events = self.progress.events,
            position = self.progress.at.position,
            "rebuild caught up; taking over from the live runner"
        );
        let mut progress = self.progress;
        let mut leader = take_over(pool, build.name, options.handover_timeout).await?;
        let mut attempt = 0;
        let retired = loop {
            attempt += 1;
            progress = match catch_up(&self.pool, projector, build, progress, options).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = leader.close().await;
                    return Err(e);
                }
            };
            match swap(&mut leader, build, tables, options.lock_timeout).await {
                Ok(retired) => break retired,
                Err(sqlx::Error::Database(e))
                    if e.code().as_deref() == Some("55P03") && attempt < 5 =>
                {
                    tracing::warn!(
                        subscriber = build.name,
                        attempt,
                        "swap waited too long for a table lock (a long-running reader?); retrying"
                    );
                }
                Err(e) => {
                    let _ = leader.close().await;
                    return Err(e.into());
                }
            }
        };
        // Releases the handover and leadership locks: a live runner leads again.
        let _ = leader.close().await;
        let seconds = started.elapsed().as_secs_f64();
        let kept = if options.keep_old {
            Some(retired)
        } else {
            if let Err(e) = pool
                .execute(format!("DROP SCHEMA {retired} CASCADE").as_str())
                .await
            {
                tracing::warn!(subscriber = build.name, schema = %retired, error = %e, "could not drop the retired tables; drop the schema by hand");
            }
            None
        };
        #[allow(clippy::cast_precision_loss)] // a rate for humans
        let events_per_second = progress.events as f64 / seconds.max(1e-9);
        let report = RebuildReport {
            name: build.name.to_owned(),
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
            events: progress.events,
            position: progress.at.position,
            seconds,
            events_per_second,
            retired_schema: kept,
        };
        tracing::info!(
            subscriber = build.name,
            events = report.events,
            seconds,
            events_per_second,
            "rebuild swapped in"
        );
        Ok(report)
    }
}

/// Phase 1 for every build at once: each batch is read once and handed to every projector,
/// which applies it on its own connection in a task of its own, until a batch comes back short
/// (so a steady stream of new events cannot keep phase 1 going).
///
/// The projectors do not wait for each other between batches: each may lag the reader by up to
/// [`RUN_AHEAD`] batches, so the cheap ones keep the cores busy while the dearest one
/// (provisioning: five tables) works, and their decoding and folding runs on every runtime
/// thread instead of the one that polls the reader.
async fn build_together(
    pool: &PgPool,
    builds: &mut [Building],
    options: &RebuildOptions,
) -> Result<(), RebuildError> {
    let full = usize::try_from(options.batch_size).unwrap_or(usize::MAX);
    let metadata = if builds
        .iter()
        .any(|b| Metadata::of(b.projector.as_ref()) == Metadata::Include)
    {
        Metadata::Include
    } else {
        Metadata::Skip
    };
    let mut appliers = tokio::task::JoinSet::new();
    let mut feeds = Vec::with_capacity(builds.len());
    for (index, building) in builds.iter().enumerate() {
        let (feed, mut batches) = tokio::sync::mpsc::channel::<Arc<Vec<FeedEvent>>>(RUN_AHEAD);
        feeds.push(feed);
        let (build_pool, projector) = (building.pool.clone(), Arc::clone(&building.projector));
        let (build, mut progress) = (building.build.clone(), building.progress);
        appliers.spawn(async move {
            while let Some(events) = batches.recv().await {
                progress =
                    apply_batch(&build_pool, projector.as_ref(), &build, progress, &events).await?;
            }
            Ok::<_, RebuildError>((index, progress))
        });
    }
    let read = async {
        let mut at = Checkpoint::default();
        let mut total: u64 = 0;
        let mut last_log = Instant::now();
        loop {
            let events = read_after(pool, at, options.batch_size, metadata).await?;
            let Some(last) = events.last().map(FeedEvent::checkpoint) else {
                return Ok(());
            };
            let short = events.len() < full;
            total += u64::try_from(events.len()).unwrap_or(u64::MAX);
            let events = Arc::new(events);
            for feed in &feeds {
                if feed.send(Arc::clone(&events)).await.is_err() {
                    // That applier failed: its error is what the join below reports.
                    return Ok(());
                }
            }
            at = last;
            if short {
                return Ok(());
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                last_log = Instant::now();
                tracing::info!(events = total, position = at.position, "rebuilding");
            }
        }
    };
    let read: Result<(), RebuildError> = read.await;
    drop(feeds);
    let mut outcome = read;
    while let Some(joined) = appliers.join_next().await {
        let applied = joined
            .map_err(|e| {
                RebuildError::Database(sqlx::Error::Protocol(format!("rebuild applier: {e}")))
            })
            .and_then(|applied| applied);
        match applied {
            Ok((index, progress)) => {
                if let Some(building) = builds.get_mut(index) {
                    building.progress = progress;
                }
            }
            Err(e) => {
                if outcome.is_ok() {
                    outcome = Err(e);
                }
            }
        }
        if outcome.is_err() {
            // The others' work is moot: stop them, and wait until their transactions are gone
            // before the caller drops the build schemas.
            appliers.shutdown().await;
        }
    }
    outcome
}

/// Batches a projector may lag behind the reader in phase 1 (each is held in memory once,
/// shared by every projector).
const RUN_AHEAD: usize = 2;

/// The names one rebuild uses.
#[derive(Clone)]
struct Build {
    name: &'static str,
    schema: String,
    checkpoint: String,
}

impl Build {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            schema: format!("rebuild_{name}"),
            checkpoint: format!("{name}#rebuild"),
        }
    }

    async fn discard(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        pool.execute(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema).as_str())
            .await?;
        sqlx::query("DELETE FROM checkpoints WHERE subscriber = $1")
            .bind(&self.checkpoint)
            .execute(pool)
            .await?;
        Ok(())
    }
}

/// Creates the empty build tables and the build checkpoint, discarding any left by a rebuild
/// that died (a rebuild always starts from position 0).
async fn prepare(pool: &PgPool, build: &Build, tables: &[&str]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let schema = &build.schema;
    tx.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
        .await?;
    tx.execute(format!("CREATE SCHEMA {schema}").as_str())
        .await?;
    for table in tables {
        assert_identifier(table);
        tx.execute(
            format!("CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL)").as_str(),
        )
        .await?;
    }
    sqlx::query("DELETE FROM checkpoints WHERE subscriber = $1")
        .bind(&build.checkpoint)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO checkpoints (subscriber) VALUES ($1)")
        .bind(&build.checkpoint)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    at: Checkpoint,
    events: u64,
    /// `events` when the build tables were last analyzed.
    analyzed_at: u64,
}

/// Applies batches to the build tables until the feed is drained (phase 2, with the live
/// leader stepped down; phase 1, which stops at a short batch instead, is [`build_together`]).
async fn catch_up(
    build_pool: &PgPool,
    projector: &dyn Projector,
    build: &Build,
    mut progress: Progress,
    options: &RebuildOptions,
) -> Result<Progress, RebuildError> {
    let mut last_log = Instant::now();
    let metadata = Metadata::of(projector);
    loop {
        let events = read_after(build_pool, progress.at, options.batch_size, metadata).await?;
        if events.is_empty() {
            return Ok(progress);
        }
        progress = apply_batch(build_pool, projector, build, progress, &events).await?;
        if last_log.elapsed() > Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::info!(
                subscriber = build.name,
                events = progress.events,
                position = progress.at.position,
                "rebuilding"
            );
        }
    }
}

/// Applies `events` to the build tables and moves the build checkpoint past them, in one
/// transaction; returns the progress after them.
async fn apply_batch(
    build_pool: &PgPool,
    projector: &dyn Projector,
    build: &Build,
    mut progress: Progress,
    events: &[FeedEvent],
) -> Result<Progress, RebuildError> {
    let Some(last) = events.last() else {
        return Ok(progress);
    };
    let mut tx = build_pool.begin().await?;
    // A build batch is rebuilt from the log if lost: no need to wait for its WAL flush.
    tx.execute("SET LOCAL synchronous_commit = off").await?;
    projector
        .apply_batch(&mut tx, events)
        .await
        .map_err(|f| RebuildError::Failed {
            name: build.name.to_owned(),
            position: f.position,
            error: f.error,
        })?;
    let count = u64::try_from(events.len()).unwrap_or(u64::MAX);
    sqlx::query(
        "UPDATE checkpoints SET tx_id = $2::bigint::text::xid8, position = $3, \
           events_processed = events_processed + $4, updated_at = now() WHERE subscriber = $1",
    )
    .bind(&build.checkpoint)
    .bind(last.tx_id)
    .bind(last.position)
    .bind(i64::try_from(count).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    progress.at = last.checkpoint();
    progress.events += count;
    if progress.events >= progress.analyzed_at.saturating_mul(2).max(ANALYZE_FIRST) {
        // The build tables are new, so Postgres has no statistics for them until autovacuum
        // comes by (a minute or more): the projectors' `id = ANY($1)` lookups then plan as
        // whole-table scans, which made a 1 M-event rebuild quadratic. Analyzing each time the
        // applied events double keeps the estimates current for a logarithmic cost.
        let tables: Vec<String> = projector
            .tables()
            .iter()
            .map(|t| format!("{}.{t}", build.schema))
            .collect();
        build_pool
            .execute(format!("ANALYZE {}", tables.join(", ")).as_str())
            .await?;
        progress.analyzed_at = progress.events;
    }
    Ok(progress)
}

/// Events applied before a build's tables are first analyzed (then again each time the count
/// doubles).
const ANALYZE_FIRST: u64 = 4_000;

/// Holds the handover lock (the live leader steps down before its next batch) and then the
/// leadership lock, on one dedicated connection; closing it releases both.
async fn take_over(
    pool: &PgPool,
    name: &str,
    timeout: Duration,
) -> Result<PgConnection, RebuildError> {
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    sqlx::query(&format!("SELECT pg_advisory_lock({HANDOVER_LOCK})"))
        .bind(name)
        .execute(&mut conn)
        .await?;
    let deadline = Instant::now() + timeout;
    loop {
        if try_lead(&mut conn, name).await? {
            return Ok(conn);
        }
        if Instant::now() > deadline {
            let _ = conn.close().await;
            return Err(RebuildError::HandoverTimeout(name.to_owned(), timeout));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One transaction: retire the live tables, move the new ones in under the live index names,
/// hand the build checkpoint to the live subscriber. Returns the retired schema's name.
async fn swap(
    conn: &mut PgConnection,
    build: &Build,
    tables: &[&str],
    lock_timeout: Duration,
) -> Result<String, sqlx::Error> {
    let retired = retired_schema(conn, build.name).await?;
    let mut tx = conn.begin().await?;
    tx.execute(format!("SET LOCAL lock_timeout = '{}ms'", lock_timeout.as_millis()).as_str())
        .await?;
    let live: Vec<String> = tables.iter().map(|t| format!("public.{t}")).collect();
    tx.execute(format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", live.join(", ")).as_str())
        .await?;
    tx.execute(format!("CREATE SCHEMA {retired}").as_str())
        .await?;
    for table in tables {
        let old_indexes = indexes(&mut tx, &format!("public.{table}")).await?;
        tx.execute(format!("ALTER TABLE public.{table} SET SCHEMA {retired}").as_str())
            .await?;
        tx.execute(format!("ALTER TABLE {}.{table} SET SCHEMA public", build.schema).as_str())
            .await?;
        // `LIKE … INCLUDING ALL` names copied indexes by their columns; give them the live
        // names back, so migrations that name an index keep working after a rebuild.
        let mut wanted: HashMap<String, Vec<String>> = HashMap::new();
        for (index, shape) in old_indexes {
            wanted.entry(shape).or_default().push(index);
        }
        for (index, shape) in indexes(&mut tx, &format!("public.{table}")).await? {
            if let Some(old) = wanted.get_mut(&shape).and_then(Vec::pop) {
                if old != index {
                    tx.execute(format!("ALTER INDEX public.{index} RENAME TO {old}").as_str())
                        .await?;
                }
            }
        }
    }
    sqlx::query(
        "INSERT INTO checkpoints (subscriber, tx_id, position, events_processed) \
         SELECT $1, tx_id, position, events_processed FROM checkpoints WHERE subscriber = $2 \
         ON CONFLICT (subscriber) DO UPDATE SET tx_id = EXCLUDED.tx_id, position = EXCLUDED.position, \
           events_processed = EXCLUDED.events_processed, last_error = NULL, last_error_at = NULL, \
           updated_at = now()",
    )
    .bind(build.name)
    .bind(&build.checkpoint)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM checkpoints WHERE subscriber = $1")
        .bind(&build.checkpoint)
        .execute(&mut *tx)
        .await?;
    tx.execute(format!("DROP SCHEMA {}", build.schema).as_str())
        .await?;
    tx.commit().await?;
    Ok(retired)
}

/// A schema name for the retired tables that is not taken yet.
async fn retired_schema(conn: &mut PgConnection, name: &str) -> Result<String, sqlx::Error> {
    let unix = chrono::Utc::now().timestamp();
    let mut candidate = format!("retired_{name}_{unix}");
    let mut n = 1;
    loop {
        let taken: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(&candidate)
                .fetch_one(&mut *conn)
                .await?;
        if !taken {
            return Ok(candidate);
        }
        n += 1;
        candidate = format!("retired_{name}_{unix}_{n}");
    }
}

/// A table's indexes as (name, shape): the shape is the definition without the index's and
/// the table's names (`UNIQUE USING btree (id)`), equal for an index and its `LIKE` copy.
async fn indexes(
    conn: &mut PgConnection,
    table: &str,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows: Vec<(String, bool, String)> = sqlx::query_as(
        "SELECT c.relname::text, i.indisunique, pg_get_indexdef(c.oid) \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE i.indrelid = $1::regclass ORDER BY c.relname",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, unique, def)| {
            let shape = def.find(" USING ").map_or(def.as_str(), |at| &def[at..]);
            let shape = format!("{}{shape}", if unique { "UNIQUE" } else { "" });
            (name, shape)
        })
        .collect())
}

/// Projector and table names are spliced into DDL; they are static identifiers of this crate,
/// and this keeps it that way.
fn assert_identifier(name: &str) {
    assert!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "{name:?} is not a plain lowercase identifier"
    );
}
