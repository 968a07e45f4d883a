//! `/api/audit/*` (auditors and super admins): the hash-chain check and the sealed event log,
//! the same as `mpanel events verify` and `mpanel events export` (DESIGN §6).
//!
//! - `GET /api/audit/verify` answers **200 whether or not the chain holds**: the request
//!   succeeded, and the report's `status` (`ok` / `broken`) is the finding. A monitor alerts on
//!   `status != "ok"`, not on the HTTP status. The chain is one for the whole log, so a tenant's
//!   auditor gets the whole log's verdict (positions, counts, hashes — never another tenant's
//!   event content).
//! - `GET /api/audit/events?after=N&limit=M` pages through the sealed log in feed order as
//!   export lines (each with `hash` and `prevHash`, verifiable offline); a tenant's auditor gets
//!   the tenant's sub-chain only, a super admin the whole log. `next` is the `after` of the next
//!   page.

use axum::extract::{Query, State};
use axum::Json;
use mpanel_projections::audit::{self, AuditError, ExportFilter, ExportLine, VerifyReport};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::openapi::{Forbidden, InvalidParameter, RateLimited, Unauthorized, Unavailable};
use super::problem::ApiError;
use super::AppState;
use crate::auth::{Caller, Role};

/// Who may read the audit endpoints (a super admin always may).
const AUDITORS: &[Role] = &[Role::Auditor];
/// Lines per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: i64 = 100;
/// Most lines per page.
pub const MAX_LIMIT: i64 = 1000;

fn audit_error(e: AuditError) -> ApiError {
    match e {
        AuditError::Database(e) => e.into(),
        AuditError::UnknownPosition(_) => ApiError::field("after", "no event has this position"),
        other => ApiError::Internal(other.to_string()),
    }
}

/// What `GET /api/audit/verify` answers (documentation only: the body is the serialized
/// `VerifyReport`, whose fields depend on `status`).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct VerifyReportBody {
    /// `ok` or `broken`.
    #[schema(example = "ok")]
    status: String,
    /// ok: position of the last sealed event (null for an empty log).
    head_position: Option<i64>,
    /// ok: hex SHA-256 of the last seal — keep it outside the database.
    head_hash: Option<String>,
    /// Events verified (ok), or verified good before the break (broken).
    events: u64,
    /// ok: events not sealed yet (normal; the sealer is a moment behind).
    unsealed_tail: Option<u64>,
    /// ok: hex `prevHash` of the first verified event (zeros from the start of the log).
    first_prev_hash: Option<String>,
    /// broken: the first position where the chain does not hold.
    position: Option<i64>,
    /// broken: `changed`, `deleted`, `inserted` or `chainBroken`.
    #[schema(example = "changed")]
    kind: Option<String>,
    /// broken: a sentence for humans.
    detail: Option<String>,
}

/// `GET /api/audit/verify`: recomputes the hash chain over the whole log.
#[utoipa::path(
    get,
    path = "/api/audit/verify",
    tag = "audit",
    responses(
        (status = 200, description = "The verification report; `status` is `ok` or `broken` (a broken chain is a finding, not an HTTP error)", body = VerifyReportBody),
        Unauthorized,
        Forbidden,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn verify(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<VerifyReport>, ApiError> {
    caller.require(AUDITORS)?;
    let report = audit::verify_database(&state.pool)
        .await
        .map_err(audit_error)?;
    Ok(Json(report))
}

/// `?after=N&limit=M`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Continue after the event at this global position, in feed order (`next` of the previous
    /// page); 0 or absent: from the start.
    #[param(value_type = Option<i64>, minimum = 0)]
    after: Option<String>,
    /// Lines per page (default 100, at most 1000).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

impl EventsQuery {
    fn filter(&self, caller: &Caller) -> Result<ExportFilter, ApiError> {
        let after = match self.after.as_deref() {
            None => 0,
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::field("after", "must be a whole number from 0"))?,
        };
        let limit = match self.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::field(
                        "limit",
                        format!("must be a whole number from 1 to {MAX_LIMIT}"),
                    )
                })?,
        };
        Ok(ExportFilter {
            after,
            tenant: caller.tenant_filter(),
            limit: Some(limit),
        })
    }
}

/// One sealed event, as `mpanel events export` writes it (documentation only).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct AuditEventLine {
    position: i64,
    tx_id: i64,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    /// The stored payload.
    #[schema(value_type = Object)]
    payload: serde_json::Value,
    /// The stored metadata.
    #[schema(value_type = Object)]
    metadata: serde_json::Value,
    /// RFC 3339 UTC with microseconds (canonical form).
    recorded_at: String,
    /// Hex SHA-256 seal: sha256(prevHash || canonical bytes), see docs/EVENTS.md.
    hash: String,
    /// Hex hash of the previous seal in the whole log.
    prev_hash: String,
}

/// A page of the sealed log.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    /// The events, in feed order.
    #[schema(value_type = Vec<AuditEventLine>)]
    items: Vec<ExportLine>,
    /// The `after` of the next page: the last item's position (null when the page is empty —
    /// nothing after `after` is sealed yet; ask again with the same `after` later).
    next: Option<i64>,
}

/// `GET /api/audit/events`: the sealed event log, paged (a tenant's auditor: the tenant's
/// sub-chain).
#[utoipa::path(
    get,
    path = "/api/audit/events",
    tag = "audit",
    params(EventsQuery),
    responses(
        (status = 200, description = "A page of sealed events in feed order, each with its seal", body = AuditPage),
        Unauthorized,
        Forbidden,
        InvalidParameter,
        RateLimited,
        Unavailable
    ),
    security(("bearer" = []))
)]
pub async fn events(
    caller: Caller,
    State(state): State<AppState>,
    Query(query): Query<EventsQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    caller.require(AUDITORS)?;
    let filter = query.filter(&caller)?;
    let mut ndjson = Vec::new();
    let summary = audit::export(&state.pool, &filter, &mut ndjson)
        .await
        .map_err(audit_error)?;
    let items = ndjson
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(serde_json::from_slice::<ExportLine>)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::Internal(format!("re-reading an export line: {e}")))?;
    Ok(Json(AuditPage {
        items,
        next: summary.last_position,
    }))
}
