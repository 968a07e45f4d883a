//! Checksums of the read models, to show that a rebuild or a replay produced the same tables.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::canonical::write_canonical_json;
use super::AuditError;

/// Every read-model table with its primary key as an `ORDER BY` clause. Text keys sort with the
/// `C` collation so two databases created with different locales agree on the row order.
pub const READ_MODEL_TABLES: &[(&str, &str)] = &[
    ("tenants", "id"),
    ("products", "id"),
    ("prices", "id"),
    ("customers", "id"),
    ("orders", "id"),
    ("subscriptions", "id"),
    ("jobs", "id"),
    ("domains", "domain COLLATE \"C\""),
    ("dns_zones", "zone COLLATE \"C\""),
    (
        "dns_records",
        "zone COLLATE \"C\", name COLLATE \"C\", record_type COLLATE \"C\"",
    ),
    ("hosting_accounts", "domain COLLATE \"C\""),
    ("mail_accounts", "address COLLATE \"C\""),
];

/// Hex SHA-256 per read-model table over its rows in primary-key order, each row as the
/// canonical JSON of `to_jsonb(row)` followed by a newline. Equal checksums in two databases
/// mean equal tables; a replay test compares the original and the replayed database this way.
///
/// Every column is included: no projector writes a value of its own clock or randomness (times
/// come from event payloads or `recorded_at`, which a replay keeps), so no column is volatile.
/// One read-only snapshot with `TimeZone = UTC`, so timestamps render the same everywhere.
///
/// # Errors
/// The database error.
pub async fn read_model_checksums(pool: &PgPool) -> Result<BTreeMap<String, String>, AuditError> {
    let mut tx = super::snapshot(pool).await?;
    sqlx::query("SET LOCAL TimeZone = 'UTC'")
        .execute(&mut *tx)
        .await?;
    let mut sums = BTreeMap::new();
    let mut buf = Vec::with_capacity(512);
    for (table, order) in READ_MODEL_TABLES {
        let sql = format!("SELECT to_jsonb(t) FROM {table} AS t ORDER BY {order}");
        let mut hasher = Sha256::new();
        let mut rows = sqlx::query_scalar::<_, Value>(&sql).fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            buf.clear();
            write_canonical_json(&mut buf, &row);
            buf.push(b'\n');
            hasher.update(&buf);
        }
        drop(rows);
        sums.insert((*table).to_owned(), hex::encode(hasher.finalize()));
    }
    tx.commit().await?;
    Ok(sums)
}
