//! The provisioning steps a product's plan can require.

use serde::{Deserialize, Serialize};

/// One kind of provisioning work. A subscription becomes active only when every step its plan
/// requires has succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProvisioningStep {
    /// A DNS zone in PowerDNS.
    Dns,
    /// A hosting account (user, web root, vhost) on a web server.
    Hosting,
    /// A mailbox on the mail server.
    Mail,
}

impl ProvisioningStep {
    /// All steps in the order they are listed in plans and responses.
    pub const ALL: [Self; 3] = [Self::Dns, Self::Hosting, Self::Mail];

    /// The stable lowercase name used in events, ids and the API.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::Hosting => "hosting",
            Self::Mail => "mail",
        }
    }

    /// Parses the lowercase name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for ProvisioningStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Normalises a plan: sorted, without repeats, so that `[mail, dns, dns]` and `[dns, mail]` are
/// the same plan.
#[must_use]
pub fn normalise_plan(steps: &[ProvisioningStep]) -> Vec<ProvisioningStep> {
    let mut steps = steps.to_vec();
    steps.sort_unstable();
    steps.dedup();
    steps
}
