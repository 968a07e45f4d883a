//! Group commit for creating commands (docs/adr/0022): concurrent webhooks' `OrderPlaced`
//! events are appended together, one statement per group, over connections the appender
//! keeps for itself.
//!
//! A pool query costs three round trips in sqlx 0.8 — a liveness ping when the connection is
//! acquired, the statement, and another ping when it is released — and every statement costs
//! Postgres its own parse, bind, plan, commit and wake-ups. At 16 concurrent webhooks that was
//! most of the intake's CPU on both sides (docs/benchmarks.md). Here a request decides its
//! command against the empty state (as [`crate::bus::AggregateBus::execute_new_if`] does) and
//! hands the one event to a writer thread; each writer takes every request waiting at that
//! moment and appends them with one `INSERT … ON CONFLICT DO NOTHING … RETURNING` on a
//! connection of its own (no pings). Nothing waits for a group to fill: a request that finds
//! a writer idle is written at once, alone, so a quiet system pays no latency for this.
//!
//! What each request learns is what the one-statement path would have told it. A row is
//! written only if its aggregate had no event and its precondition held, checked by the same
//! statement, row by row; one request's conflict or false precondition writes nothing for it
//! and does not disturb the others. A statement that fails as a whole is tried again one row
//! at a time, so one bad row cannot fail its neighbours.

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::{Arc, Once};

use cqrs_es::{Aggregate, DomainEvent, EventEnvelope};
use serde_json::value::RawValue;
use sqlx::postgres::PgConnectOptions;
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

use crate::bus::{decide, with_trace, BusError, Doorbell, Executed};
use crate::metadata::EventMetadata;

/// The most requests one statement appends.
pub const MAX_GROUP: usize = 64;

/// How many statements may be in flight at once (one connection each). One: at 16 concurrent
/// webhooks two writers placed no more orders per second (12.3 k against 13.2 k) and cost
/// Postgres ~50 % more CPU per order, their groups being half as large (docs/benchmarks.md).
pub const DEFAULT_WRITERS: usize = 1;

/// What [`GroupAppender::create`] did.
#[derive(Debug)]
pub enum Grouped<A: Aggregate> {
    /// The aggregate did not exist and the precondition held: its one event is committed at
    /// sequence 1.
    Appended(Executed<A>),
    /// Nothing written: the aggregate already has events, or the precondition was false at
    /// insert time (the statement does not say which). The caller takes the ordinary path.
    NotWritten,
    /// Nothing written: against the empty state the command decided nothing, was refused, or
    /// decided more than the one event a group append carries. The caller takes the ordinary
    /// path, which decides against the real state.
    NotDecided,
}

/// One request waiting for its group's statement. The payload and metadata are serialised by
/// the request's own task, once, straight to JSON text: the writer is the one serial step of
/// the intake, so it only copies bytes.
struct Pending {
    aggregate_id: String,
    event_type: String,
    event_version: String,
    payload: Box<RawValue>,
    metadata: Box<RawValue>,
    params: Arc<RawValue>,
    reply: oneshot::Sender<Result<bool, String>>,
}

/// Appends creating commands of aggregate type `A` in groups, each under a precondition.
pub struct GroupAppender<A> {
    inner: Arc<Inner>,
    /// Unbounded, because what waits here is bounded already: one entry per webhook request
    /// in flight, each under the router's request timeout.
    sender: mpsc::UnboundedSender<Pending>,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<Pending>>>,
    started: Once,
    aggregate: PhantomData<fn() -> A>,
}

/// What the writers share.
struct Inner {
    options: PgConnectOptions,
    sql: String,
    aggregate_type: &'static str,
    writers: usize,
    doorbell: Doorbell,
}

/// The statement: every row whose precondition holds and whose aggregate has no event yet is
/// inserted at sequence 1, in aggregate-id order (so two groups lock contested ids in the same
/// order and cannot deadlock); the inserted ids come back. Only the primary key arbitrates (an
/// untargeted `ON CONFLICT` would probe the feed's two unique indexes for every row too).
///
/// The precondition is evaluated once per distinct value (`$7`, read as `want`; a group's
/// orders mostly carry the same price snapshot), in an uncorrelated sub-select that Postgres
/// runs once per statement, and each row names its value's position (`$8`).
fn group_sql(precondition: &str) -> String {
    format!(
        "INSERT INTO events \
           (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT $1, r.aggregate_id, 1, r.event_type, r.event_version, r.payload, r.metadata \
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[], $8::bigint[]) \
           AS r(aggregate_id, event_type, event_version, payload, metadata, want_n) \
         WHERE r.want_n = ANY (ARRAY( \
           SELECT w.n FROM UNNEST($7::jsonb[]) WITH ORDINALITY AS w(want, n) \
           WHERE {precondition})) \
         ORDER BY r.aggregate_id \
         ON CONFLICT (aggregate_type, aggregate_id, sequence) DO NOTHING \
         RETURNING aggregate_id"
    )
}

impl<A> GroupAppender<A>
where
    A: Aggregate<Services = ()>,
{
    /// An appender writing to the `events` table of `pool`'s database, over `writers`
    /// connections of its own (opened on first use, with `pool`'s options), checking
    /// `precondition` — an SQL boolean expression over the jsonb value `want`, a static string
    /// of the caller's, never built from input — for every row.
    #[must_use]
    pub fn new(
        pool: &PgPool,
        doorbell: Doorbell,
        precondition: &'static str,
        writers: usize,
    ) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                // A generic plan, made once: Postgres otherwise kept re-planning the
                // precondition's joins for every statement (a custom plan looked cheaper), which
                // was a third of the writer's Postgres CPU (docs/benchmarks.md).
                options: (*pool.connect_options())
                    .clone()
                    .options([("plan_cache_mode", "force_generic_plan")]),
                sql: group_sql(precondition),
                aggregate_type: A::TYPE,
                writers: writers.max(1),
                doorbell,
            }),
            sender,
            receiver: Arc::new(Mutex::new(receiver)),
            started: Once::new(),
            aggregate: PhantomData,
        }
    }

    /// Executes a command that normally *creates* aggregate `id`: decides it against the empty
    /// state and appends its one event at sequence 1 with the next group, if the aggregate has
    /// no event yet and the precondition holds for `params` (the row's `want`, JSON text; rows
    /// of one group whose `params` are equal share one evaluation).
    ///
    /// # Errors
    /// [`BusError::Store`] when the statement failed; nothing is written for this request.
    pub async fn create(
        &self,
        id: Uuid,
        command: A::Command,
        metadata: &EventMetadata,
        params: Arc<RawValue>,
    ) -> Result<Grouped<A>, BusError<A::Error>> {
        let metadata = with_trace(metadata);
        let Some((state, mut events)) = decide(A::default(), command).await else {
            return Ok(Grouped::NotDecided);
        };
        let (Some(event), true) = (events.pop(), events.is_empty()) else {
            return Ok(Grouped::NotDecided);
        };
        let store = |e: serde_json::Error| BusError::Store(e.to_string());
        let (reply, answer) = oneshot::channel();
        let pending_type = event.event_type();
        let pending = Pending {
            aggregate_id: id.to_string(),
            event_type: pending_type.clone(),
            event_version: event.event_version(),
            payload: serde_json::value::to_raw_value(&event).map_err(store)?,
            metadata: serde_json::value::to_raw_value(&metadata).map_err(store)?,
            params,
            reply,
        };
        self.start();
        self.sender
            .send(pending)
            .map_err(|_| BusError::Store("the group appender has stopped".into()))?;
        let written = answer
            .await
            .map_err(|_| BusError::Store("the group appender dropped a request".into()))?
            .map_err(BusError::Store)?;
        if !written {
            return Ok(Grouped::NotWritten);
        }
        // Rung from the request's task, not the writer thread: the doorbell's loop starts on
        // the runtime of its first ring, and that should be the process's own.
        self.inner.doorbell.ring();
        crate::metrics::event_appended(pending_type);
        Ok(Grouped::Appended(Executed {
            events: vec![EventEnvelope {
                aggregate_id: id.to_string(),
                sequence: 1,
                payload: event,
                metadata,
            }],
            state,
        }))
    }

    /// Starts the writers, once; they end when the appender is dropped.
    ///
    /// Each writer is a thread with a runtime of its own, not a task among the HTTP requests':
    /// the writer is the one serial step every new order passes through, and as a task its
    /// wake-up when Postgres answered queued behind whatever requests were ready on the
    /// process's workers (as a thread: 3–8 % more orders per second at c16, ADR 0022). If the
    /// thread or its runtime cannot be made, the writer runs as a task.
    fn start(&self) {
        self.started.call_once(|| {
            let handle = tokio::runtime::Handle::current();
            for _ in 0..self.inner.writers {
                let (inner, receiver) = (self.inner.clone(), self.receiver.clone());
                let fallback = handle.clone();
                let thread = std::thread::Builder::new()
                    .name("group-commit".into())
                    .spawn(move || {
                        match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(runtime) => runtime.block_on(write_groups(inner, receiver)),
                            Err(e) => {
                                tracing::warn!(error = %e, "group commit: no runtime for the writer thread; it runs as a task");
                                fallback.spawn(write_groups(inner, receiver));
                            }
                        }
                    });
                if let Err(e) = thread {
                    tracing::warn!(error = %e, "group commit: no writer thread; it runs as a task");
                    handle.spawn(write_groups(self.inner.clone(), self.receiver.clone()));
                }
            }
        });
    }
}

/// A writer: takes every request waiting (up to [`MAX_GROUP`]), appends them, answers each,
/// until the appender is dropped.
async fn write_groups(inner: Arc<Inner>, receiver: Arc<Mutex<mpsc::UnboundedReceiver<Pending>>>) {
    let mut connection: Option<PgConnection> = None;
    loop {
        let mut group = Vec::new();
        {
            let mut receiver = receiver.lock().await;
            match receiver.recv().await {
                Some(first) => group.push(first),
                None => return,
            }
            drain(&mut receiver, &mut group);
        }
        let outcomes = match connection.as_mut() {
            Some(c) => append_group(&inner, c, &group).await,
            None => match PgConnection::connect_with(&inner.options).await {
                Ok(c) => append_group(&inner, connection.insert(c), &group).await,
                Err(e) => Err(e),
            },
        };
        let outcomes = match outcomes {
            Ok(written) => written.into_iter().map(Ok).collect(),
            Err(e) => {
                // The connection may be broken: drop it (no goodbye that could hang on a dead
                // socket) and open a fresh one for the next group.
                connection = None;
                tracing::warn!(error = %e, requests = group.len(), "group append failed");
                vec![Err(e.to_string()); group.len()]
            }
        };
        for (pending, outcome) in group.into_iter().zip(outcomes) {
            // A request whose caller has gone (a dropped connection) needs no answer.
            drop(pending.reply.send(outcome));
        }
    }
}

/// Moves every request already waiting into `group`, up to [`MAX_GROUP`].
fn drain(receiver: &mut mpsc::UnboundedReceiver<Pending>, group: &mut Vec<Pending>) {
    while group.len() < MAX_GROUP {
        match receiver.try_recv() {
            Ok(next) => group.push(next),
            Err(_) => break,
        }
    }
}

/// Appends `group` and says, per request in order, whether its event was written. A second
/// request for an aggregate already in the group is not sent (it would only conflict with the
/// first) and is answered "not written". When the statement fails for a database reason
/// (a row the table refuses, say), each request is tried alone so only the culprit fails.
async fn append_group(
    inner: &Inner,
    connection: &mut PgConnection,
    group: &[Pending],
) -> Result<Vec<bool>, sqlx::Error> {
    let mut seen = HashSet::with_capacity(group.len());
    let first: Vec<bool> = group.iter().map(|p| seen.insert(&p.aggregate_id)).collect();
    let rows: Vec<&Pending> = group
        .iter()
        .zip(&first)
        .filter(|(_, f)| **f)
        .map(|(p, _)| p)
        .collect();
    let written = match insert(inner, connection, &rows).await {
        Ok(written) => written,
        Err(sqlx::Error::Database(e)) => {
            tracing::debug!(error = %e, requests = rows.len(), "group append refused; appending one by one");
            let mut written = HashSet::with_capacity(rows.len());
            for row in &rows {
                match insert(inner, connection, &[*row]).await {
                    Ok(one) => written.extend(one),
                    Err(sqlx::Error::Database(_)) => {}
                    Err(other) => return Err(other),
                }
            }
            written
        }
        Err(e) => return Err(e),
    };
    Ok(group
        .iter()
        .zip(&first)
        .map(|(p, f)| *f && written.contains(p.aggregate_id.as_str()))
        .collect())
}

/// One statement for `rows`; the ids it inserted.
async fn insert(
    inner: &Inner,
    connection: &mut PgConnection,
    rows: &[&Pending],
) -> Result<HashSet<String>, sqlx::Error> {
    let column = |f: fn(&Pending) -> &str| rows.iter().map(|p| f(p)).collect::<Vec<_>>();
    let json = |f: fn(&Pending) -> &RawValue| rows.iter().map(|p| Json(f(p))).collect::<Vec<_>>();
    let mut wants: Vec<Json<&RawValue>> = Vec::new();
    let mut want_n: Vec<i64> = Vec::with_capacity(rows.len());
    for row in rows {
        let at = match wants.iter().position(|w| w.0.get() == row.params.get()) {
            Some(at) => at,
            None => {
                wants.push(Json(&row.params));
                wants.len() - 1
            }
        };
        // Positions are 1-based (`WITH ORDINALITY`); a group holds at most MAX_GROUP rows.
        want_n.push(i64::try_from(at + 1).unwrap_or(i64::MAX));
    }
    let written: Vec<String> = sqlx::query_scalar(&inner.sql)
        .bind(inner.aggregate_type)
        .bind(column(|p| &p.aggregate_id))
        .bind(column(|p| &p.event_type))
        .bind(column(|p| &p.event_version))
        .bind(json(|p| &*p.payload))
        .bind(json(|p| &*p.metadata))
        .bind(wants)
        .bind(want_n)
        .fetch_all(connection)
        .await?;
    Ok(written.into_iter().collect())
}
