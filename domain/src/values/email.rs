use serde::{Deserialize, Serialize};

use super::{reject_controls_and_space, string_value, DomainName, InvalidValue};

/// A customer's e-mail address, lowercased (`jane@example.com`).
///
/// Customers are found-or-created per tenant and address, so two spellings of one mailbox must
/// be one customer: the whole address is folded to lowercase (mail providers treat local parts
/// case-insensitively in practice). The local part is an RFC 5322 dot-atom (no quoted strings,
/// no comments) of at most 64 characters; the domain follows [`DomainName`]'s rules; 254
/// characters at most in all.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

const ATEXT_SPECIALS: &[u8] = b"!#$%&'*+-/=?^_`{|}~";

impl Email {
    /// Parses and lowercases an address.
    ///
    /// # Errors
    /// [`InvalidValue`] naming the rule that failed.
    pub fn parse(input: &str) -> Result<Self, InvalidValue> {
        reject_controls_and_space(input)?;
        if input.len() > 254 {
            return Err(InvalidValue::new("must be at most 254 characters long"));
        }
        let Some((local, domain)) = input.rsplit_once('@') else {
            return Err(InvalidValue::new("must contain '@'"));
        };
        if local.is_empty() || local.len() > 64 {
            return Err(InvalidValue::new(
                "the part before '@' must be 1 to 64 characters",
            ));
        }
        if !local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || ATEXT_SPECIALS.contains(&b))
        {
            return Err(InvalidValue::new(
                "the part before '@' contains a character that is not allowed",
            ));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(InvalidValue::new(
                "the part before '@' must not start or end with a dot or contain '..'",
            ));
        }
        let domain = DomainName::parse(domain)
            .map_err(|e| InvalidValue::new(format!("the domain after '@' {e}")))?;
        let address = format!("{}@{}", local.to_ascii_lowercase(), domain);
        if address.len() > 254 {
            return Err(InvalidValue::new("must be at most 254 characters long"));
        }
        Ok(Self(address))
    }

    /// The domain after the `@`.
    #[must_use]
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

string_value!(Email);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_lowercases() {
        assert_eq!(
            Email::parse("Jane.Doe+hosting@Example.COM").map(String::from),
            Ok("jane.doe+hosting@example.com".into())
        );
        assert_eq!(
            Email::parse("a@b.co").map(|e| e.domain().to_owned()),
            Ok("b.co".into())
        );
    }

    #[test]
    fn refuses_each_rule() {
        for bad in [
            "",
            "jane",
            "@example.com",
            "jane@",
            "jane@@example.com",
            "jane doe@example.com",
            "jane@example",
            ".jane@example.com",
            "jane.@example.com",
            "ja..ne@example.com",
            "\"jane\"@example.com",
            "jane@example.com\0",
            "jane(x)@example.com",
            "jane@exa_mple.com",
            "jane@example.com;ls",
            "jane<script>@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(65))).is_err());
    }

    proptest! {
        #[test]
        fn never_panics_and_is_idempotent(s in "\\PC{0,300}") {
            if let Ok(e) = Email::parse(&s) {
                prop_assert_eq!(Email::parse(e.as_str()).map(String::from), Ok(e.as_str().to_owned()));
                prop_assert!(!e.as_str().chars().any(char::is_uppercase));
            }
        }
    }
}
