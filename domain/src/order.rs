//! The Order aggregate: a payment received for one price of one tenant's catalog.
//!
//! The id is derived from the tenant and the payment reference ([`crate::ids::order_id`]), so a
//! repeated webhook for the same payment lands here again: `PlaceOrder` with the same payload is a
//! no-op (the caller answers 200 with the original order), with a different payload it is refused
//! (409) — one payment can never become two orders.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::step::ProvisioningStep;
use crate::values::{DomainName, Email, Money, PaymentReference, TenantSlug};

/// How often a price is billed. Carried in the order's snapshot so invoices and renewals can be
/// derived from the log without consulting today's catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingInterval {
    /// Billed monthly.
    Month,
    /// Billed yearly.
    Year,
    /// Paid once.
    OneTime,
}

impl BillingInterval {
    /// The stable name used in events and the API.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Month => "month",
            Self::Year => "year",
            Self::OneTime => "one_time",
        }
    }

    /// Parses the stable name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Month, Self::Year, Self::OneTime]
            .into_iter()
            .find(|i| i.as_str() == name)
    }
}

/// What was bought, frozen at the time of the order: later catalog edits or archiving never
/// change what an existing order says it sold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PriceSnapshot {
    /// The price's id.
    pub price_id: Uuid,
    /// The product's id.
    pub product_id: Uuid,
    /// The product's name at the time.
    pub product_name: String,
    /// The amount charged.
    pub amount: Money,
    /// Billing interval.
    pub interval: BillingInterval,
    /// Provisioning steps the product's plan requires.
    pub steps: Vec<ProvisioningStep>,
}

/// An order's life: paid, then fulfilled once its subscription is active, or cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Paid; provisioning under way.
    Paid,
    /// Everything bought is provisioned and active.
    Fulfilled,
    /// Cancelled before fulfilment.
    Cancelled,
}

impl OrderStatus {
    /// The stable name used in the API and read models.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paid => "PAID",
            Self::Fulfilled => "FULFILLED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

/// The facts of a placed order (the payload of [`OrderEvent::OrderPlaced`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaceOrder {
    /// The tenant whose catalog was bought from.
    pub tenant_id: Uuid,
    /// The tenant's slug (kept for readers of the log).
    pub tenant_slug: TenantSlug,
    /// The customer (found or created per tenant and address).
    pub customer_id: Uuid,
    /// The customer's address.
    pub customer_email: Email,
    /// What was bought.
    pub price: PriceSnapshot,
    /// The domain the services are for, when the plan needs one.
    pub domain: Option<DomainName>,
    /// The payment processor's reference.
    pub payment: PaymentReference,
    /// When the order was accepted.
    pub placed_at: DateTime<Utc>,
}

impl PlaceOrder {
    /// Whether `other` describes the same purchase: same tenant, customer, price, domain and
    /// payment. The time is not compared — a retried webhook arrives later.
    #[must_use]
    pub fn same_purchase_as(&self, other: &Self) -> bool {
        self.tenant_id == other.tenant_id
            && self.customer_email == other.customer_email
            && self.price.price_id == other.price.price_id
            && self.domain == other.domain
            && self.payment == other.payment
    }
}

/// Commands on an order.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // short-lived values; boxing would only add noise to matches
pub enum OrderCommand {
    /// Records a paid order (idempotent for the same purchase).
    Place(PlaceOrder),
    /// Marks the order fulfilled once its subscription is active (idempotent).
    MarkFulfilled {
        /// The subscription that became active.
        subscription_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// Cancels an order that is not yet fulfilled (idempotent).
    Cancel {
        /// Why, for the log.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Events of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // short-lived values; boxing would only add noise to matches
pub enum OrderEvent {
    /// A paid order was accepted.
    OrderPlaced(PlaceOrder),
    /// Everything bought is provisioned and the subscription active.
    #[serde(rename_all = "camelCase")]
    OrderFulfilled {
        /// The active subscription.
        subscription_id: Uuid,
        /// When.
        fulfilled_at: DateTime<Utc>,
    },
    /// The order was cancelled before fulfilment.
    #[serde(rename_all = "camelCase")]
    OrderCancelled {
        /// Why.
        reason: String,
        /// When.
        cancelled_at: DateTime<Utc>,
    },
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> String {
        match self {
            Self::OrderPlaced(_) => "OrderPlaced",
            Self::OrderFulfilled { .. } => "OrderFulfilled",
            Self::OrderCancelled { .. } => "OrderCancelled",
        }
        .into()
    }
    fn event_version(&self) -> String {
        crate::EVENT_VERSION_1.into()
    }
}

/// Why an order command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The payment already paid for an order with a different tenant, customer, price or domain.
    #[error("this payment already placed a different order")]
    DifferentPaymentForSameOrder,
    /// The plan provisions DNS, hosting or mail, which all need a domain.
    #[error("the product's plan needs a domain")]
    DomainRequired,
    /// No order exists under this id.
    #[error("order not found")]
    NotPlaced,
    /// A fulfilled order cannot be cancelled (terminate its subscription instead).
    #[error("order is already fulfilled")]
    AlreadyFulfilled,
    /// A cancelled order cannot be fulfilled.
    #[error("order is cancelled")]
    Cancelled,
    /// A cancellation needs a reason for the log.
    #[error("a reason is required")]
    ReasonRequired,
}

/// The order's state, folded from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    placed: Option<PlaceOrder>,
    status: Option<OrderStatus>,
    #[serde(default)]
    fulfilled_at: Option<DateTime<Utc>>,
    #[serde(default)]
    cancelled: Option<(String, DateTime<Utc>)>,
}

impl Order {
    /// The status, `None` before placement.
    #[must_use]
    pub fn status(&self) -> Option<OrderStatus> {
        self.status
    }

    /// The placement facts, `None` before placement.
    #[must_use]
    pub fn placed(&self) -> Option<&PlaceOrder> {
        self.placed.as_ref()
    }

    /// When the order was fulfilled, if it was (for views of the order as of a position).
    #[must_use]
    pub fn fulfilled_at(&self) -> Option<DateTime<Utc>> {
        self.fulfilled_at
    }

    /// Why and when the order was cancelled, if it was.
    #[must_use]
    pub fn cancelled(&self) -> Option<(&str, DateTime<Utc>)> {
        self.cancelled.as_ref().map(|(r, at)| (r.as_str(), *at))
    }

    fn decide(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place(place) => match &self.placed {
                Some(existing) if existing.same_purchase_as(&place) => Ok(vec![]),
                Some(_) => Err(OrderError::DifferentPaymentForSameOrder),
                None if !place.price.steps.is_empty() && place.domain.is_none() => {
                    Err(OrderError::DomainRequired)
                }
                None => Ok(vec![OrderEvent::OrderPlaced(place)]),
            },
            OrderCommand::MarkFulfilled {
                subscription_id,
                at,
            } => match self.status {
                None => Err(OrderError::NotPlaced),
                Some(OrderStatus::Fulfilled) => Ok(vec![]),
                Some(OrderStatus::Cancelled) => Err(OrderError::Cancelled),
                Some(OrderStatus::Paid) => Ok(vec![OrderEvent::OrderFulfilled {
                    subscription_id,
                    fulfilled_at: at,
                }]),
            },
            OrderCommand::Cancel { reason, at } => {
                if reason.trim().is_empty() {
                    return Err(OrderError::ReasonRequired);
                }
                match self.status {
                    None => Err(OrderError::NotPlaced),
                    Some(OrderStatus::Cancelled) => Ok(vec![]),
                    Some(OrderStatus::Fulfilled) => Err(OrderError::AlreadyFulfilled),
                    Some(OrderStatus::Paid) => Ok(vec![OrderEvent::OrderCancelled {
                        reason,
                        cancelled_at: at,
                    }]),
                }
            }
        }
    }
}

impl Aggregate for Order {
    const TYPE: &'static str = "Order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
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
            OrderEvent::OrderPlaced(placed) => {
                self.placed = Some(placed);
                self.status = Some(OrderStatus::Paid);
            }
            OrderEvent::OrderFulfilled { fulfilled_at, .. } => {
                self.status = Some(OrderStatus::Fulfilled);
                self.fulfilled_at = Some(fulfilled_at);
            }
            OrderEvent::OrderCancelled {
                reason,
                cancelled_at,
            } => {
                self.status = Some(OrderStatus::Cancelled);
                self.cancelled = Some((reason, cancelled_at));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::values::Currency;
    use cqrs_es::test::TestFramework;

    type Tester = TestFramework<Order>;

    pub(crate) fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).expect("valid timestamp")
    }

    pub(crate) fn place() -> PlaceOrder {
        PlaceOrder {
            tenant_id: Uuid::from_u128(1),
            tenant_slug: TenantSlug::parse("migrahosting").expect("valid"),
            customer_id: Uuid::from_u128(2),
            customer_email: Email::parse("jane@example.com").expect("valid"),
            price: PriceSnapshot {
                price_id: Uuid::from_u128(3),
                product_id: Uuid::from_u128(4),
                product_name: "Starter Hosting".into(),
                amount: Money::new(999, Currency::parse("USD").expect("valid")).expect("valid"),
                interval: BillingInterval::Month,
                steps: ProvisioningStep::ALL.to_vec(),
            },
            domain: Some(DomainName::parse("example.com").expect("valid")),
            payment: PaymentReference::parse("pi_123").expect("valid"),
            placed_at: at(0),
        }
    }

    fn placed() -> OrderEvent {
        OrderEvent::OrderPlaced(place())
    }

    #[test]
    fn places_a_paid_order() {
        Tester::with(())
            .given_no_previous_events()
            .when(OrderCommand::Place(place()))
            .then_expect_events(vec![placed()]);
    }

    #[test]
    fn the_same_purchase_again_is_a_no_op_even_later() {
        let mut again = place();
        again.placed_at = at(60);
        Tester::with(())
            .given(vec![placed()])
            .when(OrderCommand::Place(again))
            .then_expect_events(vec![]);
    }

    #[test]
    fn the_same_payment_for_something_else_is_refused() {
        let variants: [fn(&mut PlaceOrder); 4] = [
            |p| p.price.price_id = Uuid::from_u128(99),
            |p| p.customer_email = Email::parse("other@example.com").expect("valid"),
            |p| p.domain = Some(DomainName::parse("other.com").expect("valid")),
            |p| p.tenant_id = Uuid::from_u128(98),
        ];
        for change in variants {
            let mut different = place();
            change(&mut different);
            Tester::with(())
                .given(vec![placed()])
                .when(OrderCommand::Place(different))
                .then_expect_error(OrderError::DifferentPaymentForSameOrder);
        }
    }

    #[test]
    fn a_plan_with_steps_needs_a_domain() {
        let mut no_domain = place();
        no_domain.domain = None;
        Tester::with(())
            .given_no_previous_events()
            .when(OrderCommand::Place(no_domain.clone()))
            .then_expect_error(OrderError::DomainRequired);
        no_domain.price.steps.clear();
        Tester::with(())
            .given_no_previous_events()
            .when(OrderCommand::Place(no_domain.clone()))
            .then_expect_events(vec![OrderEvent::OrderPlaced(no_domain)]);
    }

    #[test]
    fn fulfils_once() {
        let fulfilled = OrderEvent::OrderFulfilled {
            subscription_id: Uuid::from_u128(5),
            fulfilled_at: at(10),
        };
        let cmd = OrderCommand::MarkFulfilled {
            subscription_id: Uuid::from_u128(5),
            at: at(10),
        };
        Tester::with(())
            .given(vec![placed()])
            .when(cmd.clone())
            .then_expect_events(vec![fulfilled.clone()]);
        Tester::with(())
            .given(vec![placed(), fulfilled])
            .when(cmd.clone())
            .then_expect_events(vec![]);
        Tester::with(())
            .given_no_previous_events()
            .when(cmd.clone())
            .then_expect_error(OrderError::NotPlaced);
        Tester::with(())
            .given(vec![placed(), cancelled()])
            .when(cmd)
            .then_expect_error(OrderError::Cancelled);
    }

    fn cancelled() -> OrderEvent {
        OrderEvent::OrderCancelled {
            reason: "customer asked".into(),
            cancelled_at: at(5),
        }
    }

    #[test]
    fn cancels_only_unfulfilled_orders_with_a_reason() {
        let cmd = OrderCommand::Cancel {
            reason: "customer asked".into(),
            at: at(5),
        };
        Tester::with(())
            .given(vec![placed()])
            .when(cmd.clone())
            .then_expect_events(vec![cancelled()]);
        Tester::with(())
            .given(vec![placed(), cancelled()])
            .when(cmd.clone())
            .then_expect_events(vec![]);
        Tester::with(())
            .given(vec![
                placed(),
                OrderEvent::OrderFulfilled {
                    subscription_id: Uuid::from_u128(5),
                    fulfilled_at: at(1),
                },
            ])
            .when(cmd.clone())
            .then_expect_error(OrderError::AlreadyFulfilled);
        Tester::with(())
            .given_no_previous_events()
            .when(cmd)
            .then_expect_error(OrderError::NotPlaced);
        Tester::with(())
            .given(vec![placed()])
            .when(OrderCommand::Cancel {
                reason: " ".into(),
                at: at(5),
            })
            .then_expect_error(OrderError::ReasonRequired);
    }

    #[test]
    fn event_json_is_camel_case_with_minor_units() {
        let json = serde_json::to_value(placed()).expect("serialises");
        let inner = &json["OrderPlaced"];
        assert_eq!(inner["price"]["amount"]["amountMinor"], 999);
        assert_eq!(inner["customerEmail"], "jane@example.com");
        assert_eq!(
            inner["price"]["steps"],
            serde_json::json!(["dns", "hosting", "mail"])
        );
        let back: OrderEvent = serde_json::from_value(json).expect("round-trips");
        assert_eq!(back, placed());
    }
}
