//! Test fixture, not an example: a plugin that misbehaves on command, so the host's
//! containment and determinism can be tested with real Rust-compiled code. Each
//! command is `{"op":"…"}`; see `Command`. Used by `host/plugin/tests/`.

use keel_guest::{Context, Error, StateMachine, kv};
use serde::{Deserialize, Serialize};
use std::hash::BuildHasher;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

/// Hidden guest state: survives between calls only if the host reuses an instance.
static CALLS: AtomicU64 = AtomicU64::new(0);

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
enum Command {
    /// Behaves: stores `value` under `key`, answers "ok".
    Put { key: String, value: String },
    /// Counts calls in a global and answers the count (1 on a fresh instance).
    HiddenCounter,
    /// Spins forever (fuel).
    Loop,
    /// Allocates 1 MiB blocks forever (memory limit).
    Alloc,
    /// Recurses without bound (call stack).
    Recurse,
    /// Panics (a trap).
    Panic,
    /// Answers `len` bytes.
    Big { len: usize },
    /// Sleeps an hour (non-deterministic waiting is refused).
    Sleep,
    /// Exits the process with status 3.
    Exit,
    /// Reports what the WASI clocks, randomness, environment and filesystem show.
    Ambient,
    /// Writes to stdout and stderr, then answers "ok".
    Print,
    /// Tries to open a TCP connection and reports how that failed.
    Net,
    /// Writes `count` keys, then fails: none of the writes may survive.
    WriteThenFail { count: u32 },
}

#[derive(Serialize)]
#[serde(untagged)]
enum Output {
    Text(String),
    Count { calls: u64 },
    Ambient(Ambient),
}

#[derive(Serialize)]
struct Ambient {
    wall_ms: u128,
    monotonic_elapsed_ns: u128,
    random: u64,
    env_vars: usize,
    args: usize,
    read_root: bool,
    ctx_seed: u64,
}

fn recurse(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return 0;
    }
    black_box(recurse(depth + 1)) + 1
}

struct Misbehave;

impl StateMachine for Misbehave {
    type Command = Command;
    type Output = Output;
    type Query = String;
    type QueryOutput = String;

    fn apply(ctx: &Context, command: Command) -> Result<Output, Error> {
        Ok(match command {
            Command::Put { key, value } => {
                kv::set(key.as_bytes(), value.as_bytes())?;
                Output::Text("ok".into())
            }
            Command::HiddenCounter => Output::Count {
                calls: CALLS.fetch_add(1, Ordering::Relaxed) + 1,
            },
            Command::Loop => {
                let mut n = 0u64;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            Command::Alloc => {
                let mut hoard = Vec::new();
                loop {
                    // Reserve without filling: the limit, not fuel, must stop this.
                    let mut block = Vec::<u8>::with_capacity(1 << 20);
                    block.push(1);
                    hoard.push(black_box(block));
                }
            }
            Command::Recurse => Output::Count { calls: recurse(0) },
            Command::Panic => panic!("misbehave was asked to panic"),
            Command::Big { len } => Output::Text("x".repeat(len)),
            Command::Sleep => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Output::Text("slept".into())
            }
            Command::Exit => std::process::exit(3),
            Command::Ambient => {
                let start = std::time::Instant::now();
                let wall_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_err(|e| Error::msg(e.to_string()))?
                    .as_millis();
                Output::Ambient(Ambient {
                    wall_ms,
                    monotonic_elapsed_ns: start.elapsed().as_nanos(),
                    random: std::collections::hash_map::RandomState::new().hash_one(42u64),
                    env_vars: std::env::vars().count(),
                    args: std::env::args().count(),
                    read_root: std::fs::read_dir("/").is_ok(),
                    ctx_seed: ctx.seed,
                })
            }
            Command::Print => {
                println!("hello from misbehave on stdout");
                eprintln!("hello from misbehave on stderr");
                Output::Text("ok".into())
            }
            Command::Net => match std::net::TcpStream::connect("127.0.0.1:9") {
                Ok(_) => Output::Text("connected".into()),
                Err(e) => Output::Text(format!("connect failed: {:?}", e.kind())),
            },
            Command::WriteThenFail { count } => {
                for i in 0..count {
                    kv::set(format!("doomed/{i}").as_bytes(), b"x")?;
                }
                return Err(Error::msg(format!("failed after {count} writes")));
            }
        })
    }

    /// Any query tries to write, which the host refuses.
    fn query(key: String) -> Result<String, Error> {
        kv::set(key.as_bytes(), b"written by a query")?;
        Ok("the write went through".into())
    }
}

keel_guest::export_state_machine!(Misbehave);
