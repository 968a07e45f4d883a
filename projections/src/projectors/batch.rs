//! Set-based projection: what the row-per-aggregate projectors share.
//!
//! One statement per event costs ~50–100 µs of Postgres CPU, which caps a rebuild near 10 k
//! events/s (docs/benchmarks.md). The projectors whose rows are keyed by the event's aggregate
//! therefore apply a batch as **load, fold, store**: one `SELECT … WHERE id = ANY($1)` for the
//! rows the batch touches, every event folded into those rows in memory in feed order (the
//! fold is the only place the projection's rules live), and one `INSERT … SELECT … FROM
//! UNNEST(…) ON CONFLICT … DO UPDATE` for the rows that changed. Applying one event is the
//! same code with a batch of one, so the live runner, a rebuild and a replay cannot disagree.
//!
//! The statements that *find* rows by a list of keys (`WHERE id = ANY($1)`) are not kept
//! prepared (`persistent(false)`), so each is planned for its actual list against the table's
//! current statistics: a prepared statement's generic plan, made while a table was small,
//! scans the whole table for the life of the connection, and a join against `UNNEST($1)`
//! (estimated at 100 keys whatever the list) turned into a hash join over the whole table
//! once per batch — over 400 rows read per order from `domains` alone, growing with it. The
//! lists are short: aggregates born in the batch are not looked up at all.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use serde::de::DeserializeOwned;
use sqlx::postgres::PgRow;
use sqlx::PgConnection;
use uuid::Uuid;

use super::aggregate_uuid;
use crate::runner::BatchFailure;
use crate::{FeedEvent, SubscriberError};

/// The rows a batch touches, by key: `None` for a row that does not exist (yet), with the
/// keys whose row changed. The fold mirrors SQL: an update of a missing row does nothing.
pub(super) struct Rows<K, R> {
    /// Each touched key's row, and whether a fold step has changed it.
    rows: HashMap<K, (Option<R>, bool)>,
    /// The changed keys, in the order they were first changed (a deterministic store order).
    changed: Vec<K>,
}

impl<K: Eq + Hash + Clone, R> Rows<K, R> {
    /// The rows as loaded; keys absent from `loaded` start as missing rows.
    pub(super) fn new(keys: impl IntoIterator<Item = K>, loaded: Vec<(K, R)>) -> Self {
        let mut rows: HashMap<K, (Option<R>, bool)> =
            keys.into_iter().map(|k| (k, (None, false))).collect();
        for (k, r) in loaded {
            rows.insert(k, (Some(r), false));
        }
        Self {
            rows,
            changed: Vec::new(),
        }
    }

    /// The row under `key` for a fold step to change (marked changed even when the step then
    /// leaves it alone: storing an unchanged row is harmless).
    pub(super) fn entry(&mut self, key: &K) -> &mut Option<R> {
        let (row, changed) = self.rows.entry(key.clone()).or_insert((None, false));
        if !*changed {
            *changed = true;
            self.changed.push(key.clone());
        }
        row
    }

    /// The changed rows that exist, in the order they were first changed.
    pub(super) fn into_changed(mut self) -> Vec<R> {
        self.changed
            .iter()
            .filter_map(|k| self.rows.remove(k).and_then(|(row, _)| row))
            .collect()
    }
}

/// The keys of a batch without repeats (an aggregate has several events in one batch), for
/// a lookup that returns each row once.
pub(super) fn distinct<K: Ord>(keys: impl Iterator<Item = K>) -> Vec<K> {
    let mut keys: Vec<K> = keys.collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// A batch's events of one aggregate type, decoded, each with its aggregate id and the event
/// as read; `born` holds the aggregates whose sequence-1 event is among them.
pub(super) struct Decoded<'a, E> {
    pub(super) events: Vec<(Uuid, &'a FeedEvent, E)>,
    pub(super) born: HashSet<Uuid>,
}

/// Decodes the events of `aggregate_type` in `events` (the others are not this projector's).
pub(super) fn decode<'a, E: DeserializeOwned>(
    events: &'a [FeedEvent],
    aggregate_type: &str,
) -> Result<Decoded<'a, E>, BatchFailure> {
    let mut decoded = Decoded {
        events: Vec::new(),
        born: HashSet::new(),
    };
    for event in events.iter().filter(|e| e.aggregate_type == aggregate_type) {
        let id = aggregate_uuid(event).map_err(blame(event))?;
        if event.sequence == 1 {
            decoded.born.insert(id);
        }
        decoded
            .events
            .push((id, event, event.decode::<E>().map_err(blame(event))?));
    }
    Ok(decoded)
}

/// The rows of `decoded`'s aggregates, loaded with `select` (rows by `id = ANY($1)`) for the
/// ones that may exist, the others missing.
pub(super) async fn load<E, R>(
    tx: &mut PgConnection,
    select: &str,
    decoded: &Decoded<'_, E>,
    key: impl Fn(&R) -> Uuid,
) -> Result<Rows<Uuid, R>, sqlx::Error>
where
    R: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
{
    let ids = distinct(decoded.events.iter().map(|(id, ..)| *id));
    let lookup = maybe_stored(&ids, &decoded.born);
    let loaded: Vec<R> = if lookup.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(select)
            .persistent(false)
            .bind(&lookup)
            .fetch_all(&mut *tx)
            .await?
    };
    Ok(Rows::new(
        ids,
        loaded.into_iter().map(|r| (key(&r), r)).collect(),
    ))
}

/// The keys among `keys` whose row may already exist: all but those whose aggregate was born
/// in this batch (its event with sequence 1 is here). A row is only ever written by its
/// aggregate's events and each event is applied once, so an aggregate with no event before
/// this batch has no row: looking it up would only cost an index probe per key, which in a
/// rebuild is nearly every key.
fn maybe_stored(keys: &[Uuid], born: &HashSet<Uuid>) -> Vec<Uuid> {
    keys.iter().filter(|k| !born.contains(k)).copied().collect()
}

/// One column of `rows`, as a parameter of `UNNEST` (which takes a table column by column).
pub(super) fn column<'a, R, T>(rows: &'a [R], value: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(value).collect()
}

/// A `text[]` value of one row as a JSON array: `UNNEST` flattens nested arrays, so a column of
/// arrays travels as `jsonb[]` and the statement turns each back with
/// `ARRAY(SELECT jsonb_array_elements_text(…))` (no separator is safe in DNS record contents).
pub(super) fn text_array(items: &[String]) -> serde_json::Value {
    serde_json::Value::from(items.to_vec())
}

/// Blames a set-based statement's failure on the batch's first event (it cannot tell which
/// event's row it was), so the runner records a position that is in the batch.
pub(super) fn blame_first(events: &[FeedEvent]) -> impl Fn(SubscriberError) -> BatchFailure + '_ {
    move |error| BatchFailure {
        position: events.first().map_or(0, |e| e.position),
        error,
    }
}

/// Blames one event.
pub(super) fn blame(event: &FeedEvent) -> impl Fn(SubscriberError) -> BatchFailure + '_ {
    move |error| BatchFailure {
        position: event.position,
        error,
    }
}

/// A saturating conversion for counters stored as `integer` (attempts, generations, TTLs):
/// a value past `i32::MAX` is stored as `i32::MAX` rather than failing the projection.
pub(super) fn int(value: impl TryInto<i32>) -> i32 {
    value.try_into().unwrap_or(i32::MAX)
}
