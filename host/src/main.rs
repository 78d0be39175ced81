//! The `keel` command-line interface (design §2). Each subcommand is a thin shell over a
//! library function, so that its logic is tested where it lives.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Keel: a Raft host whose replicated state machines are WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print what a node's data directory holds.
    ///
    /// Cluster UUID, node id, term, vote, first/last log index and term, last applied, snapshot
    /// index and plugin namespaces with key counts. Exits non-zero on a missing, corrupt or
    /// foreign file, and while a node has the directory open.
    Inspect {
        /// The node's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Inspect { data_dir } => match keel_storage::inspect(&data_dir) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keel inspect: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
