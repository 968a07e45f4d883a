//! Exporting the sealed log as NDJSON, and verifying such a file without a database.

use std::io::BufRead;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use uuid::Uuid;

use super::canonical::{canonical_time, seal_event, Hash, GENESIS};
use super::{AuditError, BreakKind, VerifyReport};
use crate::feed::FeedRow;
use crate::FeedEvent;

/// One line of an export: the event's stored fields plus its seal. camelCase JSON; `payload`
/// and `metadata` are the stored JSON values, `recordedAt` is in the canonical form, hashes are
/// lowercase hex. Everything needed to recompute the seal is on the line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportLine {
    /// Global position.
    pub position: i64,
    /// The writing transaction's id (informational: not hashed, and new after a replay).
    pub tx_id: i64,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Sequence within the aggregate.
    pub sequence: i64,
    /// Event type.
    pub event_type: String,
    /// Event version.
    pub event_version: String,
    /// Payload.
    pub payload: Value,
    /// Metadata.
    pub metadata: Value,
    /// RFC 3339 UTC with microseconds.
    pub recorded_at: String,
    /// Hex of the seal's hash.
    pub hash: String,
    /// Hex of the previous seal's hash in the full chain.
    pub prev_hash: String,
}

impl ExportLine {
    /// The line for a sealed event.
    ///
    /// # Errors
    /// Only if the payload is not JSON, which a stored event's cannot be.
    pub fn new(event: FeedEvent, hash: &[u8], prev_hash: &[u8]) -> Result<Self, serde_json::Error> {
        let payload = event.payload_value()?;
        Ok(Self {
            position: event.position,
            tx_id: event.tx_id,
            recorded_at: canonical_time(event.recorded_at),
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            sequence: event.sequence,
            event_type: event.event_type,
            event_version: event.event_version,
            payload,
            metadata: event.metadata,
            hash: hex::encode(hash),
            prev_hash: hex::encode(prev_hash),
        })
    }

    /// The event and seal the line holds, or why it does not hold one.
    ///
    /// # Errors
    /// A description of the malformed field.
    pub fn decode(self) -> Result<(FeedEvent, Hash, Hash), String> {
        let recorded_at = DateTime::parse_from_rfc3339(&self.recorded_at)
            .map_err(|e| format!("recordedAt is not RFC 3339: {e}"))?
            .with_timezone(&Utc);
        let hash = decode_hash(&self.hash).map_err(|e| format!("hash: {e}"))?;
        let prev = decode_hash(&self.prev_hash).map_err(|e| format!("prevHash: {e}"))?;
        let event = FeedEvent {
            position: self.position,
            tx_id: self.tx_id,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type,
            event_version: self.event_version,
            payload: serde_json::value::to_raw_value(&self.payload)
                .map_err(|e| format!("payload: {e}"))?,
            metadata: self.metadata,
            recorded_at,
        };
        Ok((event, hash, prev))
    }
}

fn decode_hash(text: &str) -> Result<Hash, String> {
    let bytes = hex::decode(text).map_err(|e| e.to_string())?;
    Hash::try_from(bytes.as_slice()).map_err(|_| format!("{} bytes, not 32", bytes.len()))
}

/// Which part of the log to export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportFilter {
    /// Start after the event at this position *in feed order* (0 = from the beginning). Pass
    /// the last position of the previous page to page through the log.
    pub after: i64,
    /// Only events of this tenant's aggregates: the Tenant aggregate itself and every Product,
    /// Order, Subscription and Job whose creating event carries this `tenantId`. A filtered
    /// export is a sub-chain (see [`ExportScope::SubChain`]).
    pub tenant: Option<Uuid>,
    /// At most this many lines (for paged HTTP reads); `None` = all.
    pub limit: Option<i64>,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportSummary {
    /// Lines written.
    pub events: u64,
    /// Position of the last line: the `after` of the next page.
    pub last_position: Option<i64>,
    /// Hex hash of the last line's seal.
    pub last_hash: Option<String>,
}

/// Resolves `after` (a position) to its place in feed order.
const AFTER_KEY: &str = "\
SELECT tx_id::text::bigint FROM events WHERE global_position = $1 \
UNION ALL SELECT tx_id::text::bigint FROM event_seals WHERE global_position = $1 LIMIT 1";

/// Sealed events after a feed-order key, optionally of one tenant's aggregates.
const SELECT_SEALED: &str = "\
SELECT e.global_position, e.tx_id::text::bigint AS tx_id, e.aggregate_type, e.aggregate_id, \
       e.sequence, e.event_type, e.event_version, e.payload, e.metadata, e.recorded_at, \
       s.hash, s.prev_hash \
FROM events e JOIN event_seals s ON s.global_position = e.global_position AND s.tx_id = e.tx_id \
WHERE (e.tx_id, e.global_position) > ($1::bigint::text::xid8, $2) \
  AND ($3::uuid IS NULL OR (e.aggregate_type, e.aggregate_id) IN ( \
        SELECT o.aggregate_type, o.aggregate_id FROM events o \
        WHERE (o.aggregate_type = 'Tenant' AND o.aggregate_id = $3::text) \
           OR o.payload -> o.event_type ->> 'tenantId' = $3::text)) \
ORDER BY e.tx_id, e.global_position \
LIMIT $4";

#[derive(sqlx::FromRow)]
struct SealedRow {
    #[sqlx(flatten)]
    event: FeedRow,
    hash: Vec<u8>,
    prev_hash: Vec<u8>,
}

/// Streams the sealed log (events that have a seal; the few not sealed yet come in a later
/// export) to `out` as NDJSON in feed order, one [`ExportLine`] per line, in constant memory.
///
/// Reads one read-only `REPEATABLE READ` snapshot, so a long export sees a consistent log and,
/// taking no transaction id, never holds the feed back. Seals are exported as stored: an
/// export of a tampered database fails offline verification where the database does.
///
/// # Errors
/// [`AuditError::UnknownPosition`] when `after` names no event; database and write errors.
pub async fn export<W>(
    pool: &PgPool,
    filter: &ExportFilter,
    out: &mut W,
) -> Result<ExportSummary, AuditError>
where
    W: AsyncWrite + Unpin + Send,
{
    let mut tx = super::snapshot(pool).await?;
    let after_tx: i64 = if filter.after == 0 {
        0
    } else {
        sqlx::query_scalar(AFTER_KEY)
            .bind(filter.after)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(AuditError::UnknownPosition(filter.after))?
    };
    let mut summary = ExportSummary::default();
    {
        let mut rows = sqlx::query_as::<_, SealedRow>(SELECT_SEALED)
            .bind(after_tx)
            .bind(filter.after)
            .bind(filter.tenant)
            .bind(filter.limit)
            .fetch(&mut *tx);
        let mut buf = Vec::with_capacity(1024);
        while let Some(row) = rows.try_next().await? {
            let line =
                ExportLine::new(row.event.into(), &row.hash, &row.prev_hash).map_err(|e| {
                    AuditError::Io {
                        context: "decoding a stored payload",
                        source: e.into(),
                    }
                })?;
            buf.clear();
            serde_json::to_writer(&mut buf, &line).map_err(|e| AuditError::Io {
                context: "encoding an export line",
                source: e.into(),
            })?;
            buf.push(b'\n');
            out.write_all(&buf).await.map_err(|source| AuditError::Io {
                context: "writing the export",
                source,
            })?;
            summary.events += 1;
            summary.last_position = Some(line.position);
            summary.last_hash = Some(line.hash);
        }
    }
    out.flush().await.map_err(|source| AuditError::Io {
        context: "writing the export",
        source,
    })?;
    tx.commit().await?;
    Ok(summary)
}

/// What an offline verification may assume about the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportScope {
    /// An unfiltered export (`after` allowed): besides each line's own seal, every line's
    /// `prevHash` must be the previous line's `hash`, so a missing, added or reordered line is
    /// found. The first line's `prevHash` is taken as given (zeros when exported from the
    /// start).
    Full,
    /// A tenant-filtered export: lines of other tenants are missing by design, so only each
    /// line's own seal is checked. Continuity, and whether a line belongs to the real chain at
    /// all, can only be checked against the database or a full export (compare hashes).
    SubChain,
}

/// Verifies an export file without a database: every line's `hash` must be
/// `sha256(prevHash || canonical bytes of the line)`, and for [`ExportScope::Full`] the lines
/// must chain. Reads line by line, in constant memory. Blank lines are ignored.
///
/// # Errors
/// [`AuditError::Io`] when reading fails, [`AuditError::Malformed`] for a line that is not an
/// export record. A line that does not verify is an `Ok(VerifyReport::Broken)`.
pub fn verify_export(reader: impl BufRead, scope: ExportScope) -> Result<VerifyReport, AuditError> {
    let mut events = 0u64;
    let mut first_prev: Option<Hash> = None;
    let mut last: Option<(i64, Hash)> = None;
    for record in records(reader) {
        let (line_no, event, hash, prev) = record?;
        let broken = |kind, detail: String| VerifyReport::Broken {
            position: event.position,
            kind,
            events,
            detail: format!("line {line_no}: {detail}"),
        };
        if scope == ExportScope::Full {
            if let Some((last_position, last_hash)) = last {
                if prev != last_hash {
                    return Ok(broken(
                        BreakKind::ChainBroken,
                        format!(
                            "prevHash is not the hash of the line before (position \
                             {last_position}): a line is missing, added or out of order"
                        ),
                    ));
                }
            }
        }
        if seal_event(&prev, &event) != hash {
            return Ok(broken(
                BreakKind::Changed,
                "the event's canonical bytes do not hash to the line's seal".into(),
            ));
        }
        first_prev.get_or_insert(prev);
        last = Some((event.position, hash));
        events += 1;
    }
    Ok(VerifyReport::Ok {
        head_position: last.map(|(position, _)| position),
        head_hash: hex::encode(last.map_or(GENESIS, |(_, hash)| hash)),
        events,
        unsealed_tail: 0,
        first_prev_hash: hex::encode(first_prev.unwrap_or(GENESIS)),
    })
}

/// The records of an export, in file order, each as its 1-based line number, event, hash and
/// previous hash; blank lines are skipped. Verification and replay both read files this way.
pub(super) fn records(
    reader: impl BufRead,
) -> impl Iterator<Item = Result<(u64, FeedEvent, Hash, Hash), AuditError>> {
    reader.lines().enumerate().filter_map(|(index, text)| {
        let line = u64::try_from(index).unwrap_or(u64::MAX).saturating_add(1);
        match text {
            Err(source) => Some(Err(AuditError::Io {
                context: "reading the export",
                source,
            })),
            Ok(text) if text.trim().is_empty() => None,
            Ok(text) => Some(parse_line(&text, line).map(|(e, h, p)| (line, e, h, p))),
        }
    })
}

/// Parses one export line into its event and seal.
fn parse_line(text: &str, line: u64) -> Result<(FeedEvent, Hash, Hash), AuditError> {
    serde_json::from_str::<ExportLine>(text)
        .map_err(|e| e.to_string())
        .and_then(ExportLine::decode)
        .map_err(|reason| AuditError::Malformed { line, reason })
}
