//! The Tenant aggregate: a hosting company using mpanel.
//!
//! DESIGN lists four aggregates; tenants are a fifth because the catalog read model must be
//! rebuildable from the log alone (ADR 0002). A tenant is registered once, with a slug that
//! never changes (its id is derived from it).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::values::TenantSlug;

/// A hosting company. The aggregate id is [`crate::ids::tenant_id`] of the slug.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    registered: Option<(TenantSlug, String)>,
}

/// Commands on a tenant.
#[derive(Debug, Clone, PartialEq)]
pub enum TenantCommand {
    /// Registers the tenant; repeating it with the same values is a no-op (seeding is
    /// idempotent).
    Register {
        /// The tenant's slug.
        slug: TenantSlug,
        /// Display name.
        name: String,
        /// When (from the caller's clock).
        at: DateTime<Utc>,
    },
}

/// Events of a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TenantEvent {
    /// A hosting company started using mpanel.
    #[serde(rename_all = "camelCase")]
    TenantRegistered {
        /// Its slug.
        slug: TenantSlug,
        /// Its display name.
        name: String,
        /// When.
        registered_at: DateTime<Utc>,
    },
}

impl DomainEvent for TenantEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TenantRegistered { .. } => "TenantRegistered".into(),
        }
    }
    fn event_version(&self) -> String {
        crate::EVENT_VERSION_1.into()
    }
}

/// Why a tenant command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    /// The id is taken by a tenant with other values.
    #[error("tenant already registered with different values")]
    AlreadyRegisteredDifferently,
    /// The display name is empty or too long.
    #[error("name must be 1 to 200 characters")]
    InvalidName,
}

impl Tenant {
    fn decide(&self, command: TenantCommand) -> Result<Vec<TenantEvent>, TenantError> {
        let TenantCommand::Register { slug, name, at } = command;
        if name.trim().is_empty() || name.chars().count() > 200 {
            return Err(TenantError::InvalidName);
        }
        match &self.registered {
            Some((s, n)) if *s == slug && *n == name => Ok(vec![]),
            Some(_) => Err(TenantError::AlreadyRegisteredDifferently),
            None => Ok(vec![TenantEvent::TenantRegistered {
                slug,
                name,
                registered_at: at,
            }]),
        }
    }
}

impl Aggregate for Tenant {
    const TYPE: &'static str = "Tenant";
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = TenantError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events = self.decide(command)?;
        crate::emit(self, sink, events).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            TenantEvent::TenantRegistered { slug, name, .. } => {
                self.registered = Some((slug, name))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Tester = TestFramework<Tenant>;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).expect("valid timestamp")
    }
    fn register(name: &str) -> TenantCommand {
        TenantCommand::Register {
            slug: TenantSlug::parse("migrahosting").expect("valid"),
            name: name.into(),
            at: at(),
        }
    }
    fn registered(name: &str) -> TenantEvent {
        TenantEvent::TenantRegistered {
            slug: TenantSlug::parse("migrahosting").expect("valid"),
            name: name.into(),
            registered_at: at(),
        }
    }

    #[test]
    fn registers_once() {
        Tester::with(())
            .given_no_previous_events()
            .when(register("Migra"))
            .then_expect_events(vec![registered("Migra")]);
    }

    #[test]
    fn repeating_registration_is_a_no_op() {
        Tester::with(())
            .given(vec![registered("Migra")])
            .when(register("Migra"))
            .then_expect_events(vec![]);
    }

    #[test]
    fn refuses_different_values_and_bad_names() {
        Tester::with(())
            .given(vec![registered("Migra")])
            .when(register("Other"))
            .then_expect_error(TenantError::AlreadyRegisteredDifferently);
        Tester::with(())
            .given_no_previous_events()
            .when(register("  "))
            .then_expect_error(TenantError::InvalidName);
    }
}
