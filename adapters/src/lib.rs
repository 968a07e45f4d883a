//! mpanel's edges: everything that touches the outside world.
//!
//! The event store wiring and command bus ([`bus`]), the saga runner ([`saga`]), the HTTP API
//! ([`http`]), configuration ([`config`]) and the demo seed ([`seed`]). The domain stays pure;
//! this crate puts the clock, ids, database and network around it.

pub mod auth;
pub mod bus;
pub mod config;
pub mod group_commit;
pub mod http;
pub mod intake;
pub mod metadata;
pub mod metrics;
pub mod passwords;
pub mod provisioners;
pub mod queue;
pub mod runtime;
pub mod saga;
pub mod seed;
pub mod telemetry;
pub mod worker;

/// The SQL migrations, embedded in the binary so `mpanel migrate` needs no files on disk.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
