//! `keel-sim --seeds N [--start S] [--nodes K]`: runs seeds S..S+N with all faults on.
//! `keel-sim --seed S --trace`: replays one seed, printing its transcript.
//! `keel-sim --teeth N`: runs each deliberately broken core and driver until caught (or N
//! seeds).

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use keel::driver::DriverBug;
use keel_raft::testkit::Bug;
use keel_tests::{SimConfig, run_seed};

#[derive(Parser)]
#[command(about = "Keel's deterministic Raft simulator")]
struct Args {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Run only this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Cluster size (0: cycle through 3, 5, 7).
    #[arg(long, default_value_t = 0)]
    nodes: usize,
    /// Print the whole transcript as it runs.
    #[arg(long)]
    trace: bool,
    /// Disable PreVote (to watch a flapping node disrupt the cluster).
    #[arg(long)]
    no_pre_vote: bool,
    /// For each broken variant of the core, count the seeds until the simulator catches it
    /// (at most this many).
    #[arg(long)]
    teeth: Option<u64>,
    /// Run with this broken variant of the core (a `testkit::Bug` name, e.g. LeaseByRole)
    /// or of the driver (a `DriverBug` name, e.g. AckBeforeDurable).
    #[arg(long)]
    bug: Option<String>,
}

/// The broken blob placement (`SimConfig::place_on_one`), by name.
const PLACE_ON_ONE: &str = "PlaceBlobOnOneNode";
/// The broken garbage collection (`SimConfig::gc_ignores_laggers`), by name.
const GC_IGNORES_LAGGERS: &str = "GcIgnoresLaggingMembers";

fn config(args: &Args, seed: u64) -> SimConfig {
    let nodes = if args.nodes == 0 {
        [3, 5, 7][(seed % 3) as usize]
    } else {
        args.nodes
    };
    let mut cfg = SimConfig::mixed(seed, nodes);
    cfg.trace = args.trace;
    cfg.pre_vote = !args.no_pre_vote;
    cfg.bug = args
        .bug
        .as_deref()
        .and_then(|name| Bug::ALL.into_iter().find(|b| format!("{b:?}") == name));
    cfg.driver_bug = args.bug.as_deref().and_then(|name| {
        DriverBug::ALL
            .into_iter()
            .find(|b| format!("{b:?}") == name)
    });
    cfg.place_on_one = args.bug.as_deref() == Some(PLACE_ON_ONE);
    cfg.gc_ignores_laggers = args.bug.as_deref() == Some(GC_IGNORES_LAGGERS);
    cfg
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(name) = &args.bug
        && !Bug::ALL.iter().any(|b| format!("{b:?}") == *name)
        && !DriverBug::ALL.iter().any(|b| format!("{b:?}") == *name)
        && name != PLACE_ON_ONE
        && name != GC_IGNORES_LAGGERS
    {
        eprintln!(
            "unknown bug {name:?}; one of {:?} {:?}",
            Bug::ALL,
            DriverBug::ALL
        );
        return ExitCode::FAILURE;
    }
    if let Some(limit) = args.teeth {
        return teeth(&args, limit);
    }
    let (start, count) = match args.seed {
        Some(s) => (s, 1),
        None => (args.start, args.seeds),
    };
    let began = Instant::now();
    let (mut steps, mut violations) = (0u64, 0u64);
    let (mut staged, mut resumed, mut replayed) = (0u64, 0u64, 0u64);
    for seed in start..start + count {
        let out = run_seed(config(&args, seed));
        steps += out.steps;
        staged += out.snapshots_staged;
        resumed += out.snapshot_resumes;
        replayed += out.journal_replayed;
        if let Some(v) = out.violation {
            violations += 1;
            if !args.trace {
                for line in &out.transcript {
                    println!("{line}");
                }
            }
            println!("seed {seed} FAILED: {v}");
            println!(
                "replay: cargo run --release -p keel-tests --bin keel-sim -- --seed {seed} --trace"
            );
            break;
        }
    }
    let secs = began.elapsed().as_secs_f64();
    eprintln!(
        "{:.0} seeds/s, {:.0} steps/s",
        count as f64 / secs,
        steps as f64 / secs
    );
    println!(
        "sim: {count} seeds, {steps} steps, {violations} violations \
         ({staged} snapshot images staged, {resumed} transfers resumed, \
         {replayed} journaled commands replayed)"
    );
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn teeth(args: &Args, limit: u64) -> ExitCode {
    println!(
        "{:<32} {:>14}  caught by",
        "broken variant", "seeds to catch"
    );
    let variants = Bug::ALL
        .into_iter()
        .map(|b| (format!("{b:?}"), Some(b), None, 0))
        .chain(
            DriverBug::ALL
                .into_iter()
                .map(|b| (format!("driver: {b:?}"), None, Some(b), 0)),
        )
        .chain([
            (format!("blobs: {PLACE_ON_ONE}"), None, None, 1),
            (format!("blobs: {GC_IGNORES_LAGGERS}"), None, None, 2),
        ]);
    let mut missed = 0;
    for (name, bug, driver_bug, blob_bug) in variants {
        let mut caught = None;
        for seed in args.start..args.start + limit {
            let mut cfg = config(args, seed);
            cfg.bug = bug;
            cfg.driver_bug = driver_bug;
            cfg.place_on_one = blob_bug == 1;
            cfg.gc_ignores_laggers = blob_bug == 2;
            if let Some(v) = run_seed(cfg).violation {
                caught = Some((seed - args.start + 1, v.property()));
                break;
            }
        }
        match caught {
            Some((n, prop)) => println!("{name:<32} {n:>14}  {prop}"),
            None => {
                missed += 1;
                println!("{name:<32} {:>14}  NOT CAUGHT", format!(">{limit}"));
            }
        }
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
    if missed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
