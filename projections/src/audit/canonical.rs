//! The canonical bytes of an event and the seal hash over them.
//!
//! The seal must not depend on how `payload`/`metadata` were spelled when written: `jsonb`
//! keeps the value, not the key order or whitespace. So the hashed bytes are a JSON text
//! derived from the *value*: objects with keys sorted by their UTF-8 bytes, no whitespace,
//! strings and numbers as `serde_json` writes them. Keys are sorted here explicitly rather than
//! relying on `serde_json::Map` being a `BTreeMap`, because any crate in the build enabling
//! serde_json's `preserve_order` feature would silently change that. The exact rules are in
//! `docs/EVENTS.md` ("Canonical bytes"), so an auditor can recompute them without mpanel.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::FeedEvent;

/// Length of a seal hash (SHA-256).
pub const HASH_LEN: usize = 32;

/// A seal hash.
pub type Hash = [u8; HASH_LEN];

/// The `prev_hash` of the first event of a chain: 32 zero bytes.
pub const GENESIS: Hash = [0; HASH_LEN];

/// The canonical form of `recorded_at`: RFC 3339, UTC, `Z`, exactly six fraction digits
/// (Postgres keeps microseconds, so this is lossless and has one spelling per instant).
#[must_use]
pub fn canonical_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The bytes a seal hashes for `event`: the canonical JSON of
/// `{aggregateId, aggregateType, eventType, eventVersion, metadata, payload, position,
/// recordedAt, sequence}`. `tx_id` is deliberately left out: it changes on replay, and the
/// chain's order already commits to it.
#[must_use]
pub fn canonical_bytes(event: &FeedEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"aggregateId\":");
    write_string(&mut out, &event.aggregate_id);
    out.extend_from_slice(b",\"aggregateType\":");
    write_string(&mut out, &event.aggregate_type);
    out.extend_from_slice(b",\"eventType\":");
    write_string(&mut out, &event.event_type);
    out.extend_from_slice(b",\"eventVersion\":");
    write_string(&mut out, &event.event_version);
    out.extend_from_slice(b",\"metadata\":");
    write_canonical_json(&mut out, &event.metadata);
    out.extend_from_slice(b",\"payload\":");
    match event.payload_value() {
        Ok(payload) => write_canonical_json(&mut out, &payload),
        // Unreachable: a RawValue is valid JSON by construction. Were it not, the text as it
        // stands still makes a deterministic seal (and `events verify` would name the event).
        Err(_) => out.extend_from_slice(event.payload.get().as_bytes()),
    }
    out.extend_from_slice(b",\"position\":");
    out.extend_from_slice(event.position.to_string().as_bytes());
    out.extend_from_slice(b",\"recordedAt\":");
    write_string(&mut out, &canonical_time(event.recorded_at));
    out.extend_from_slice(b",\"sequence\":");
    out.extend_from_slice(event.sequence.to_string().as_bytes());
    out.push(b'}');
    out
}

/// `sha256(prev || canonical)`: each seal commits to its event and, through `prev`, to every
/// event before it in feed order.
#[must_use]
pub fn seal_hash(prev: &Hash, canonical: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(canonical);
    hasher.finalize().into()
}

/// The seal of `event` chained after `prev`.
#[must_use]
pub fn seal_event(prev: &Hash, event: &FeedEvent) -> Hash {
    seal_hash(prev, &canonical_bytes(event))
}

/// Appends the canonical JSON text of `value`: sorted keys, no whitespace, serde_json's
/// string escaping and number formatting.
pub fn write_canonical_json(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical_json(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_canonical_json(out, item);
            }
            out.push(b'}');
        }
    }
}

/// A JSON string literal exactly as serde_json writes it: `"` and `\` escaped, U+0008/9/A/C/D
/// as `\b \t \n \f \r`, other controls below U+0020 as `\u00xx` (lowercase hex), everything else
/// (including non-ASCII) as raw UTF-8.
fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for ch in s.chars() {
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{0C}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if u32::from(c) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", u32::from(c)).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> FeedEvent {
        FeedEvent {
            position: 42,
            tx_id: 777,
            aggregate_type: "Order".into(),
            aggregate_id: "5f1f3abd-cd1c-5e68-a6a6-3353798119da".into(),
            sequence: 2,
            event_type: "OrderFulfilled".into(),
            event_version: "1".into(),
            payload: serde_json::value::to_raw_value(&json!({"OrderFulfilled": {
                "subscriptionId": "8338a0d0-5ddf-5964-9667-113951a20d32",
                "fulfilledAt": "2026-11-25T17:29:04.512337114Z"
            }}))
            .expect("raw"),
            metadata: json!({"actor": "saga", "causation_id": "41"}),
            recorded_at: DateTime::parse_from_rfc3339("2026-11-25T17:29:05.000001Z")
                .expect("time")
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn canonical_bytes_are_sorted_compact_and_leave_out_tx_id() {
        let bytes = String::from_utf8(canonical_bytes(&event())).expect("utf8");
        assert_eq!(
            bytes,
            r#"{"aggregateId":"5f1f3abd-cd1c-5e68-a6a6-3353798119da","aggregateType":"Order","eventType":"OrderFulfilled","eventVersion":"1","metadata":{"actor":"saga","causation_id":"41"},"payload":{"OrderFulfilled":{"fulfilledAt":"2026-11-25T17:29:04.512337114Z","subscriptionId":"8338a0d0-5ddf-5964-9667-113951a20d32"}},"position":42,"recordedAt":"2026-11-25T17:29:05.000001Z","sequence":2}"#
        );
    }

    /// The worked example in docs/EVENTS.md: keep the two in step.
    #[test]
    fn documented_example_hash() {
        let hash = seal_event(&GENESIS, &event());
        assert_eq!(
            hex::encode(hash),
            "47c1a95627bcaabb73edf4274ade521cfda966e36a289035e7c589fe4637d136"
        );
    }

    #[test]
    fn strings_are_escaped_like_serde_json() {
        let tricky = "q\"b\\s/\u{08}\t\n\u{0C}\r\u{01}\u{1f}\u{7f}é€😀\u{2028}";
        let mut ours = Vec::new();
        write_string(&mut ours, tricky);
        assert_eq!(ours, serde_json::to_vec(tricky).expect("serde"));
    }

    #[test]
    fn key_order_and_whitespace_of_the_input_do_not_matter() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"z": [1, 2.5, null], "é": true, "e": false}}"#)
                .expect("a");
        let b: Value = serde_json::from_str(r#"{"a":{"e":false,"z":[1,2.5,null],"é":true},"b":1}"#)
            .expect("b");
        let (mut x, mut y) = (Vec::new(), Vec::new());
        write_canonical_json(&mut x, &a);
        write_canonical_json(&mut y, &b);
        assert_eq!(x, y);
        assert_eq!(
            String::from_utf8(x).expect("utf8"),
            r#"{"a":{"e":false,"z":[1,2.5,null],"é":true},"b":1}"#
        );
    }
}
