//! mpanel's read side: the durable, gap-safe event feed and what consumes it.
//!
//! cqrs-es runs its query processors in-process after a commit, so a crash loses them, and its
//! replay orders by per-aggregate sequence. mpanel does not use them: every consumer of events
//! (projectors, the saga, the audit sealer) is a *subscriber* that reads the `events`
//! table itself, in `(tx_id, global_position)` order, from a checkpoint stored in Postgres
//! (DESIGN §3). See [`feed`] for the ordering rule and [`runner`] for delivery guarantees.

pub mod audit;
pub mod feed;
pub mod projectors;
pub mod rebuild;
pub mod runner;
pub mod status;

pub use feed::{Checkpoint, FeedEvent};
pub use runner::{Projector, Reactor, RunnerConfig, Subscriber};

/// Why a subscriber could not process an event. The runner records it in `checkpoints` and
/// retries the same event later, so a poison event stops only its own subscriber.
#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    /// A database call failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// An event payload did not decode into its type.
    #[error("event {position} ({event_type}) does not decode: {source}")]
    Decode {
        /// The event's global position.
        position: i64,
        /// The event's type.
        event_type: String,
        /// The serde error.
        source: serde_json::Error,
    },
    /// Anything else a subscriber wants to report (a failed command, say).
    #[error("{0}")]
    Other(String),
}
