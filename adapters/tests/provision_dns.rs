//! The DNS provisioner against the real PowerDNS of the local stack (`scripts/stack.sh start`;
//! `scripts/test.sh` exports `POWERDNS_API_URL`, `POWERDNS_API_KEY`, `POWERDNS_DNS_PORT`).
//!
//! Each test uses its own zone (`t-<uuid>.example.net`) and deletes it at the end. Missing
//! variables fail the test: a skipped DNS test would hide a broken provisioner.

use std::collections::HashMap;
use std::process::Command;

use mpanel_adapters::provisioners::dns::{PowerDnsConfig, PowerDnsProvisioner};
use mpanel_adapters::provisioners::{ProvisionError, ProvisionRequest, Provisioner};
use mpanel_domain::job::{DnsRecord, JobAction, StepOutcome};
use mpanel_domain::step::ProvisioningStep;
use mpanel_domain::values::DomainName;
use serde_json::{json, Value};
use uuid::Uuid;

const WEB_IP: &str = "192.0.2.10";

fn env_var(var: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "{var} is not set: run the suite with scripts/test.sh, or \
             `set -a; source .stack/stack.env; set +a` after scripts/stack.sh start"
            )
        })
}

/// The stack's PowerDNS with a web IP that differs from the default, so a test can tell
/// desired content from anything PowerDNS would make up.
fn config_with(api_url: &str, api_key: &str) -> PowerDnsConfig {
    let env = HashMap::from([
        ("POWERDNS_API_URL", api_url),
        ("POWERDNS_API_KEY", api_key),
        ("HOSTING_WEB_IPV4", WEB_IP),
        ("DNS_TTL", "300"),
    ]);
    PowerDnsConfig::load(&env).expect("test configuration is valid")
}

fn provisioner() -> PowerDnsProvisioner {
    PowerDnsProvisioner::new(config_with(
        &env_var("POWERDNS_API_URL"),
        &env_var("POWERDNS_API_KEY"),
    ))
    .expect("client builds")
}

fn unique_domain() -> DomainName {
    let id = Uuid::new_v4().simple().to_string();
    DomainName::parse(&format!("t-{}.example.net", &id[..12])).expect("valid test domain")
}

/// A test's own zone, deleted when the test ends, also when it fails half-way.
struct TestZone(DomainName);

impl TestZone {
    fn new() -> Self {
        Self(unique_domain())
    }
}

impl Drop for TestZone {
    fn drop(&mut self) {
        let domain = self.0.clone();
        // `drop` cannot await, and may run while the test's runtime is unwinding: use a
        // thread with a runtime of its own.
        let removed = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(provisioner().remove_zone(&domain))
                .map_err(|e| e.to_string())
        })
        .join();
        if !matches!(removed, Ok(Ok(()))) {
            eprintln!("could not remove test zone {}: {removed:?}", self.0);
        }
    }
}

fn request(domain: &DomainName) -> ProvisionRequest {
    request_for(domain, JobAction::Provision)
}

fn request_for(domain: &DomainName, action: JobAction) -> ProvisionRequest {
    ProvisionRequest {
        job_id: Uuid::new_v4(),
        subscription_id: Uuid::new_v4(),
        step: ProvisioningStep::Dns,
        domain: domain.clone(),
        action,
    }
}

/// Raw API calls, for setting up the states a crash or a hand edit would leave. Repeats a 5xx:
/// the stack's gsqlite3 backend answers 500 "database is locked" under concurrent writes.
async fn api(method: reqwest::Method, path: &str, body: &Value) -> reqwest::StatusCode {
    let url = format!(
        "{}/api/v1/servers/localhost/zones{path}",
        env_var("POWERDNS_API_URL").trim_end_matches('/')
    );
    let client = reqwest::Client::new();
    for pause in [100, 200, 400, 800] {
        let status = client
            .request(method.clone(), &url)
            .header("X-API-Key", env_var("POWERDNS_API_KEY"))
            .json(body)
            .send()
            .await
            .expect("PowerDNS API reachable")
            .status();
        if !status.is_server_error() {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
    panic!("PowerDNS kept answering 5xx to {method} {url}");
}

fn record(name: &str, record_type: &str, contents: &[&str]) -> DnsRecord {
    DnsRecord {
        name: name.to_owned(),
        record_type: record_type.to_owned(),
        ttl: 300,
        contents: contents.iter().map(|c| (*c).to_owned()).collect(),
    }
}

/// The desired records, with the SOA serial taken from `records` (PowerDNS owns it).
fn expected(domain: &DomainName, records: &[DnsRecord]) -> Vec<DnsRecord> {
    let apex = domain.fqdn();
    let serial = records
        .iter()
        .find(|r| r.record_type == "SOA")
        .and_then(|r| r.contents.first())
        .and_then(|c| c.split_whitespace().nth(2))
        .expect("a SOA record")
        .to_owned();
    let soa = format!("ns1.mpanel.test. hostmaster.mpanel.test. {serial} 10800 3600 604800 3600");
    vec![
        record(&apex, "A", &[WEB_IP]),
        record(&apex, "MX", &["10 mail.mpanel.test."]),
        record(&apex, "NS", &["ns1.mpanel.test.", "ns2.mpanel.test."]),
        record(&apex, "SOA", &[&soa]),
        record(&format!("www.{apex}"), "A", &[WEB_IP]),
    ]
}

fn outcome_records(domain: &DomainName, outcome: StepOutcome) -> Vec<DnsRecord> {
    match outcome {
        StepOutcome::Dns { zone, records } => {
            assert_eq!(zone, domain.fqdn());
            records
        }
        other => panic!("expected a DNS outcome, got {other:?}"),
    }
}

async fn records_in_powerdns(p: &PowerDnsProvisioner, domain: &DomainName) -> Vec<DnsRecord> {
    p.zone_records(domain)
        .await
        .expect("reading the zone")
        .expect("the zone exists")
}

/// `dig +short` against the stack's PowerDNS: what resolvers would actually be told.
fn dig(name: &str, record_type: &str) -> String {
    let port = env_var("POWERDNS_DNS_PORT");
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port,
            "+short",
            "+time=2",
            "+tries=2",
            record_type,
            name,
        ])
        .output()
        .expect("dig runs (bind9-dnsutils installed?)");
    assert!(out.status.success(), "dig failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn provisions_a_new_zone_that_resolvers_see() {
    let p = provisioner();
    let zone = TestZone::new();
    let domain = &zone.0;

    let records = outcome_records(
        domain,
        p.provision(&request(domain)).await.expect("provisioned"),
    );

    assert_eq!(records, expected(domain, &records));
    assert_eq!(
        records_in_powerdns(&p, domain).await,
        records,
        "API shows exactly the outcome"
    );
    assert_eq!(dig(&format!("www.{domain}"), "A"), WEB_IP);
    assert_eq!(dig(domain.as_str(), "A"), WEB_IP);
    assert_eq!(dig(domain.as_str(), "MX"), "10 mail.mpanel.test.");
}

#[tokio::test]
async fn re_running_after_success_changes_nothing() {
    let p = provisioner();
    let zone = TestZone::new();
    let domain = &zone.0;

    let first = p.provision(&request(domain)).await.expect("first run");
    let before = records_in_powerdns(&p, domain).await;
    let second = p.provision(&request(domain)).await.expect("second run");

    assert_eq!(first, second, "same outcome, SOA serial included");
    assert_eq!(records_in_powerdns(&p, domain).await, before);
}

#[tokio::test]
async fn re_running_repairs_drift_and_leaves_unmanaged_rrsets() {
    let p = provisioner();
    let zone = TestZone::new();
    let domain = &zone.0;
    let apex = domain.fqdn();
    let first = outcome_records(
        domain,
        p.provision(&request(domain)).await.expect("first run"),
    );

    let edit = json!({"rrsets": [
        {"name": apex, "type": "A", "ttl": 60, "changetype": "REPLACE",
         "records": [{"content": "198.51.100.7", "disabled": false},
                     {"content": "198.51.100.8", "disabled": false}]},
        {"name": apex, "type": "MX", "ttl": 300, "changetype": "REPLACE",
         "records": [{"content": "10 mail.mpanel.test.", "disabled": true}]},
        {"name": format!("stray.{apex}"), "type": "TXT", "ttl": 300, "changetype": "REPLACE",
         "records": [{"content": "\"left by hand\"", "disabled": false}]},
    ]});
    let status = api(reqwest::Method::PATCH, &format!("/{apex}"), &edit).await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT);
    assert_eq!(
        dig(domain.as_str(), "A").lines().count(),
        2,
        "drift is live"
    );

    let repaired = outcome_records(domain, p.provision(&request(domain)).await.expect("repair"));

    assert_eq!(repaired, expected(domain, &repaired));
    assert_ne!(repaired, first, "the SOA serial moved on with the repair");
    let mut in_powerdns = records_in_powerdns(&p, domain).await;
    let stray = in_powerdns
        .iter()
        .position(|r| r.record_type == "TXT")
        .expect("the unmanaged TXT rrset is left alone");
    assert_eq!(in_powerdns.remove(stray).name, format!("stray.{apex}"));
    assert_eq!(in_powerdns, repaired);
    assert_eq!(dig(domain.as_str(), "A"), WEB_IP);
    assert_eq!(dig(domain.as_str(), "MX"), "10 mail.mpanel.test.");
}

#[tokio::test]
async fn converges_a_zone_left_half_made_by_a_crash() {
    let p = provisioner();
    let zone = TestZone::new();
    let domain = &zone.0;
    // What a provisioner killed right after its POST leaves: PowerDNS's placeholder SOA only.
    let created = api(
        reqwest::Method::POST,
        "",
        &json!({"name": domain.fqdn(), "kind": "Native", "nameservers": []}),
    )
    .await;
    assert_eq!(created, reqwest::StatusCode::CREATED);
    let half = records_in_powerdns(&p, domain).await;
    assert!(
        half.iter().all(|r| r.record_type == "SOA"),
        "only the placeholder SOA: {half:?}"
    );

    let records = outcome_records(
        domain,
        p.provision(&request(domain)).await.expect("converged"),
    );

    assert_eq!(records, expected(domain, &records));
    assert_eq!(records_in_powerdns(&p, domain).await, records);
    assert_eq!(dig(&format!("www.{domain}"), "A"), WEB_IP);
}

#[tokio::test]
async fn a_wrong_key_is_permanent_and_not_repeated_and_a_dead_server_is_transient() {
    let zone = TestZone::new();
    let domain = &zone.0;
    let wrong_key = format!("wrong-key-{}", Uuid::new_v4().simple());
    let p = PowerDnsProvisioner::new(config_with(&env_var("POWERDNS_API_URL"), &wrong_key))
        .expect("client builds");

    let err = p.provision(&request(domain)).await.expect_err("refused");
    let ProvisionError::Permanent(message) = &err else {
        panic!("a wrong key is permanent, got {err:?}");
    };
    assert!(message.contains("401"), "{message}");
    assert!(!message.contains(&wrong_key), "the key leaked: {message}");
    assert!(
        !format!("{p:?}").contains(&wrong_key),
        "the key leaked through Debug"
    );

    let dead = PowerDnsProvisioner::new(config_with("http://127.0.0.1:1", &wrong_key))
        .expect("client builds");
    let err = dead
        .provision(&request(domain))
        .await
        .expect_err("unreachable");
    let ProvisionError::Transient(message) = &err else {
        panic!("an unreachable server is transient, got {err:?}");
    };
    assert!(!message.contains(&wrong_key), "the key leaked: {message}");
    assert!(
        provisioner()
            .zone_records(domain)
            .await
            .expect("read")
            .is_none(),
        "nothing was created"
    );
}

#[tokio::test]
async fn removing_a_zone_is_idempotent() {
    let p = provisioner();
    let zone = TestZone::new();
    let domain = &zone.0;
    p.provision(&request(domain)).await.expect("provisioned");

    p.remove_zone(domain).await.expect("first removal");
    p.remove_zone(domain)
        .await
        .expect("second removal of a missing zone");

    assert_eq!(p.zone_records(domain).await.expect("read"), None);
    assert_eq!(dig(&format!("www.{domain}"), "A"), "", "no longer served");
}

#[tokio::test]
async fn terminate_deletes_the_zone_and_converges() {
    let p = provisioner();
    let zone = TestZone::new();
    let domain = &zone.0;
    p.provision(&request(domain)).await.expect("provisioned");
    assert_eq!(dig(domain.as_str(), "A"), WEB_IP);
    let terminated = StepOutcome::Changed {
        action: JobAction::Terminate,
        server: "powerdns".into(),
        target: domain.fqdn(),
        archived: None,
    };

    let first = p
        .provision(&request_for(domain, JobAction::Terminate))
        .await
        .expect("terminated");
    assert_eq!(first, terminated);
    assert_eq!(p.zone_records(domain).await.expect("read"), None);
    assert_eq!(dig(domain.as_str(), "A"), "", "no longer served");

    // A retried job (the first attempt's answer lost) finds nothing left and succeeds alike.
    let again = p
        .provision(&request_for(domain, JobAction::Terminate))
        .await
        .expect("terminated again");
    assert_eq!(again, terminated);
    assert_eq!(p.zone_records(domain).await.expect("read"), None);

    // A zone that never existed (a crash before the order's DNS step) terminates the same way.
    let never = TestZone::new();
    let outcome = p
        .provision(&request_for(&never.0, JobAction::Terminate))
        .await
        .expect("nothing to delete");
    assert!(matches!(
        outcome,
        StepOutcome::Changed {
            action: JobAction::Terminate,
            archived: None,
            ..
        }
    ));
}

#[tokio::test]
async fn terminate_against_a_failing_server_changes_nothing_and_can_be_retried() {
    let p = provisioner();
    let zone = TestZone::new();
    let domain = &zone.0;
    let before = outcome_records(
        domain,
        p.provision(&request(domain)).await.expect("provisioned"),
    );

    let dead = PowerDnsProvisioner::new(config_with("http://127.0.0.1:1", "any-key"))
        .expect("client builds");
    let err = dead
        .provision(&request_for(domain, JobAction::Terminate))
        .await
        .expect_err("unreachable");
    assert!(matches!(err, ProvisionError::Transient(_)), "{err:?}");
    assert_eq!(
        records_in_powerdns(&p, domain).await,
        before,
        "zone untouched"
    );

    p.provision(&request_for(domain, JobAction::Terminate))
        .await
        .expect("the retry succeeds");
    assert_eq!(p.zone_records(domain).await.expect("read"), None);
}

#[tokio::test]
async fn suspend_and_unsuspend_are_refused_without_touching_the_zone() {
    let p = provisioner();
    let zone = TestZone::new();
    let domain = &zone.0;
    let before = outcome_records(
        domain,
        p.provision(&request(domain)).await.expect("provisioned"),
    );

    for action in [JobAction::Suspend, JobAction::Unsuspend] {
        let err = p
            .provision(&request_for(domain, action))
            .await
            .expect_err("no such DNS action");
        let ProvisionError::Permanent(message) = &err else {
            panic!("a DNS {action} is permanent, got {err:?}");
        };
        assert!(message.contains(action.as_str()), "{message}");
    }
    assert_eq!(records_in_powerdns(&p, domain).await, before);
}
