//! Value types parsed once at the edge.
//!
//! Every string that comes from a request and later reaches a shell, a DNS name, a file path
//! or SQL is turned into one of these types by a single `TryFrom`/`parse`, so nothing past the
//! edge handles a raw string that could be invalid. Each parser names the rule that failed in
//! its error, which the HTTP layer turns into a field-level problem+json reason.

mod domain_name;
mod email;
mod money;
mod payment_ref;
mod tenant_slug;

pub use domain_name::DomainName;
pub use email::Email;
pub use money::{Currency, Money};
pub use payment_ref::PaymentReference;
pub use tenant_slug::TenantSlug;

/// Why a value was refused. The message is safe to show to the caller: it never echoes
/// more than the offending rule (the input itself may be hostile).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

impl InvalidValue {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

/// Characters that are never acceptable anywhere in a parsed value: controls (including NUL)
/// and whitespace. Checked first so that later rules can assume printable input.
pub(crate) fn reject_controls_and_space(input: &str) -> Result<(), InvalidValue> {
    if input.chars().any(char::is_control) {
        return Err(InvalidValue::new("must not contain control characters"));
    }
    if input.chars().any(char::is_whitespace) {
        return Err(InvalidValue::new("must not contain whitespace"));
    }
    Ok(())
}

/// Implements `Display`, `AsRef<str>`, `TryFrom<String>`, `TryFrom<&str>` and `From<T> for
/// String` for a string newtype with a `parse(&str) -> Result<Self, InvalidValue>` function, so
/// serde can use `try_from = "String"` / `into = "String"` and re-validate stored values.
macro_rules! string_value {
    ($ty:ident) => {
        impl $ty {
            /// The validated text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $ty {
            type Error = $crate::values::InvalidValue;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }
        impl TryFrom<&str> for $ty {
            type Error = $crate::values::InvalidValue;
            fn try_from(value: &str) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }
        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }
        impl std::str::FromStr for $ty {
            type Err = $crate::values::InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}
pub(crate) use string_value;
