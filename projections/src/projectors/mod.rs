//! The read-model projectors. Each owns its tables and is a feed subscriber of its own (its
//! own checkpoint), so a poison event in one stops only that one.

mod batch;
mod catalog;
mod customers;
mod jobs;
mod orders;
mod provisioning;
mod subscriptions;

use std::sync::Arc;

pub use catalog::CatalogProjector;
pub use customers::CustomersProjector;
pub use jobs::JobsProjector;
pub use orders::OrdersProjector;
pub use provisioning::ProvisioningProjector;
pub use subscriptions::SubscriptionsProjector;

use crate::runner::Subscriber;
use crate::{FeedEvent, SubscriberError};

/// Every projector, as subscribers for the runner, including the audit sealer (it is one: its
/// seals commit with its checkpoint).
#[must_use]
pub fn all() -> Vec<Subscriber> {
    vec![
        Subscriber::Projector(Arc::new(CatalogProjector)),
        Subscriber::Projector(Arc::new(CustomersProjector)),
        Subscriber::Projector(Arc::new(OrdersProjector)),
        Subscriber::Projector(Arc::new(SubscriptionsProjector)),
        Subscriber::Projector(Arc::new(JobsProjector)),
        Subscriber::Projector(Arc::new(ProvisioningProjector)),
        Subscriber::Projector(Arc::new(crate::audit::AuditSealer)),
    ]
}

/// The event's aggregate id as a UUID (every mpanel aggregate id is one).
fn aggregate_uuid(event: &FeedEvent) -> Result<uuid::Uuid, SubscriberError> {
    uuid::Uuid::parse_str(&event.aggregate_id).map_err(|e| {
        SubscriberError::Other(format!(
            "event {} has a non-UUID aggregate id: {e}",
            event.position
        ))
    })
}
