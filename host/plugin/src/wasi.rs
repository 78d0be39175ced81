//! Deterministic WASI 0.2 for plugins.
//!
//! A Rust `wasm32-wasip2` component imports a dozen WASI interfaces even when it uses
//! none, so Keel links them, with stand-ins that cannot differ between replicas:
//! - wall and monotonic clocks read the entry's leader timestamp and never advance;
//! - `wasi:random/*` streams are ChaCha12 seeded from the entry's seed;
//! - stdin is empty; stdout and stderr go to tracing (`keel::plugin`);
//! - no environment variables, no arguments, no preopened directories, so the
//!   filesystem interfaces can only fail;
//! - waiting on a clock (`subscribe-duration`, `subscribe-instant`: sleeps) traps, since
//!   a fixed clock would never fire and a real one would not be deterministic;
//! - `wasi:sockets` is linked (componentize-py components import it) with every use
//!   denied before any OS socket exists: creating a TCP or UDP socket fails with
//!   `access-denied`, name lookup with `permanent-resolver-failure`. Anything else a
//!   plugin imports fails to load with
//!   [`PluginError::UnsatisfiedImport`](crate::PluginError::UnsatisfiedImport).

use crate::store::HostState;
use rand_chacha::ChaCha12Rng;
use rand_core::SeedableRng;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream, WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::sync as wasi;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

/// The WASI version whose clock functions we override; wasmtime-wasi 48 serves 0.2.x
/// imports of every minor version from this one instance.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Longest stdout/stderr line forwarded to tracing; the rest is cut.
const MAX_LINE: usize = 4 << 10;

/// Why a guest was stopped by a WASI stand-in.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct WasiRefusal(pub(crate) &'static str);

/// A clock fixed at the entry's timestamp.
struct FixedClock {
    ms: u64,
}

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.ms)
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.ms.saturating_mul(1_000_000)
    }
}

/// stdout or stderr, forwarded line by line to tracing.
#[derive(Clone)]
struct TracingOutput {
    plugin: Arc<str>,
    stream: &'static str,
}

impl IsTerminal for TracingOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TracingOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only the p2 stream below is used: Keel links WASI 0.2, never 0.3.
        Box::new(tokio::io::sink())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter {
            out: self.clone(),
            line: Vec::new(),
        })
    }
}

struct LineWriter {
    out: TracingOutput,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        tracing::info!(target: "keel::plugin", plugin = %self.out.plugin, stream = self.out.stream, "{}", text.trim_end());
        self.line.clear();
    }
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        for &b in bytes.iter() {
            if b == b'\n' {
                self.emit();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit();
    }
}

/// The WASI context for one call: everything fixed by `(timestamp_ms, seed)`.
pub(crate) fn context(plugin: &Arc<str>, timestamp_ms: u64, seed: u64) -> WasiCtx {
    let mut b = WasiCtxBuilder::new();
    b.wall_clock(FixedClock { ms: timestamp_ms })
        .monotonic_clock(FixedClock { ms: timestamp_ms })
        .secure_random(ChaCha12Rng::seed_from_u64(seed))
        .insecure_random(ChaCha12Rng::seed_from_u64(seed.rotate_left(32)))
        .insecure_random_seed(u128::from(seed) << 64 | u128::from(!seed))
        .stdout(TracingOutput {
            plugin: plugin.clone(),
            stream: "stdout",
        })
        .stderr(TracingOutput {
            plugin: plugin.clone(),
            stream: "stderr",
        })
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    b.build()
}

/// `HasData` for the interfaces whose host state is the resource table alone.
struct Io;

impl HasData for Io {
    type Data<'a> = &'a mut ResourceTable;
}

/// Links the deterministic WASI 0.2 interfaces.
pub(crate) fn add_to_linker(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    fn table(t: &mut HostState) -> &mut ResourceTable {
        &mut t.table
    }
    wasi::io::error::add_to_linker::<HostState, Io>(l, table)?;
    wasi::io::poll::add_to_linker::<HostState, Io>(l, table)?;
    wasi::io::streams::add_to_linker::<HostState, Io>(l, table)?;
    wasi::clocks::wall_clock::add_to_linker::<HostState, WasiClocks>(l, HostState::clocks)?;
    wasi::clocks::monotonic_clock::add_to_linker::<HostState, WasiClocks>(l, HostState::clocks)?;
    wasi::filesystem::types::add_to_linker::<HostState, WasiFilesystem>(l, HostState::filesystem)?;
    wasi::filesystem::preopens::add_to_linker::<HostState, WasiFilesystem>(
        l,
        HostState::filesystem,
    )?;
    wasi::random::random::add_to_linker::<HostState, WasiRandom>(l, |t| t.wasi.random())?;
    wasi::random::insecure::add_to_linker::<HostState, WasiRandom>(l, |t| t.wasi.random())?;
    wasi::random::insecure_seed::add_to_linker::<HostState, WasiRandom>(l, |t| t.wasi.random())?;
    wasi::cli::exit::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    wasi::cli::environment::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    wasi::cli::stdin::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    wasi::cli::stdout::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    wasi::cli::stderr::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    wasi::cli::terminal_input::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    wasi::cli::terminal_output::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    wasi::cli::terminal_stdin::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    wasi::cli::terminal_stdout::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    wasi::cli::terminal_stderr::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;

    // Sockets: linked, but the context built in `context` allows no use at all.
    // (These four have no blocking functions, so wasmtime-wasi has no sync variant.)
    use wasmtime_wasi::p2::bindings::sockets as nonblocking;
    let net = nonblocking::network::LinkOptions::default();
    nonblocking::network::add_to_linker::<HostState, WasiSockets>(l, &net, HostState::sockets)?;
    nonblocking::instance_network::add_to_linker::<HostState, WasiSockets>(l, HostState::sockets)?;
    nonblocking::tcp_create_socket::add_to_linker::<HostState, WasiSockets>(l, HostState::sockets)?;
    nonblocking::ip_name_lookup::add_to_linker::<HostState, WasiSockets>(l, HostState::sockets)?;
    wasi::sockets::udp_create_socket::add_to_linker::<HostState, WasiSockets>(
        l,
        HostState::sockets,
    )?;
    wasi::sockets::tcp::add_to_linker::<HostState, WasiSockets>(l, HostState::sockets)?;
    wasi::sockets::udp::add_to_linker::<HostState, WasiSockets>(l, HostState::sockets)?;

    // Sleeping: refuse, deterministically, instead of blocking the apply loop.
    l.allow_shadowing(true);
    let mut clock = l.instance(MONOTONIC_CLOCK)?;
    for name in ["subscribe-duration", "subscribe-instant"] {
        clock.func_new(name, |_, _, _, _| {
            Err(wasmtime::Error::new(WasiRefusal(
                "waiting on a clock is not deterministic; Keel plugins cannot sleep",
            )))
        })?;
    }
    l.allow_shadowing(false);
    Ok(())
}
