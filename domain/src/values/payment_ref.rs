use serde::{Deserialize, Serialize};

use super::{reject_controls_and_space, string_value, InvalidValue};

/// The payment processor's reference for the money received (a Stripe PaymentIntent id such as
/// `pi_3Nx…`). It is half of the order's deterministic id, which is what turns a duplicate
/// webhook into the same order instead of a second one. Case is kept (Stripe ids are case
/// sensitive); 3–255 characters of `A-Z a-z 0-9 _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PaymentReference(String);

impl PaymentReference {
    /// Parses a payment reference.
    ///
    /// # Errors
    /// [`InvalidValue`] naming the rule that failed.
    pub fn parse(input: &str) -> Result<Self, InvalidValue> {
        reject_controls_and_space(input)?;
        if input.len() < 3 || input.len() > 255 {
            return Err(InvalidValue::new("must be 3 to 255 characters long"));
        }
        if !input
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(InvalidValue::new(
                "may contain only letters, digits, '_' and '-'",
            ));
        }
        Ok(Self(input.to_owned()))
    }
}

string_value!(PaymentReference);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_stripe_ids_and_refuses_junk() {
        assert!(PaymentReference::parse("pi_3NxYz0AbCdEf").is_ok());
        for bad in [
            "",
            "pi",
            "pi_1 2",
            "pi_1;drop",
            "pi_1\0",
            "pi_'1",
            &"p".repeat(256),
        ] {
            assert!(PaymentReference::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = PaymentReference::parse(&s);
        }
    }
}
