//! Event metadata: who caused an event, on behalf of what, within which trace.
//!
//! Stored with every event (postgres-es's `metadata` column) so an auditor can answer "who did
//! this and why" from the log alone, and so one trace spans webhook → saga → worker.

use std::collections::HashMap;

use uuid::Uuid;

/// The metadata of one command execution; every event it produces carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMetadata {
    /// `webhook`, `saga`, `worker`, `seed`, `cli`, or a user id.
    pub actor: String,
    /// A fresh id per command (kept across conflict retries of that command).
    pub command_id: Uuid,
    /// The order the work belongs to, when there is one.
    pub correlation_id: Option<Uuid>,
    /// The global position of the event that caused this command (saga commands).
    pub causation_id: Option<i64>,
    /// W3C trace context of the request or job that issued the command.
    pub traceparent: Option<String>,
}

impl EventMetadata {
    /// Metadata for a command issued by `actor`, with a fresh command id.
    #[must_use]
    pub fn new(actor: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            command_id: Uuid::new_v4(),
            correlation_id: None,
            causation_id: None,
            traceparent: None,
        }
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn correlated(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }

    /// Sets the causation (the event position that led here).
    #[must_use]
    pub fn caused_by(mut self, position: i64) -> Self {
        self.causation_id = Some(position);
        self
    }

    /// Sets the trace context.
    #[must_use]
    pub fn traced(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    /// The map cqrs-es stores.
    #[must_use]
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            ("actor".to_owned(), self.actor.clone()),
            ("command_id".to_owned(), self.command_id.to_string()),
        ]);
        if let Some(c) = self.correlation_id {
            map.insert("correlation_id".into(), c.to_string());
        }
        if let Some(c) = self.causation_id {
            map.insert("causation_id".into(), c.to_string());
        }
        if let Some(t) = &self.traceparent {
            map.insert("traceparent".into(), t.clone());
        }
        map
    }
}
