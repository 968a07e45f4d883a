use serde::{Deserialize, Serialize};

use super::{string_value, InvalidValue};

/// An ISO 4217 currency code, three uppercase letters (`USD`, `EUR`). Lowercase input (Stripe
/// sends `usd`) is normalised at parse time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    /// Parses a currency code.
    ///
    /// # Errors
    /// [`InvalidValue`] unless the input is exactly three ASCII letters.
    pub fn parse(input: &str) -> Result<Self, InvalidValue> {
        if input.len() != 3 || !input.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(InvalidValue::new(
                "must be a three-letter ISO 4217 currency code",
            ));
        }
        Ok(Self(input.to_ascii_uppercase()))
    }
}

string_value!(Currency);

/// An amount of money in integer minor units (cents) with its currency. Never a float: an
/// auditor must be able to add up the log and get the bank's figure to the cent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Money {
    /// Amount in the currency's minor unit; never negative for a price.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: Currency,
}

impl Money {
    /// Builds a non-negative amount.
    ///
    /// # Errors
    /// [`InvalidValue`] for a negative amount.
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self, InvalidValue> {
        if amount_minor < 0 {
            return Err(InvalidValue::new("amount must not be negative"));
        }
        Ok(Self {
            amount_minor,
            currency,
        })
    }
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.amount_minor, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_is_normalised_and_checked() {
        assert_eq!(Currency::parse("usd").map(String::from), Ok("USD".into()));
        for bad in ["", "US", "USDX", "U$D", "12A"] {
            assert!(Currency::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn money_refuses_negative_amounts() {
        let usd = Currency::parse("USD").expect("valid");
        assert!(Money::new(-1, usd.clone()).is_err());
        assert_eq!(
            Money::new(999, usd).map(|m| m.to_string()),
            Ok("999 USD".into())
        );
    }

    #[test]
    fn money_serialises_as_minor_units_never_floats() {
        let m = Money::new(1999, Currency::parse("EUR").expect("valid")).expect("valid");
        assert_eq!(
            serde_json::to_value(&m).expect("serialises"),
            serde_json::json!({"amountMinor": 1999, "currency": "EUR"})
        );
    }
}
