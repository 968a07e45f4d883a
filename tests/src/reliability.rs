//! The reliability ledger behind `docs/reliability.md` (issue #9).
//!
//! Every fault and attack test, once its assertions have passed, appends one JSON line to
//! `target/reliability/ledger.jsonl` (or `$RELIABILITY_DIR/ledger.jsonl`): which scenario it
//! proved, which test proves it, and — for faults — how many orders were accepted, lost and
//! duplicated. `scripts/reliability-report.sh` (the `reliability-report` binary of this crate)
//! turns the ledger of one run into `docs/reliability.md`, so the document states what the last
//! run of the suite actually showed rather than what someone once wrote down. A test that fails
//! records nothing, so its scenario is missing from the report.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Whether a scenario breaks the infrastructure under the app or attacks its API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A dependency fails (a crash, an outage, a race) and the app must lose nothing.
    Fault,
    /// A hostile request that must be refused and leave no trace.
    Attack,
}

/// What a fault test counted once the dust settled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Orders the webhook accepted (201/200), including the ones a client re-sent after a 503.
    pub accepted: u64,
    /// Accepted orders that are not in the log, or never reached ACTIVE.
    pub lost: u64,
    /// Extra `OrderPlaced` per payment, extra `JobSucceeded` per job, extra activations.
    pub duplicates: u64,
}

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Fault or attack.
    pub kind: Kind,
    /// What was done to the app, in an operator's words.
    pub scenario: String,
    /// The test that proves it: `tests/tests/FILE.rs::function`.
    pub test: String,
    /// For attacks: how many hostile requests the test sent; for faults: 1.
    pub tries: u64,
    /// For faults: the orders' fate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tally: Option<Tally>,
}

/// Where the ledger lives: `$RELIABILITY_DIR`, else the workspace's `target/reliability`.
#[must_use]
pub fn ledger_dir() -> PathBuf {
    std::env::var_os("RELIABILITY_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/reliability"),
        PathBuf::from,
    )
}

/// The ledger file.
#[must_use]
pub fn ledger_path() -> PathBuf {
    ledger_dir().join("ledger.jsonl")
}

fn append(entry: &Entry) {
    let dir = ledger_dir();
    std::fs::create_dir_all(&dir).expect("reliability ledger dir");
    let mut line = serde_json::to_vec(entry).expect("ledger entry as JSON");
    line.push(b'\n');
    // One `write_all` of one short line on an O_APPEND file: concurrent tests (threads of one
    // binary, binaries run side by side) never interleave within a line.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ledger_path())
        .and_then(|mut f| f.write_all(&line))
        .expect("append to the reliability ledger");
}

fn test_name(file: &str, function: &str) -> String {
    format!("{file}::{function}")
}

/// Records that the fault `scenario` was survived, as `function` in `file` (pass `file!()`)
/// proved with `tally`. Call it after the test's assertions, so only a passing test counts.
///
/// # Panics
/// When the ledger cannot be written.
pub fn fault(scenario: &str, file: &str, function: &str, tally: Tally) {
    append(&Entry {
        kind: Kind::Fault,
        scenario: scenario.to_owned(),
        test: test_name(file, function),
        tries: 1,
        tally: Some(tally),
    });
}

/// Records that the attack `scenario` (`tries` hostile requests) was refused, as `function` in
/// `file` (pass `file!()`) proved. Call it after the test's assertions.
///
/// # Panics
/// When the ledger cannot be written.
pub fn attack(scenario: &str, file: &str, function: &str, tries: usize) {
    append(&Entry {
        kind: Kind::Attack,
        scenario: scenario.to_owned(),
        test: test_name(file, function),
        tries: u64::try_from(tries).expect("a count fits"),
        tally: None,
    });
}

/// Reads a ledger (JSON lines; blank lines skipped).
///
/// # Errors
/// The line number and parse error of the first malformed line.
pub fn parse(ledger: &str) -> Result<Vec<Entry>, String> {
    ledger
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// `docs/reliability.md` for `entries`: the totals, then one table row per scenario. A scenario
/// recorded twice (a test run twice into one ledger) counts once, with its last tally.
#[must_use]
pub fn render(entries: &[Entry], generated: &str) -> String {
    let mut scenarios: BTreeMap<(Kind, String), &Entry> = BTreeMap::new();
    for e in entries {
        scenarios.insert((e.kind, e.scenario.clone()), e);
    }
    let of = |kind: Kind| scenarios.values().filter(move |e| e.kind == kind);
    let faults = of(Kind::Fault).count();
    let attacks = of(Kind::Attack).count();
    let hostile: u64 = of(Kind::Attack).map(|e| e.tries).sum();
    let tallies: Vec<Tally> = of(Kind::Fault).filter_map(|e| e.tally).collect();
    let accepted: u64 = tallies.iter().map(|t| t.accepted).sum();
    let lost: u64 = tallies.iter().map(|t| t.lost).sum();
    let duplicates: u64 = tallies.iter().map(|t| t.duplicates).sum();

    let mut out = String::new();
    out.push_str("# Reliability: faults survived and attacks refused\n\n");
    out.push_str(
        "<!-- Generated by scripts/reliability-report.sh from the ledger the fault and attack \
         tests write (tests/src/reliability.rs). Do not edit: run scripts/test.sh. -->\n\n",
    );
    out.push_str(&format!(
        "Last generated {generated} from the ledger of one test run (`scripts/test.sh` \
         regenerates this file after the fault tier when every step passed). Each row is a \
         black-box test against the real binary and the real servers that passed in that run; a \
         scenario whose test failed or did not run is absent.\n\n"
    ));
    out.push_str("| measure | count |\n|---|---|\n");
    out.push_str(&format!("| faults survived | {faults} |\n"));
    out.push_str(&format!(
        "| attack scenarios refused | {attacks} ({hostile} hostile requests) |\n"
    ));
    out.push_str(&format!("| orders accepted during faults | {accepted} |\n"));
    out.push_str(&format!("| orders lost | {lost} |\n"));
    out.push_str(&format!(
        "| duplicates (orders, job successes, activations) | {duplicates} |\n\n"
    ));
    out.push_str(
        "The fault tier (`tests/tests/faults/`, via `faults::settle`) checks after each fault \
         that every accepted order — including those a client re-sent after a 503 — is ACTIVE \
         and FULFILLED (directly, or visibly PROVISIONING_FAILED and then retried to ACTIVE), \
         that each payment intent has exactly one `OrderPlaced`, each job one `JobSucceeded` and \
         each subscription one activation, and that `mpanel events verify` passes. Rows proved \
         elsewhere check the same loss and duplicate counts for their scenario. Each attack's \
         test checks the refusal (status and problem type) and that nothing was written; the \
         webhook, Stripe and auth tests also check that no key, signature, token or password \
         reaches the log.\n\n",
    );
    out.push_str("## Faults\n\n| scenario | orders accepted | lost | duplicates | proved by |\n");
    out.push_str("|---|---|---|---|---|\n");
    for e in of(Kind::Fault) {
        let t = e.tally.unwrap_or_default();
        out.push_str(&format!(
            "| {} | {} | {} | {} | `{}` |\n",
            e.scenario, t.accepted, t.lost, t.duplicates, e.test
        ));
    }
    out.push_str("\n## Attacks\n\n| scenario | hostile requests | proved by |\n|---|---|---|\n");
    for e in of(Kind::Attack) {
        out.push_str(&format!(
            "| {} | {} | `{}` |\n",
            e.scenario, e.tries, e.test
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, scenario: &str, tries: u64, tally: Option<Tally>) -> Entry {
        Entry {
            kind,
            scenario: scenario.into(),
            test: "tests/tests/x.rs::t".into(),
            tries,
            tally,
        }
    }

    #[test]
    fn the_report_counts_each_scenario_once_and_sums_the_tallies() {
        let t = |accepted, lost| {
            Some(Tally {
                accepted,
                lost,
                duplicates: 0,
            })
        };
        let entries = vec![
            entry(Kind::Fault, "pg fast", 1, t(10, 0)),
            entry(Kind::Fault, "pg fast", 1, t(12, 0)),
            entry(Kind::Fault, "redis", 1, t(3, 1)),
            entry(Kind::Attack, "jwt none", 4, None),
        ];
        let md = render(&entries, "now");
        assert!(md.contains("| faults survived | 2 |"), "{md}");
        assert!(md.contains("| attack scenarios refused | 1 (4 hostile requests) |"));
        assert!(md.contains("| orders accepted during faults | 15 |"));
        assert!(md.contains("| orders lost | 1 |"));
        assert_eq!(md.matches("| pg fast |").count(), 1);
    }

    #[test]
    fn a_ledger_round_trips_and_a_bad_line_is_named() {
        let line = serde_json::to_string(&entry(Kind::Attack, "a", 2, None)).expect("json");
        let parsed = parse(&format!("{line}\n\n{line}\n")).expect("parses");
        assert_eq!(parsed.len(), 2);
        let error = parse("{}\n").expect_err("an entry needs its fields");
        assert!(error.starts_with("line 1:"), "{error}");
    }
}
