use serde::{Deserialize, Serialize};

use super::{reject_controls_and_space, string_value, InvalidValue};

/// A fully qualified DNS domain name in lowercase ASCII (`example.com`, `xn--mnchen-3ya.de`).
///
/// It becomes a PowerDNS zone, a vhost file name and a path component on the web server, so the
/// rules are the strict RFC 1035 "preferred name syntax" (letters, digits, hyphens), not what a
/// browser would tolerate:
/// - at least two labels; each label 1–63 characters, not starting or ending with a hyphen;
/// - 253 characters at most in all; no trailing dot, no whitespace or other trailing junk;
/// - the top-level label is not all digits (so an IP address is not a domain);
/// - uppercase is folded to lowercase;
/// - internationalised names are converted to punycode with UTS #46 (strict), and a label
///   that mixes Latin with Cyrillic or Greek letters is refused as a likely confusable
///   (`pаypal.com` with a Cyrillic `а`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

impl DomainName {
    /// Parses and normalises a domain name.
    ///
    /// # Errors
    /// [`InvalidValue`] naming the rule that failed.
    pub fn parse(input: &str) -> Result<Self, InvalidValue> {
        reject_controls_and_space(input)?;
        if input.is_empty() {
            return Err(InvalidValue::new("must not be empty"));
        }
        if input.len() > 253 * 4 {
            return Err(InvalidValue::new("must be at most 253 characters long"));
        }
        if input.ends_with('.') {
            return Err(InvalidValue::new("must not end with a dot"));
        }
        let ascii = if input.is_ascii() {
            input.to_ascii_lowercase()
        } else {
            for label in input.split(['.', '\u{3002}', '\u{ff0e}', '\u{ff61}']) {
                if mixes_latin_with_lookalike_script(label) {
                    return Err(InvalidValue::new(
                        "a label mixes Latin with Cyrillic or Greek letters (possible look-alike)",
                    ));
                }
            }
            idna::domain_to_ascii_strict(input)
                .map_err(|_| InvalidValue::new("is not a valid internationalised domain name"))?
        };
        check_ldh(&ascii)?;
        Ok(Self(ascii))
    }

    /// The labels from left to right (`www`, `example`, `com`).
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// The name with the trailing dot DNS servers want (`example.com.`).
    #[must_use]
    pub fn fqdn(&self) -> String {
        format!("{}.", self.0)
    }
}

string_value!(DomainName);

fn check_ldh(name: &str) -> Result<(), InvalidValue> {
    if name.len() > 253 {
        return Err(InvalidValue::new("must be at most 253 characters long"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err(InvalidValue::new(
            "must have at least two labels (like example.com)",
        ));
    }
    for label in &labels {
        if label.is_empty() {
            return Err(InvalidValue::new("must not contain an empty label ('..')"));
        }
        if label.len() > 63 {
            return Err(InvalidValue::new(
                "each label must be at most 63 characters",
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(InvalidValue::new(
                "may contain only letters, digits, hyphens and dots",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(InvalidValue::new(
                "a label must not start or end with a hyphen",
            ));
        }
        if label.starts_with("xn--")
            && idna::domain_to_ascii_strict(label).ok().as_deref() != Some(*label)
        {
            return Err(InvalidValue::new(
                "contains an invalid punycode (xn--) label",
            ));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(InvalidValue::new(
            "the top-level label must not be all digits",
        ));
    }
    Ok(())
}

fn mixes_latin_with_lookalike_script(label: &str) -> bool {
    let latin = label
        .chars()
        .any(|c| c.is_ascii_alphabetic() || ('\u{00c0}'..='\u{024f}').contains(&c));
    let lookalike = label
        .chars()
        .any(|c| ('\u{0370}'..='\u{03ff}').contains(&c) || ('\u{0400}'..='\u{04ff}').contains(&c));
    latin && lookalike
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parsed(s: &str) -> Result<String, InvalidValue> {
        DomainName::parse(s).map(String::from)
    }

    #[test]
    fn accepts_and_normalises() {
        assert_eq!(parsed("example.com"), Ok("example.com".into()));
        assert_eq!(parsed("WWW.Example.COM"), Ok("www.example.com".into()));
        assert_eq!(parsed("a-1.b2.co.uk"), Ok("a-1.b2.co.uk".into()));
        assert_eq!(parsed("münchen.de"), Ok("xn--mnchen-3ya.de".into()));
        assert_eq!(parsed("xn--mnchen-3ya.de"), Ok("xn--mnchen-3ya.de".into()));
        let longest_label = format!("{}.com", "a".repeat(63));
        assert_eq!(parsed(&longest_label), Ok(longest_label.clone()));
    }

    #[test]
    fn refuses_each_rule() {
        let cases = [
            ("", "empty"),
            ("com", "two labels"),
            ("example.com.", "dot"),
            ("example..com", "empty label"),
            ("-example.com", "hyphen"),
            ("example-.com", "hyphen"),
            ("exa_mple.com", "only letters"),
            ("example.com;rm -rf /", "whitespace"),
            ("example.com$(id)", "only letters"),
            ("../etc/passwd", "empty label"),
            ("etc/passwd.com", "only letters"),
            ("example.com\0", "control"),
            (" example.com", "whitespace"),
            ("example.com\n", "control"),
            ("1.2.3.4", "all digits"),
            ("xn--zz.com", "punycode"),
            ("p\u{0430}ypal.com", "look-alike"),
            ("example.com'", "only letters"),
        ];
        for (input, reason) in cases {
            let err = parsed(input).expect_err(input);
            assert!(
                err.0.contains(reason),
                "{input:?}: {err} should mention {reason:?}"
            );
        }
        assert!(parsed(&format!("{}.com", "a".repeat(64))).is_err());
        let too_long = vec!["a".repeat(60); 5].join(".");
        assert!(too_long.len() > 253);
        assert!(parsed(&too_long).is_err());
    }

    proptest! {
        #[test]
        fn never_panics_and_output_is_ldh(s in "\\PC{0,300}") {
            if let Ok(d) = DomainName::parse(&s) {
                prop_assert!(d.as_str().len() <= 253);
                prop_assert!(d.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
                prop_assert_eq!(DomainName::parse(d.as_str()).map(String::from), Ok(d.as_str().to_owned()));
            }
        }

        #[test]
        fn generated_valid_names_are_accepted(labels in proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", 1..4), tld in "[a-z]{2,6}") {
            let name = format!("{}.{}", labels.join("."), tld);
            prop_assert_eq!(parsed(&name), Ok(name.clone()));
        }
    }
}
