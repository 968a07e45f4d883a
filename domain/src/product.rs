//! The Product aggregate: a tenant's catalog entry and its prices.
//!
//! Every catalog change is an event, so "what did we sell, at what price, when" is answerable
//! from the log. Archiving hides a product from new orders; orders that reference it keep their
//! own snapshot of what was sold ([`crate::order::PriceSnapshot`]).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::order::BillingInterval;
use crate::step::{normalise_plan, ProvisioningStep};
use crate::values::Money;

/// The facts of a new product (payload of [`ProductEvent::ProductCreated`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateProduct {
    /// The tenant whose catalog it belongs to.
    pub tenant_id: Uuid,
    /// Display name, 1–200 characters.
    pub name: String,
    /// Longer text for the marketing site.
    pub description: String,
    /// Steps a purchase provisions.
    pub plan: Vec<ProvisioningStep>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A price as added (payload of [`ProductEvent::PriceAdded`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddPrice {
    /// The price's id (chosen by the caller).
    pub price_id: Uuid,
    /// Amount and currency.
    pub amount: Money,
    /// Billing interval.
    pub interval: BillingInterval,
    /// When.
    pub added_at: DateTime<Utc>,
}

/// Commands on a product.
#[derive(Debug, Clone, PartialEq)]
pub enum ProductCommand {
    /// Creates the product (idempotent for identical values).
    Create(CreateProduct),
    /// Changes name, description or plan; unchanged fields are `None`.
    Update {
        /// New name.
        name: Option<String>,
        /// New description.
        description: Option<String>,
        /// New plan.
        plan: Option<Vec<ProvisioningStep>>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Adds a price (idempotent for the same id and values).
    AddPrice(AddPrice),
    /// Stops a price from being sold (idempotent).
    DeactivatePrice {
        /// Which.
        price_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// Archives the product (idempotent).
    Archive {
        /// When.
        at: DateTime<Utc>,
    },
}

/// Events of a product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProductEvent {
    /// A product was added to a tenant's catalog.
    ProductCreated(CreateProduct),
    /// Name, description or plan changed (the full new values).
    #[serde(rename_all = "camelCase")]
    ProductUpdated {
        /// Name now.
        name: String,
        /// Description now.
        description: String,
        /// Plan now.
        plan: Vec<ProvisioningStep>,
        /// When.
        updated_at: DateTime<Utc>,
    },
    /// A price can be bought.
    PriceAdded(AddPrice),
    /// A price can no longer be bought.
    #[serde(rename_all = "camelCase")]
    PriceDeactivated {
        /// Which.
        price_id: Uuid,
        /// When.
        deactivated_at: DateTime<Utc>,
    },
    /// The product is withdrawn from sale.
    #[serde(rename_all = "camelCase")]
    ProductArchived {
        /// When.
        archived_at: DateTime<Utc>,
    },
}

impl DomainEvent for ProductEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ProductCreated(_) => "ProductCreated",
            Self::ProductUpdated { .. } => "ProductUpdated",
            Self::PriceAdded(_) => "PriceAdded",
            Self::PriceDeactivated { .. } => "PriceDeactivated",
            Self::ProductArchived { .. } => "ProductArchived",
        }
        .into()
    }
    fn event_version(&self) -> String {
        crate::EVENT_VERSION_1.into()
    }
}

/// Why a product command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    /// No product under this id.
    #[error("product not found")]
    NotCreated,
    /// The id is taken by a product with other values.
    #[error("a different product already exists under this id")]
    AlreadyExists,
    /// Archived products do not change.
    #[error("product is archived")]
    Archived,
    /// Name is empty or longer than 200 characters.
    #[error("name must be 1 to 200 characters")]
    InvalidName,
    /// Description longer than 2000 characters.
    #[error("description must be at most 2000 characters")]
    DescriptionTooLong,
    /// The product has no such price.
    #[error("price not found")]
    UnknownPrice,
    /// The price id is taken by a price with other values.
    #[error("a different price already exists under this id")]
    PriceIdTaken,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PriceState {
    added: AddPrice,
    active: bool,
}

/// The product's state, folded from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    created: Option<CreateProduct>,
    archived: bool,
    prices: Vec<PriceState>,
}

fn check_name(name: &str) -> Result<(), ProductError> {
    if name.trim().is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ProductError::InvalidName);
    }
    Ok(())
}

fn check_description(description: &str) -> Result<(), ProductError> {
    if description.chars().count() > 2000 {
        return Err(ProductError::DescriptionTooLong);
    }
    Ok(())
}

impl Product {
    /// The creation facts with the current name, description and plan; `None` before creation.
    #[must_use]
    pub fn details(&self) -> Option<&CreateProduct> {
        self.created.as_ref()
    }

    /// Whether the product is archived.
    #[must_use]
    pub fn is_archived(&self) -> bool {
        self.archived
    }

    /// Every price ever added, with whether it is still sold.
    pub fn prices(&self) -> impl Iterator<Item = (&AddPrice, bool)> {
        self.prices.iter().map(|p| (&p.added, p.active))
    }

    fn live(&self) -> Result<&CreateProduct, ProductError> {
        let created = self.created.as_ref().ok_or(ProductError::NotCreated)?;
        if self.archived {
            return Err(ProductError::Archived);
        }
        Ok(created)
    }

    fn decide(&self, command: ProductCommand) -> Result<Vec<ProductEvent>, ProductError> {
        match command {
            ProductCommand::Create(mut create) => {
                check_name(&create.name)?;
                check_description(&create.description)?;
                create.plan = normalise_plan(&create.plan);
                match &self.created {
                    Some(existing)
                        if existing.tenant_id == create.tenant_id
                            && existing.name == create.name
                            && existing.description == create.description
                            && existing.plan == create.plan =>
                    {
                        Ok(vec![])
                    }
                    Some(_) => Err(ProductError::AlreadyExists),
                    None => Ok(vec![ProductEvent::ProductCreated(create)]),
                }
            }
            ProductCommand::Update {
                name,
                description,
                plan,
                at,
            } => {
                let current = self.live()?;
                let name = name.unwrap_or_else(|| current.name.clone());
                let description = description.unwrap_or_else(|| current.description.clone());
                let plan = plan.map_or_else(|| current.plan.clone(), |p| normalise_plan(&p));
                check_name(&name)?;
                check_description(&description)?;
                if name == current.name
                    && description == current.description
                    && plan == current.plan
                {
                    return Ok(vec![]);
                }
                Ok(vec![ProductEvent::ProductUpdated {
                    name,
                    description,
                    plan,
                    updated_at: at,
                }])
            }
            ProductCommand::AddPrice(add) => {
                self.live()?;
                match self
                    .prices
                    .iter()
                    .find(|p| p.added.price_id == add.price_id)
                {
                    Some(p) if p.added.amount == add.amount && p.added.interval == add.interval => {
                        Ok(vec![])
                    }
                    Some(_) => Err(ProductError::PriceIdTaken),
                    None => Ok(vec![ProductEvent::PriceAdded(add)]),
                }
            }
            ProductCommand::DeactivatePrice { price_id, at } => {
                self.live()?;
                match self.prices.iter().find(|p| p.added.price_id == price_id) {
                    None => Err(ProductError::UnknownPrice),
                    Some(p) if !p.active => Ok(vec![]),
                    Some(_) => Ok(vec![ProductEvent::PriceDeactivated {
                        price_id,
                        deactivated_at: at,
                    }]),
                }
            }
            ProductCommand::Archive { at } => {
                if self.created.is_none() {
                    return Err(ProductError::NotCreated);
                }
                if self.archived {
                    return Ok(vec![]);
                }
                Ok(vec![ProductEvent::ProductArchived { archived_at: at }])
            }
        }
    }
}

impl Aggregate for Product {
    const TYPE: &'static str = "Product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;
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
            ProductEvent::ProductCreated(created) => self.created = Some(created),
            ProductEvent::ProductUpdated {
                name,
                description,
                plan,
                ..
            } => {
                if let Some(c) = self.created.as_mut() {
                    c.name = name;
                    c.description = description;
                    c.plan = plan;
                }
            }
            ProductEvent::PriceAdded(added) => self.prices.push(PriceState {
                added,
                active: true,
            }),
            ProductEvent::PriceDeactivated { price_id, .. } => {
                if let Some(p) = self
                    .prices
                    .iter_mut()
                    .find(|p| p.added.price_id == price_id)
                {
                    p.active = false;
                }
            }
            ProductEvent::ProductArchived { .. } => self.archived = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::tests::at;
    use crate::values::Currency;
    use cqrs_es::test::TestFramework;

    type Tester = TestFramework<Product>;
    const PRICE: Uuid = Uuid::from_u128(3);

    fn create() -> CreateProduct {
        CreateProduct {
            tenant_id: Uuid::from_u128(1),
            name: "Starter Hosting".into(),
            description: "One site".into(),
            plan: ProvisioningStep::ALL.to_vec(),
            created_at: at(0),
        }
    }
    fn created() -> ProductEvent {
        ProductEvent::ProductCreated(create())
    }
    fn add_price(amount: i64) -> AddPrice {
        AddPrice {
            price_id: PRICE,
            amount: Money::new(amount, Currency::parse("USD").expect("valid")).expect("valid"),
            interval: BillingInterval::Month,
            added_at: at(1),
        }
    }
    fn archived() -> ProductEvent {
        ProductEvent::ProductArchived { archived_at: at(9) }
    }

    #[test]
    fn creates_with_a_normalised_plan_once() {
        let mut unsorted = create();
        unsorted.plan = vec![
            ProvisioningStep::Mail,
            ProvisioningStep::Dns,
            ProvisioningStep::Hosting,
            ProvisioningStep::Mail,
        ];
        Tester::with(())
            .given_no_previous_events()
            .when(ProductCommand::Create(unsorted.clone()))
            .then_expect_events(vec![created()]);
        Tester::with(())
            .given(vec![created()])
            .when(ProductCommand::Create(unsorted))
            .then_expect_events(vec![]);
        let mut other = create();
        other.name = "Other".into();
        Tester::with(())
            .given(vec![created()])
            .when(ProductCommand::Create(other))
            .then_expect_error(ProductError::AlreadyExists);
    }

    #[test]
    fn refuses_bad_names_and_descriptions() {
        let mut bad = create();
        bad.name = String::new();
        Tester::with(())
            .given_no_previous_events()
            .when(ProductCommand::Create(bad.clone()))
            .then_expect_error(ProductError::InvalidName);
        bad.name = "a".repeat(201);
        Tester::with(())
            .given_no_previous_events()
            .when(ProductCommand::Create(bad.clone()))
            .then_expect_error(ProductError::InvalidName);
        bad.name = "ok".into();
        bad.description = "d".repeat(2001);
        Tester::with(())
            .given_no_previous_events()
            .when(ProductCommand::Create(bad))
            .then_expect_error(ProductError::DescriptionTooLong);
    }

    #[test]
    fn updates_only_what_changed() {
        Tester::with(())
            .given(vec![created()])
            .when(ProductCommand::Update {
                name: Some("Pro".into()),
                description: None,
                plan: None,
                at: at(2),
            })
            .then_expect_events(vec![ProductEvent::ProductUpdated {
                name: "Pro".into(),
                description: "One site".into(),
                plan: ProvisioningStep::ALL.to_vec(),
                updated_at: at(2),
            }]);
        Tester::with(())
            .given(vec![created()])
            .when(ProductCommand::Update {
                name: Some("Starter Hosting".into()),
                description: None,
                plan: None,
                at: at(2),
            })
            .then_expect_events(vec![]);
        Tester::with(())
            .given(vec![created()])
            .when(ProductCommand::Update {
                name: Some(" ".into()),
                description: None,
                plan: None,
                at: at(2),
            })
            .then_expect_error(ProductError::InvalidName);
        Tester::with(())
            .given_no_previous_events()
            .when(ProductCommand::Update {
                name: Some("x".into()),
                description: None,
                plan: None,
                at: at(2),
            })
            .then_expect_error(ProductError::NotCreated);
        Tester::with(())
            .given(vec![created(), archived()])
            .when(ProductCommand::Update {
                name: Some("x".into()),
                description: None,
                plan: None,
                at: at(2),
            })
            .then_expect_error(ProductError::Archived);
    }

    #[test]
    fn adds_prices_idempotently() {
        Tester::with(())
            .given(vec![created()])
            .when(ProductCommand::AddPrice(add_price(999)))
            .then_expect_events(vec![ProductEvent::PriceAdded(add_price(999))]);
        Tester::with(())
            .given(vec![created(), ProductEvent::PriceAdded(add_price(999))])
            .when(ProductCommand::AddPrice(add_price(999)))
            .then_expect_events(vec![]);
        Tester::with(())
            .given(vec![created(), ProductEvent::PriceAdded(add_price(999))])
            .when(ProductCommand::AddPrice(add_price(1999)))
            .then_expect_error(ProductError::PriceIdTaken);
        Tester::with(())
            .given(vec![created(), archived()])
            .when(ProductCommand::AddPrice(add_price(999)))
            .then_expect_error(ProductError::Archived);
        Tester::with(())
            .given_no_previous_events()
            .when(ProductCommand::AddPrice(add_price(999)))
            .then_expect_error(ProductError::NotCreated);
    }

    #[test]
    fn deactivates_known_prices_once() {
        let cmd = ProductCommand::DeactivatePrice {
            price_id: PRICE,
            at: at(3),
        };
        let deactivated = ProductEvent::PriceDeactivated {
            price_id: PRICE,
            deactivated_at: at(3),
        };
        let with_price = vec![created(), ProductEvent::PriceAdded(add_price(999))];
        Tester::with(())
            .given(with_price.clone())
            .when(cmd.clone())
            .then_expect_events(vec![deactivated.clone()]);
        let mut again = with_price;
        again.push(deactivated);
        Tester::with(())
            .given(again)
            .when(cmd.clone())
            .then_expect_events(vec![]);
        Tester::with(())
            .given(vec![created()])
            .when(cmd)
            .then_expect_error(ProductError::UnknownPrice);
    }

    #[test]
    fn archives_once() {
        Tester::with(())
            .given(vec![created()])
            .when(ProductCommand::Archive { at: at(9) })
            .then_expect_events(vec![archived()]);
        Tester::with(())
            .given(vec![created(), archived()])
            .when(ProductCommand::Archive { at: at(9) })
            .then_expect_events(vec![]);
        Tester::with(())
            .given_no_previous_events()
            .when(ProductCommand::Archive { at: at(9) })
            .then_expect_error(ProductError::NotCreated);
    }
}
