use serde::{Deserialize, Serialize};

use super::{reject_controls_and_space, string_value, InvalidValue};

/// A tenant's URL-safe name (`migrahosting`): 2–63 characters of `a-z`, `0-9` and single
/// hyphens, starting with a letter and not ending with a hyphen. It appears in URLs, logs and
/// deterministic ids, so it is deliberately narrow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantSlug(String);

impl TenantSlug {
    /// Parses a slug, refusing anything that is not already in canonical form.
    ///
    /// # Errors
    /// [`InvalidValue`] naming the rule that failed.
    pub fn parse(input: &str) -> Result<Self, InvalidValue> {
        reject_controls_and_space(input)?;
        if input.len() < 2 || input.len() > 63 {
            return Err(InvalidValue::new("must be 2 to 63 characters long"));
        }
        if !input
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(InvalidValue::new(
                "may contain only lowercase letters a-z, digits and hyphens",
            ));
        }
        if !input.as_bytes()[0].is_ascii_lowercase() {
            return Err(InvalidValue::new("must start with a letter"));
        }
        if input.ends_with('-') || input.contains("--") {
            return Err(InvalidValue::new(
                "must not end with a hyphen or contain two hyphens in a row",
            ));
        }
        Ok(Self(input.to_owned()))
    }
}

string_value!(TenantSlug);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_canonical_slugs() {
        for ok in ["migrahosting", "a1", "acme-hosting-2"] {
            assert_eq!(TenantSlug::parse(ok).map(String::from), Ok(ok.to_owned()));
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "a",
            "Migra",
            "1abc",
            "ab-",
            "a--b",
            "a b",
            "a/../b",
            "a;rm",
            "a\0b",
            "ä-host",
            &"a".repeat(64),
        ] {
            assert!(TenantSlug::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_accepted_values_round_trip(s in "\\PC{0,80}") {
            if let Ok(slug) = TenantSlug::parse(&s) {
                prop_assert_eq!(slug.as_str(), s.as_str());
                prop_assert!(slug.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            }
        }
    }
}
