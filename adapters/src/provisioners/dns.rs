//! The DNS step: a customer's zone in PowerDNS Authoritative, created and kept in the shape
//! mpanel wants (DESIGN §4, ADR 0010).
//!
//! The provisioner converges rather than "creates": it makes the zone if it is missing
//! (a 409 from PowerDNS means it already exists, which is fine), reads it, and replaces the
//! rrsets mpanel manages — SOA, NS, A and MX at the apex and A at `www` — only when they differ
//! from the desired state. A re-run after success therefore changes nothing (not even the SOA
//! serial), and a re-run after a crash or a hand edit repairs. Rrsets of other names or types are
//! left alone: they belong to whoever added them.
//!
//! Of the lifecycle actions only `Terminate` concerns a zone (it is deleted; deleting an absent
//! zone succeeds). A suspended site keeps resolving to the web server, which serves the
//! placeholder page, so the saga never asks DNS to suspend or unsuspend (`JobAction::applies_to`);
//! such a request is refused as a permanent error rather than silently "done".

use std::net::Ipv4Addr;
use std::time::Duration;

use async_trait::async_trait;
use mpanel_domain::job::{DnsRecord, JobAction, StepOutcome};
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::values::DomainName;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ProvisionError, ProvisionRequest, Provisioner};
use crate::config::{ConfigError, Env, Lookup};

/// How long to wait for a TCP connection to the API; a dead server should fail an attempt fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for a whole API request, so a hung server cannot hold a job's lease.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// SOA refresh, retry, expire and negative-caching TTL (PowerDNS's own defaults).
const SOA_TIMERS: &str = "10800 3600 604800 3600";
/// The MX preference of the single mail host.
const MX_PREFERENCE: u16 = 10;
/// Tries per request when PowerDNS answers 5xx (see `PowerDnsProvisioner::call`).
const SERVER_ERROR_ATTEMPTS: u32 = 4;
/// Pause before the first repeat of a 5xx'd request; it grows linearly.
const SERVER_ERROR_PAUSE: Duration = Duration::from_millis(150);
/// The server name recorded in lifecycle outcomes ([`StepOutcome::Changed`]): there is one
/// PowerDNS API per deployment, and its URL is configuration, not a name for read models.
pub const SERVER_NAME: &str = "powerdns";
/// How much of a non-JSON error body reaches an error message.
const MAX_ERROR_BODY: usize = 200;

/// Where the PowerDNS API is and what every customer zone must contain.
///
/// `Debug` is safe to log: the API key is a [`SecretString`] and prints redacted.
#[derive(Debug, Clone)]
pub struct PowerDnsConfig {
    /// Base URL of the PowerDNS web server (`POWERDNS_API_URL`, e.g. `http://127.0.0.1:8081`),
    /// without the `/api/v1` part.
    pub api_url: String,
    /// The `X-API-Key` PowerDNS is configured with (`POWERDNS_API_KEY`).
    pub api_key: SecretString,
    /// The zone's NS records, first one also the SOA primary (`DNS_NAMESERVERS`).
    pub nameservers: Vec<DomainName>,
    /// Where `@` and `www` point: the hosting web server (`HOSTING_WEB_IPV4`).
    pub web_ipv4: Ipv4Addr,
    /// The apex MX target (`MAIL_HOST`).
    pub mail_host: DomainName,
    /// TTL of every managed rrset (`DNS_TTL`).
    pub ttl: u32,
    /// The SOA responsible-person mailbox in DNS form (`hostmaster.mpanel.test` for
    /// hostmaster@mpanel.test); `DNS_SOA_CONTACT`, by default `hostmaster.` + the first
    /// nameserver's parent domain.
    pub soa_contact: DomainName,
}

impl PowerDnsConfig {
    /// Reads the configuration from the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable that is missing or invalid.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(&Env)
    }

    /// Reads the configuration through a lookup (a map in tests), with the documented defaults.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first variable that is missing or invalid.
    pub fn load(env: &impl Lookup) -> Result<Self, ConfigError> {
        let api_url = env.get("POWERDNS_API_URL").ok_or(ConfigError {
            var: "POWERDNS_API_URL",
            reason: "must be set".into(),
        })?;
        if !(api_url.starts_with("http://") || api_url.starts_with("https://")) {
            return Err(ConfigError {
                var: "POWERDNS_API_URL",
                reason: "must start with http:// or https://".into(),
            });
        }
        let api_key = env.get("POWERDNS_API_KEY").ok_or(ConfigError {
            var: "POWERDNS_API_KEY",
            reason: "must be set".into(),
        })?;
        let nameservers = env
            .get("DNS_NAMESERVERS")
            .unwrap_or_else(|| "ns1.mpanel.test,ns2.mpanel.test".into())
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| domain(s, "DNS_NAMESERVERS"))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(primary) = nameservers.first() else {
            return Err(ConfigError {
                var: "DNS_NAMESERVERS",
                reason: "must list at least one nameserver".into(),
            });
        };
        let soa_contact = match env.get("DNS_SOA_CONTACT") {
            Some(contact) => domain(&contact, "DNS_SOA_CONTACT")?,
            None => domain(
                &format!("hostmaster.{}", parent_domain(primary)),
                "DNS_NAMESERVERS",
            )?,
        };
        let ttl = match env.get("DNS_TTL") {
            None => 3600,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|t| (1..=i32::MAX.unsigned_abs()).contains(t))
                .ok_or_else(|| ConfigError {
                    var: "DNS_TTL",
                    reason: format!("{v:?} is not a number of seconds from 1 to 2147483647"),
                })?,
        };
        let web_ipv4 = match env.get("HOSTING_WEB_IPV4") {
            None => Ipv4Addr::LOCALHOST,
            Some(v) => v.parse().map_err(|e| ConfigError {
                var: "HOSTING_WEB_IPV4",
                reason: format!("cannot parse {v:?}: {e}"),
            })?,
        };
        let mail_host = domain(
            &env.get("MAIL_HOST")
                .unwrap_or_else(|| "mail.mpanel.test".into()),
            "MAIL_HOST",
        )?;
        Ok(Self {
            api_url: api_url.trim_end_matches('/').to_owned(),
            api_key: SecretString::from(api_key),
            nameservers,
            web_ipv4,
            mail_host,
            ttl,
            soa_contact,
        })
    }
}

fn domain(value: &str, var: &'static str) -> Result<DomainName, ConfigError> {
    DomainName::parse(value).map_err(|e| ConfigError {
        var,
        reason: format!("{value:?} {e}"),
    })
}

/// `mpanel.test` for `ns1.mpanel.test`; a two-label name is its own parent here.
fn parent_domain(ns: &DomainName) -> &str {
    match ns.as_str().split_once('.') {
        Some((_, rest)) if rest.contains('.') => rest,
        _ => ns.as_str(),
    }
}

/// The DNS step's [`Provisioner`], talking to the PowerDNS Authoritative HTTP API.
#[derive(Debug)]
pub struct PowerDnsProvisioner {
    config: PowerDnsConfig,
    client: reqwest::Client,
    zones_url: String,
}

impl PowerDnsProvisioner {
    /// Builds the provisioner with an HTTP client whose timeouts keep a dead or hung PowerDNS
    /// from stalling a worker.
    ///
    /// # Errors
    /// [`ProvisionError::Permanent`] when the HTTP client cannot be built (TLS initialisation).
    pub fn new(config: PowerDnsConfig) -> Result<Self, ProvisionError> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| {
                ProvisionError::Permanent(format!("building the PowerDNS HTTP client: {e}"))
            })?;
        let zones_url = format!("{}/api/v1/servers/localhost/zones", config.api_url);
        Ok(Self {
            config,
            client,
            zones_url,
        })
    }

    /// Deletes the domain's zone (for terminating a subscription). Idempotent: a zone that is
    /// already gone is success, so a retried termination does not fail.
    ///
    /// # Errors
    /// [`ProvisionError`]: transient when PowerDNS is unreachable or failing, permanent when it
    /// refuses the request.
    #[tracing::instrument(skip(self, domain), fields(domain = %domain))]
    pub async fn remove_zone(&self, domain: &DomainName) -> Result<(), ProvisionError> {
        let action = format!("deleting zone {}", domain.fqdn());
        let (status, body) = self
            .call(Method::DELETE, &self.zone_url(domain), None, &action)
            .await?;
        match status {
            StatusCode::NO_CONTENT | StatusCode::OK => {
                tracing::info!("zone deleted");
                Ok(())
            }
            StatusCode::NOT_FOUND => {
                tracing::debug!("zone already absent");
                Ok(())
            }
            _ => Err(self.unexpected(&action, status, &body)),
        }
    }

    /// Every served record of the domain's zone, sorted like the step outcome, or `None` when
    /// the zone does not exist. Lets tests and operators compare PowerDNS with what mpanel
    /// recorded. Disabled records are not served and so are left out.
    ///
    /// # Errors
    /// [`ProvisionError`]: transient when PowerDNS is unreachable or failing, permanent when it
    /// refuses the request.
    #[tracing::instrument(skip(self, domain), fields(domain = %domain))]
    pub async fn zone_records(
        &self,
        domain: &DomainName,
    ) -> Result<Option<Vec<DnsRecord>>, ProvisionError> {
        Ok(self.fetch_zone(domain).await?.map(|zone| {
            let mut records: Vec<DnsRecord> = zone
                .rrsets
                .iter()
                .map(RrSet::served)
                .filter(|r| !r.contents.is_empty())
                .collect();
            sort_records(&mut records);
            records
        }))
    }

    fn zone_url(&self, domain: &DomainName) -> String {
        // A `DomainName` is lowercase letters, digits, hyphens and dots, so it is safe in a path.
        format!("{}/{}", self.zones_url, domain.fqdn())
    }

    /// Creates the zone with PowerDNS's default content (a placeholder SOA); 409 means it exists.
    async fn create_zone(&self, domain: &DomainName) -> Result<(), ProvisionError> {
        let action = format!("creating zone {}", domain.fqdn());
        // SOA-EDIT-API DEFAULT makes PowerDNS bump the SOA serial on every API change, which is
        // how mpanel's changes become visible to anything comparing serials.
        let body = json!({
            "name": domain.fqdn(),
            "kind": "Native",
            "nameservers": [],
            "soa_edit_api": "DEFAULT",
        });
        let (status, text) = self
            .call(Method::POST, &self.zones_url, Some(&body), &action)
            .await?;
        match status {
            StatusCode::CREATED => {
                tracing::info!("zone created");
                Ok(())
            }
            StatusCode::CONFLICT => {
                tracing::debug!("zone already exists");
                Ok(())
            }
            _ => Err(self.unexpected(&action, status, &text)),
        }
    }

    async fn fetch_zone(&self, domain: &DomainName) -> Result<Option<Zone>, ProvisionError> {
        let action = format!("reading zone {}", domain.fqdn());
        let (status, body) = self
            .call(Method::GET, &self.zone_url(domain), None, &action)
            .await?;
        match status {
            StatusCode::OK => serde_json::from_str(&body).map(Some).map_err(|e| {
                ProvisionError::Transient(format!("{action}: unreadable PowerDNS answer: {e}"))
            }),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.unexpected(&action, status, &body)),
        }
    }

    /// Replaces the given rrsets wholesale; REPLACE also drops records PowerDNS or a person
    /// added to them (the placeholder SOA, a stray A).
    async fn replace_rrsets(
        &self,
        domain: &DomainName,
        desired: &[DnsRecord],
    ) -> Result<(), ProvisionError> {
        let action = format!("updating records of zone {}", domain.fqdn());
        let rrsets: Vec<Value> = desired
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "type": r.record_type,
                    "ttl": r.ttl,
                    "changetype": "REPLACE",
                    "records": r.contents.iter()
                        .map(|c| json!({ "content": c, "disabled": false }))
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        let (status, body) = self
            .call(
                Method::PATCH,
                &self.zone_url(domain),
                Some(&json!({ "rrsets": rrsets })),
                &action,
            )
            .await?;
        if status == StatusCode::NO_CONTENT || status == StatusCode::OK {
            Ok(())
        } else {
            Err(self.unexpected(&action, status, &body))
        }
    }

    /// One API request. Transport failures (refused, reset, timed out) are transient; the
    /// status and body are returned for the caller to judge.
    ///
    /// A 5xx answer is retried a few times at once: every request made here is idempotent
    /// (a repeated POST gets 409, a repeated REPLACE or DELETE lands in the same state), and
    /// PowerDNS answers 500 to brief backend contention ("database is locked" with gsqlite3
    /// under concurrent writes) that would otherwise cost a whole job retry with backoff.
    /// Timeouts are not retried here, so an attempt stays within a few request timeouts.
    #[tracing::instrument(name = "powerdns.request", skip_all, fields(method = %method, action))]
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        action: &str,
    ) -> Result<(StatusCode, String), ProvisionError> {
        let mut attempt = 1;
        loop {
            let mut request = self
                .client
                .request(method.clone(), url)
                .header("X-API-Key", self.config.api_key.expose_secret());
            if let Some(body) = body {
                request = request.json(body);
            }
            let transient = |e| ProvisionError::Transient(self.redact(&transport_error(action, e)));
            let response = request.send().await.map_err(transient)?;
            let status = response.status();
            let text = response.text().await.map_err(transient)?;
            if !status.is_server_error() || attempt >= SERVER_ERROR_ATTEMPTS {
                return Ok((status, text));
            }
            tracing::warn!(
                %status,
                attempt,
                detail = %self.redact(&error_detail(&text)),
                "PowerDNS server error; retrying: {action}"
            );
            tokio::time::sleep(SERVER_ERROR_PAUSE * attempt).await;
            attempt += 1;
        }
    }

    fn unexpected(&self, action: &str, status: StatusCode, body: &str) -> ProvisionError {
        classify(action, status, &self.redact(&error_detail(body)))
    }

    /// PowerDNS has no reason to echo the key, but an error message is stored in events for
    /// good, so make sure.
    fn redact(&self, message: &str) -> String {
        let key = self.config.api_key.expose_secret();
        if key.is_empty() {
            message.to_owned()
        } else {
            message.replace(key, "[redacted]")
        }
    }

    /// The managed rrsets as they should be, with `serial` in the SOA (PowerDNS bumps it).
    fn desired(&self, domain: &DomainName, serial: u32) -> Vec<DnsRecord> {
        let c = &self.config;
        let apex = domain.fqdn();
        let record = |name: &str, record_type: &str, contents: Vec<String>| DnsRecord {
            name: name.to_owned(),
            record_type: record_type.to_owned(),
            ttl: c.ttl,
            contents,
        };
        let primary = c
            .nameservers
            .first()
            .map_or_else(String::new, DomainName::fqdn);
        let mut nameservers: Vec<String> = c.nameservers.iter().map(DomainName::fqdn).collect();
        nameservers.sort();
        nameservers.dedup();
        let mut records = vec![
            record(
                &apex,
                "SOA",
                vec![format!(
                    "{primary} {} {serial} {SOA_TIMERS}",
                    c.soa_contact.fqdn()
                )],
            ),
            record(&apex, "NS", nameservers),
            record(&apex, "A", vec![c.web_ipv4.to_string()]),
            record(&format!("www.{apex}"), "A", vec![c.web_ipv4.to_string()]),
            record(
                &apex,
                "MX",
                vec![format!("{MX_PREFERENCE} {}", c.mail_host.fqdn())],
            ),
        ];
        sort_records(&mut records);
        records
    }
}

#[async_trait]
impl Provisioner for PowerDnsProvisioner {
    async fn provision(&self, request: &ProvisionRequest) -> Result<StepOutcome, ProvisionError> {
        if request.step != ProvisioningStep::Dns {
            return Err(ProvisionError::Permanent(format!(
                "the DNS provisioner cannot run a {} step",
                request.step
            )));
        }
        let domain = &request.domain;
        match request.action {
            JobAction::Provision => self.converge_zone(domain).await,
            JobAction::Terminate => {
                self.remove_zone(domain).await?;
                Ok(StepOutcome::Changed {
                    action: JobAction::Terminate,
                    server: SERVER_NAME.to_owned(),
                    target: domain.fqdn(),
                    archived: None,
                })
            }
            action @ (JobAction::Suspend | JobAction::Unsuspend) => {
                Err(ProvisionError::Permanent(format!(
                    "a DNS zone has no {action} action (the site keeps resolving while its \
                     hosting serves the suspended page); this job should not exist"
                )))
            }
        }
    }
}

impl PowerDnsProvisioner {
    /// Creates the zone if missing and converges its managed rrsets (ADR 0010); returns them.
    async fn converge_zone(&self, domain: &DomainName) -> Result<StepOutcome, ProvisionError> {
        self.create_zone(domain).await?;
        let vanished = || {
            ProvisionError::Transient(format!(
                "zone {} disappeared while being provisioned",
                domain.fqdn()
            ))
        };
        let mut zone = self.fetch_zone(domain).await?.ok_or_else(vanished)?;
        let desired = self.desired(domain, zone.soa_serial());
        let stale = drifted(&zone, &desired);
        if stale.is_empty() {
            tracing::debug!("zone already converged");
        } else {
            tracing::info!(rrsets = ?stale, "replacing rrsets");
            self.replace_rrsets(domain, &desired).await?;
            zone = self.fetch_zone(domain).await?.ok_or_else(vanished)?;
            // Proves PowerDNS stored what was sent; a mismatch would mean it rewrites content
            // differently from how it is built here, and every run would "repair" again. The
            // serial PowerDNS bumped is not compared, so `desired` still applies.
            let still = drifted(&zone, &desired);
            if !still.is_empty() {
                return Err(ProvisionError::Permanent(format!(
                    "zone {} did not converge; PowerDNS holds other content for {}",
                    domain.fqdn(),
                    still.join(", ")
                )));
            }
        }
        let mut records: Vec<DnsRecord> = desired
            .iter()
            .filter_map(|d| zone.rrset(&d.name, &d.record_type))
            .map(RrSet::served)
            .collect();
        sort_records(&mut records);
        Ok(StepOutcome::Dns {
            zone: domain.fqdn(),
            records,
        })
    }
}

/// The parts of PowerDNS's zone document mpanel reads.
#[derive(Debug, Deserialize)]
struct Zone {
    rrsets: Vec<RrSet>,
}

#[derive(Debug, Deserialize)]
struct RrSet {
    name: String,
    #[serde(rename = "type")]
    record_type: String,
    ttl: u32,
    records: Vec<Record>,
}

#[derive(Debug, Deserialize)]
struct Record {
    content: String,
    #[serde(default)]
    disabled: bool,
}

impl Zone {
    fn rrset(&self, name: &str, record_type: &str) -> Option<&RrSet> {
        self.rrsets
            .iter()
            .find(|r| r.name == name && r.record_type == record_type)
    }

    /// The current SOA serial (0 when there is none or it is unreadable).
    fn soa_serial(&self) -> u32 {
        self.rrsets
            .iter()
            .filter(|r| r.record_type == "SOA")
            .flat_map(|r| &r.records)
            .find_map(|r| r.content.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or(0)
    }
}

impl RrSet {
    fn served(&self) -> DnsRecord {
        let mut contents: Vec<String> = self
            .records
            .iter()
            .filter(|r| !r.disabled)
            .map(|r| r.content.clone())
            .collect();
        contents.sort();
        DnsRecord {
            name: self.name.clone(),
            record_type: self.record_type.clone(),
            ttl: self.ttl,
            contents,
        }
    }

    /// Whether the rrset is exactly `desired`; a SOA's serial is PowerDNS's business and is
    /// not compared.
    fn matches(&self, desired: &DnsRecord) -> bool {
        let mut actual: Vec<String> = self.records.iter().map(|r| r.content.clone()).collect();
        actual.sort();
        let unserialed = |c: &String| {
            if desired.record_type == "SOA" {
                c.split_whitespace()
                    .enumerate()
                    .filter(|(i, _)| *i != 2)
                    .map(|(_, w)| w)
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                c.clone()
            }
        };
        self.ttl == desired.ttl
            && self.records.iter().all(|r| !r.disabled)
            && actual
                .iter()
                .map(unserialed)
                .eq(desired.contents.iter().map(unserialed))
    }
}

/// `name/TYPE` of each managed rrset that differs from `desired`.
fn drifted(zone: &Zone, desired: &[DnsRecord]) -> Vec<String> {
    desired
        .iter()
        .filter(|d| {
            !zone
                .rrset(&d.name, &d.record_type)
                .is_some_and(|r| r.matches(d))
        })
        .map(|d| format!("{}/{}", d.name, d.record_type))
        .collect()
}

/// Owner name, then type: the order outcomes and [`PowerDnsProvisioner::zone_records`] use.
fn sort_records(records: &mut [DnsRecord]) {
    records.sort_by(|a, b| (&a.name, &a.record_type).cmp(&(&b.name, &b.record_type)));
}

/// A transport error with its causes ("error sending request: … Connection refused"); the URL
/// is dropped as the action already says what was being done.
fn transport_error(action: &str, error: reqwest::Error) -> String {
    let error = error.without_url();
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut message = format!("{action}: PowerDNS {kind}");
    let mut source: Option<&dyn std::error::Error> = Some(&error);
    while let Some(e) = source {
        message.push_str(": ");
        message.push_str(&e.to_string());
        source = e.source();
    }
    message
}

/// PowerDNS's `{"error": …}` text, or the start of a plain body ("Conflict", "Unauthorized").
fn error_detail(body: &str) -> String {
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(body) {
        if let Some(Value::String(error)) = map.get("error") {
            return error.clone();
        }
    }
    let trimmed = body.trim();
    match trimmed.char_indices().nth(MAX_ERROR_BODY) {
        Some((cut, _)) => format!("{}…", &trimmed[..cut]),
        None => trimmed.to_owned(),
    }
}

/// Server trouble (5xx, 408, 429) is worth retrying; any other refusal will repeat.
fn classify(action: &str, status: StatusCode, detail: &str) -> ProvisionError {
    let message = if detail.is_empty() {
        format!("{action}: PowerDNS answered {status}")
    } else {
        format!("{action}: PowerDNS answered {status}: {detail}")
    };
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        ProvisionError::Transient(message)
    } else {
        ProvisionError::Permanent(message)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("POWERDNS_API_URL", "http://127.0.0.1:8081/"),
            ("POWERDNS_API_KEY", "super-secret-key"),
        ])
    }

    fn provisioner() -> PowerDnsProvisioner {
        PowerDnsProvisioner::new(PowerDnsConfig::load(&env()).expect("valid config"))
            .expect("client")
    }

    fn zone(json: &Value) -> Zone {
        serde_json::from_value(json.clone()).expect("zone json")
    }

    #[test]
    fn defaults_apply() {
        let c = PowerDnsConfig::load(&env()).expect("valid");
        assert_eq!(c.api_url, "http://127.0.0.1:8081");
        let ns: Vec<&str> = c.nameservers.iter().map(DomainName::as_str).collect();
        assert_eq!(ns, ["ns1.mpanel.test", "ns2.mpanel.test"]);
        assert_eq!(c.web_ipv4, Ipv4Addr::LOCALHOST);
        assert_eq!(c.mail_host.as_str(), "mail.mpanel.test");
        assert_eq!(c.ttl, 3600);
        assert_eq!(c.soa_contact.as_str(), "hostmaster.mpanel.test");
    }

    #[test]
    fn each_bad_variable_is_named() {
        let cases: [(&str, Option<&str>); 8] = [
            ("POWERDNS_API_URL", None),
            ("POWERDNS_API_URL", Some("127.0.0.1:8081")),
            ("POWERDNS_API_KEY", None),
            ("DNS_NAMESERVERS", Some("ns1.mpanel.test,bad_name")),
            ("DNS_NAMESERVERS", Some(" , ")),
            ("HOSTING_WEB_IPV4", Some("::1")),
            ("MAIL_HOST", Some("mail.")),
            ("DNS_TTL", Some("0")),
        ];
        for (var, value) in cases {
            let mut e = env();
            match value {
                Some(v) => e.insert(var, v),
                None => e.remove(var),
            };
            let err = PowerDnsConfig::load(&e).expect_err(var);
            assert_eq!(err.var, var, "{err}");
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let p = provisioner();
        assert!(!format!("{p:?}").contains("super-secret-key"));
        assert!(!format!("{:?}", p.config).contains("super-secret-key"));
    }

    #[test]
    fn desired_zone_shape() {
        let p = provisioner();
        let d = DomainName::parse("example.com").expect("domain");
        let got: Vec<(String, String, Vec<String>)> = p
            .desired(&d, 7)
            .into_iter()
            .map(|r| (r.name, r.record_type, r.contents))
            .collect();
        let s = |v: &str| v.to_owned();
        assert_eq!(
            got,
            vec![
                (s("example.com."), s("A"), vec![s("127.0.0.1")]),
                (s("example.com."), s("MX"), vec![s("10 mail.mpanel.test.")]),
                (
                    s("example.com."),
                    s("NS"),
                    vec![s("ns1.mpanel.test."), s("ns2.mpanel.test.")]
                ),
                (
                    s("example.com."),
                    s("SOA"),
                    vec![s(
                        "ns1.mpanel.test. hostmaster.mpanel.test. 7 10800 3600 604800 3600"
                    )]
                ),
                (s("www.example.com."), s("A"), vec![s("127.0.0.1")]),
            ]
        );
    }

    #[test]
    fn drift_ignores_the_soa_serial_but_nothing_else() {
        let p = provisioner();
        let d = DomainName::parse("example.com").expect("domain");
        let desired = p.desired(&d, 2_026_112_501);
        let rr = |name: &str, t: &str, contents: &[&str], disabled: bool| {
            json!({"name": name, "type": t, "ttl": 3600,
                   "records": contents.iter().map(|c| json!({"content": c, "disabled": disabled})).collect::<Vec<_>>()})
        };
        let base = |a: &str, a_disabled: bool| {
            json!({"rrsets": [
                rr("example.com.", "SOA", &["ns1.mpanel.test. hostmaster.mpanel.test. 2026112509 10800 3600 604800 3600"], false),
                rr("example.com.", "NS", &["ns2.mpanel.test.", "ns1.mpanel.test."], false),
                rr("example.com.", "A", &[a], a_disabled),
                rr("www.example.com.", "A", &["127.0.0.1"], false),
                rr("example.com.", "MX", &["10 mail.mpanel.test."], false),
                rr("example.com.", "TXT", &["\"other\""], false),
            ]})
        };
        assert!(drifted(&zone(&base("127.0.0.1", false)), &desired).is_empty());
        assert_eq!(
            drifted(&zone(&base("10.0.0.9", false)), &desired),
            ["example.com./A"]
        );
        assert_eq!(
            drifted(&zone(&base("127.0.0.1", true)), &desired),
            ["example.com./A"]
        );
        let fresh = zone(&json!({"rrsets": [rr("example.com.", "SOA",
            &["a.misconfigured.dns.server.invalid. hostmaster.example.com. 2026112501 10800 3600 604800 3600"], false)]}));
        assert_eq!(drifted(&fresh, &desired).len(), 5);
        assert_eq!(fresh.soa_serial(), 2_026_112_501);
    }

    #[test]
    fn status_classification_and_detail() {
        let t = classify("x", StatusCode::BAD_GATEWAY, "");
        assert!(matches!(t, ProvisionError::Transient(_)));
        let p = classify(
            "x",
            StatusCode::UNPROCESSABLE_ENTITY,
            &error_detail(r#"{"error": "unable to parse IP address"}"#),
        );
        assert_eq!(
            p,
            ProvisionError::Permanent(
                "x: PowerDNS answered 422 Unprocessable Entity: unable to parse IP address".into()
            )
        );
        assert_eq!(error_detail("Unauthorized\n"), "Unauthorized");
        assert_eq!(error_detail(&"é".repeat(500)).chars().count(), 201);
    }

    #[test]
    fn redaction_removes_the_key() {
        let p = provisioner();
        assert_eq!(
            p.redact("key super-secret-key was wrong"),
            "key [redacted] was wrong"
        );
    }
}
