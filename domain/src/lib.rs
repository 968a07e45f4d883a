//! mpanel's domain: the rules of orders, subscriptions, provisioning jobs and the catalog.
//!
//! Everything here is pure. Aggregates implement [`cqrs_es::Aggregate`]; their `handle` looks
//! only at the aggregate's own state and the command, and the caller puts into the command
//! everything else a decision needs (the time, ids, facts looked up in the catalog). That is
//! what makes every rule testable given/when/then without a database, and what makes replaying
//! the log deterministic. No sqlx, HTTP, Redis, SSH, clock or randomness may enter this crate.

pub mod ids;
pub mod job;
pub mod order;
pub mod product;
pub mod saga;
pub mod step;
pub mod subscription;
pub mod tenant;
pub mod values;

pub use step::ProvisioningStep;

/// The version every event type currently has. A payload change means a new version plus an
/// upcaster, never an edit of a stored shape (see `docs/EVENTS.md`).
pub const EVENT_VERSION_1: &str = "1";

/// Applies the events a pure `decide` function returned through the sink, so `handle` stays a
/// one-liner and every decision can be read as "state + command → events or error".
pub(crate) async fn emit<A: cqrs_es::Aggregate>(
    aggregate: &mut A,
    sink: &cqrs_es::event_sink::EventSink<A>,
    events: Vec<A::Event>,
) {
    for event in events {
        sink.write(event, aggregate).await;
    }
}
