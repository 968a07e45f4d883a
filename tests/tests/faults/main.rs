//! The fault tier of issue #9: black-box tests that break what the real `mpanel` binary runs on
//! — Postgres and Redis outages, provisioning hosts refusing work, writers racing on one
//! aggregate, a clock jump — with orders in flight, and then prove that no accepted order was
//! lost or duplicated and that the event log verifies.
//!
//! It is a test target of its own, not run by a plain `cargo test` (`test = false` in
//! `tests/Cargo.toml`): `scripts/test.sh` runs it as its own step after the workspace tests
//! (`FAULTS=0` skips it locally; CI always runs it), then regenerates `docs/reliability.md` from
//! the ledger these tests and the attack tests elsewhere in `tests/` write. Run it alone with
//! `cargo test -p mpanel-tests --test faults`. Other kill, crash and attack scenarios live
//! beside the feature they break (`provisioning.rs`, `orders_webhook.rs`, `auth.rs`, …) and
//! record themselves in the same ledger.

mod clock;
mod postgres;
mod provisioning;
mod races;
mod redis;
