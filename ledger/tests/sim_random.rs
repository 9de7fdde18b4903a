//! Randomised simulation: every seed draws its own faults (drops, duplicates, reordering,
//! delays, partitions, crashes, a lagging replica, a Byzantine replica) and checks agreement,
//! no double vote, certificates, liveness after healing and durability across a cold restart.
//!
//! `EHR_SIM_SEED=<n>` replays one seed; `EHR_SIM_SEEDS=<count>` runs more.

use ehr_ledger::sim::{Sim, SimConfig, seeds_from_env};

#[test]
fn random_scenarios_keep_safety_and_liveness() {
    let seeds = seeds_from_env(0, 1000);
    let mut failures = Vec::new();
    let mut committed = 0u64;
    let mut views = 0u64;
    for &seed in &seeds {
        let cfg = SimConfig::random(seed);
        match Sim::new(cfg.clone()).run() {
            Ok(r) => {
                committed += r.committed_height;
                views += r.max_view;
            }
            Err(e) => {
                eprintln!("{e}\n  scenario: {cfg:?}");
                failures.push(e);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed; first: {}",
        failures.len(),
        seeds.len(),
        failures[0]
    );
    assert!(committed > 0, "nothing was ever committed");
    eprintln!(
        "{} seeds, {committed} heights committed, {views} view changes",
        seeds.len()
    );
}
