//! The crash drill (`meshca_bench::crash`): the real `meshca trust run` SIGKILLed at seeded
//! random moments through intermediate and root rotations on a file clock, every cluster's
//! bundle and the cross-cluster check judged after each kill, convergence after restarts.
//!
//! Usage: crash [folder|kube] [KILLS] [SEED]   (defaults: folder, 200, 1)
//! The `meshca` binary is the release build beside this one, or `MESHCA_BIN`. The kube store
//! needs the testkit's peers (`export MESHCA_PEERS_DIR=$(scripts/peers --print-dir)`).
//! Exits non-zero on any failure.

use std::path::PathBuf;
use std::process::ExitCode;

use meshca_bench::crash::{CrashConfig, StoreKind, run};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let store: StoreKind = match args.first().map_or(Ok(StoreKind::Folder), |s| s.parse()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("crash: {e}");
            return ExitCode::from(2);
        }
    };
    let number = |i: usize, default: u64| -> Result<u64, String> {
        args.get(i).map_or(Ok(default), |s| {
            s.parse().map_err(|_| format!("{s:?} is not a number"))
        })
    };
    let (kills, seed) = match (number(1, 200), number(2, 1)) {
        (Ok(k), Ok(s)) => (k as usize, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("crash: {e}");
            return ExitCode::from(2);
        }
    };
    let meshca = std::env::var_os("MESHCA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(meshca_bench::meshca_binary);
    let cfg = CrashConfig {
        meshca,
        store,
        kills,
        seed,
        converge_every: 20,
    };
    println!(
        "crash drill: {store:?} store, {kills} kills, seed {seed}, {}",
        cfg.meshca.display()
    );
    let report = match run(&cfg, &mut |line| println!("  {line}")) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crash: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!();
    println!(
        "| store | kills | in a restart | mid-write | torn writes left | root rotations | intermediate rotations | observations | failures | simulated | wall |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {store:?} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} days | {:.0} s |",
        report.kills,
        report.kills_in_startup,
        report.mid_write,
        report.torn_leftovers,
        report.root_rotations,
        report.intermediate_rotations,
        report.observations,
        report.failures.len(),
        report.simulated.as_seconds_f64() / 86_400.0,
        report.elapsed.as_secs_f64()
    );
    println!(
        "kill windows: {} ms after a clock step, {} ms after a start",
        report.windows.0.as_millis(),
        report.windows.1.as_millis()
    );
    for f in &report.failures {
        println!("FAILURE: {f}");
    }
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
