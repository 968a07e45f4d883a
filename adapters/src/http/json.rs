//! Reading JSON bodies field by field, so every refusal names the field at fault.
//!
//! axum's `Json` extractor answers malformed input with a plain-text 400/422 that names no
//! field; the API promises problem+json with a field-level reason instead.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use serde_json::{Map, Value};

use super::problem::{ApiError, FieldError};

/// Checks the content type and parses the body as a JSON object.
///
/// # Errors
/// 415 for a non-JSON content type, 413 for an oversized body, 422 (`body`) for malformed JSON
/// or a non-object.
pub fn object(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Map<String, Value>, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    parse_object(&bytes(body)?)
}

/// The body's bytes, as the extractor read them.
///
/// # Errors
/// 413 for an oversized body, 422 (`body`) when it could not be read.
pub fn bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::field("body", "could not be read")
        }
    })
}

/// Parses `body` as a JSON object.
///
/// # Errors
/// 422 (`body`) for malformed JSON or a non-object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::field("body", "must be a JSON object")),
        Err(e) => Err(ApiError::field(
            "body",
            format!(
                "is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        )),
    }
}

/// Parses a UUID from a path segment or field, naming `field` when it is not one.
///
/// # Errors
/// A 422 for `field`.
pub fn parse_uuid(field: &str, raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| ApiError::field(field, "must be a UUID"))
}

/// Collects field errors while parsing a body, so a client sees all of them at once.
#[derive(Default)]
pub struct Fields {
    errors: Vec<FieldError>,
}

impl Fields {
    /// Parses a required string field with `parse`.
    pub fn required<T, E: std::fmt::Display>(
        &mut self,
        body: &Map<String, Value>,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        match body.get(name) {
            None | Some(Value::Null) => {
                self.errors.push(FieldError::new(name, "is required"));
                None
            }
            Some(value) => self.parse_value(name, value, parse),
        }
    }

    /// Parses an optional string field with `parse` (absent and `null` are `None`).
    pub fn optional<T, E: std::fmt::Display>(
        &mut self,
        body: &Map<String, Value>,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<Option<T>> {
        match body.get(name) {
            None | Some(Value::Null) => Some(None),
            Some(value) => self.parse_value(name, value, parse).map(Some),
        }
    }

    fn parse_value<T, E: std::fmt::Display>(
        &mut self,
        name: &str,
        value: &Value,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let Value::String(text) = value else {
            self.errors.push(FieldError::new(name, "must be a string"));
            return None;
        };
        match parse(text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.push(FieldError::new(name, e.to_string()));
                None
            }
        }
    }

    /// Records an error found by a caller's own check.
    pub fn push(&mut self, name: &str, reason: &str) {
        self.errors.push(FieldError::new(name, reason));
    }

    /// The collected errors, if any.
    ///
    /// # Errors
    /// A 422 listing every field at fault.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}
