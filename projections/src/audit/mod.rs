//! Tamper evidence for the event log, and the tools auditors and operators use on it
//! (DESIGN §6).
//!
//! - [`AuditSealer`] is a feed subscriber: per event, in feed order `(tx_id, global_position)`,
//!   it stores `hash = sha256(prev_hash || canonical bytes)` in `event_seals`.
//! - [`verify_database`] walks events and seals side by side and names the first position whose
//!   event was changed, deleted or slipped in below the sealer's checkpoint.
//! - [`export`] writes the sealed log as NDJSON (one event per line, with its seal) so it can be
//!   checked without the database ([`verify_export`]) and loaded into an empty one
//!   ([`replay_export`]); [`read_model_checksums`] then shows the rebuilt read models equal the
//!   originals.
//!
//! What a hash chain cannot do on its own: someone with write access who rewrites an event *and
//! every seal after it* produces a consistent chain, and appending at the head looks like any
//! other write. Both are caught by comparing the head hash with one kept outside the database
//! (an earlier `verify` output or export); `docs/OPERATIONS.md` says how.

mod canonical;
mod checksums;
mod export;
mod replay;
mod sealer;
mod verify;

pub use canonical::{
    canonical_bytes, canonical_time, seal_event, seal_hash, write_canonical_json, Hash, GENESIS,
    HASH_LEN,
};
pub use checksums::{read_model_checksums, READ_MODEL_TABLES};
pub use export::{export, verify_export, ExportFilter, ExportLine, ExportScope, ExportSummary};
pub use replay::{replay_export, ReplaySummary, DEFAULT_REPLAY_BATCH};
pub use sealer::{AuditSealer, SEALER_NAME};
pub use verify::verify_database;

use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

/// Begins a read-only `REPEATABLE READ` transaction: one consistent snapshot of the log, seals
/// and read models for as long as a walk over them takes, and, taking no transaction id, never
/// holding the feed back.
async fn snapshot(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The outcome of a chain verification, live or offline. Serialises as camelCase JSON with a
/// `status` tag (`"ok"` / `"broken"`), ready for `/api/audit/verify` and the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum VerifyReport {
    /// Every sealed event matches its seal and the chain is unbroken.
    #[serde(rename_all = "camelCase")]
    Ok {
        /// Position of the last sealed event in feed order (`None` for an empty log).
        head_position: Option<i64>,
        /// Hex of the last seal's hash: the value to keep outside the database, and to compare
        /// with a later verification or an export's last line.
        head_hash: String,
        /// How many sealed events were verified.
        events: u64,
        /// Events newer than the sealer's checkpoint: not sealed *yet*, so not an error
        /// (always 0 for an export).
        unsealed_tail: u64,
        /// Hex `prevHash` of the first verified event: all zeros when the chain starts at the
        /// beginning of the log; otherwise the seal an `--after` export continues from.
        first_prev_hash: String,
    },
    /// The first position, in feed (or file) order, where the chain does not hold.
    #[serde(rename_all = "camelCase")]
    Broken {
        /// The event's global position.
        position: i64,
        /// What is wrong there.
        kind: BreakKind,
        /// Events verified good before it.
        events: u64,
        /// A sentence for humans.
        detail: String,
    },
}

impl VerifyReport {
    /// Whether the chain held.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok { .. })
    }
}

/// How the chain is broken at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum BreakKind {
    /// The event's canonical bytes no longer hash to its seal: the event (or its seal's hash)
    /// was edited.
    Changed,
    /// A seal whose event is gone: the event was deleted (or its position/tx id edited).
    Deleted,
    /// An event without a seal that the sealer has already passed: it was written into the
    /// past, not appended through the feed.
    Inserted,
    /// A seal's `prev_hash` is not the previous seal's hash: seals were edited, removed together
    /// with their events, or reordered (offline: a line is missing or out of order).
    ChainBroken,
}

/// Why an audit operation could not run (as opposed to finding the chain broken, which is a
/// [`VerifyReport::Broken`]).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A database call failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Reading the export or writing it failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An export line is not a valid export record.
    #[error("line {line}: {reason}")]
    Malformed {
        /// 1-based line number in the file.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// `export --after N` named a position that is neither an event nor a seal.
    #[error("no event at position {0}")]
    UnknownPosition(i64),
    /// Replay only writes into an empty log, so positions cannot collide and the replayed
    /// chain is exactly the exported one.
    #[error("the target database already has events or seals; replay needs an empty, freshly migrated database")]
    NotEmpty,
    /// Replay met a line whose seal does not match its content; lines before it were already
    /// committed, so the target database should be dropped.
    #[error("line {line} (position {position}) does not match its seal; {committed} events were already committed — drop the target database")]
    Tampered {
        /// 1-based line number.
        line: u64,
        /// The line's position.
        position: i64,
        /// Events committed before it.
        committed: u64,
    },
}
