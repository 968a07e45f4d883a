//! Writes `docs/reliability.md` from the reliability ledger the fault and attack tests filled
//! during one run of the suite (see `mpanel_tests::reliability`); `scripts/test.sh` runs it
//! through `scripts/reliability-report.sh` after the fault tier.
//!
//! Usage: `reliability-report [LEDGER [OUTPUT]]` (defaults: `target/reliability/ledger.jsonl`,
//! `docs/reliability.md`). Fails when the ledger is missing or empty — a report of nothing would
//! claim nothing was tested — or when a recorded fault lost or duplicated an order.

use std::path::PathBuf;
use std::process::ExitCode;

use mpanel_tests::reliability::{ledger_path, parse, render};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let ledger = args.next().map_or_else(ledger_path, PathBuf::from);
    let output = args.next().map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/reliability.md"),
        PathBuf::from,
    );
    let text = match std::fs::read_to_string(&ledger) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("reliability-report: reading {}: {e}", ledger.display());
            return ExitCode::FAILURE;
        }
    };
    let entries = match parse(&text) {
        Ok(entries) if !entries.is_empty() => entries,
        Ok(_) => {
            eprintln!("reliability-report: {} is empty", ledger.display());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("reliability-report: {}: {e}", ledger.display());
            return ExitCode::FAILURE;
        }
    };
    let bad: Vec<&str> = entries
        .iter()
        .filter(|e| e.tally.is_some_and(|t| t.lost > 0 || t.duplicates > 0))
        .map(|e| e.scenario.as_str())
        .collect();
    let generated = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    if let Err(e) = std::fs::write(&output, render(&entries, &generated)) {
        eprintln!("reliability-report: writing {}: {e}", output.display());
        return ExitCode::FAILURE;
    }
    println!(
        "reliability-report: {} entries -> {}",
        entries.len(),
        output.display()
    );
    if bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "reliability-report: orders lost or duplicated in: {}",
            bad.join(", ")
        );
        ExitCode::FAILURE
    }
}
