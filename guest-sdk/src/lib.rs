//! Write a Keel state-machine plugin in Rust.
//!
//! A plugin is a WebAssembly component implementing the `keel:plugin` world
//! (`wit/keel-plugin.wit`). This crate hides the bindings: implement [`StateMachine`]
//! with typed (serde) commands and queries, keep every piece of state in [`kv`], and
//! export the type with [`export_state_machine!`]:
//!
//! ```ignore
//! use keel_guest::{Context, Error, StateMachine, kv};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Add { by: u64 }
//!
//! struct Counter;
//!
//! impl StateMachine for Counter {
//!     type Command = Add;
//!     type Output = u64;
//!     type Query = ();
//!     type QueryOutput = u64;
//!
//!     fn apply(_ctx: &Context, cmd: Add) -> Result<u64, Error> {
//!         let n = kv::get_json::<u64>(b"n")?.unwrap_or(0) + cmd.by;
//!         kv::set_json(b"n", &n)?;
//!         Ok(n)
//!     }
//!
//!     fn query(_q: ()) -> Result<u64, Error> {
//!         Ok(kv::get_json::<u64>(b"n")?.unwrap_or(0))
//!     }
//! }
//!
//! keel_guest::export_state_machine!(Counter);
//! ```
//!
//! Build with plain `cargo build --release --target wasm32-wasip2`, with
//! `crate-type = ["cdylib"]`; the `.wasm` in `target/wasm32-wasip2/release/` is the
//! component to deploy.
//!
//! # Rules the host enforces
//! - **No state outside [`kv`]**: every call (or the commands of one log entry) runs on
//!   a fresh instance, so globals, statics and caches do not survive.
//! - `apply` writes are buffered and read back by later `kv` calls in the same call;
//!   they become durable only if `apply` returns `Ok`.
//! - `query` and `validate` may read, never write ([`KvError::ReadOnly`]).
//! - Clocks read the leader's timestamp of the entry, random bytes come from a seed
//!   fixed by the entry: the same on every replica. There is no filesystem, network or
//!   environment.
//! - Each call has a fuel (instruction) budget and a memory limit; exceeding either
//!   fails the command the same way on every replica.

// The generated bindings and the export macro name this crate by its public path.
extern crate self as keel_guest;

#[doc(hidden)]
pub mod bindings {
    //! Raw bindings generated from `wit/keel-plugin.wit`. Use the typed API instead.
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    wit_bindgen::generate!({
        path: "../wit",
        world: "keel:plugin/validating-state-machine",
        pub_export_macro: true,
        export_macro_name: "__export_raw",
        default_bindings_module: "::keel_guest::bindings",
        runtime_path: "::keel_guest::__private::wit_bindgen::rt",
    });
}

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use bindings::keel::plugin::kv::KvError;

/// What a plugin knows about the log entry being applied; the same on every replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// Raft log index of the entry (starts at 1).
    pub index: u64,
    /// Raft term of the entry.
    pub term: u64,
    /// The leader's wall clock when it proposed the entry, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Deterministic seed derived from (index, term).
    pub seed: u64,
    /// The id of the client that sent the command, if it sent one.
    pub client_id: Option<String>,
}

impl From<bindings::keel::plugin::types::ApplyContext> for Context {
    fn from(c: bindings::keel::plugin::types::ApplyContext) -> Self {
        Context {
            index: c.index,
            term: c.term,
            timestamp_ms: c.timestamp_ms,
            seed: c.seed,
            client_id: c.client_id,
        }
    }
}

/// A command or query failure. Its message becomes the call's error result, which the
/// client sees; for `apply` it also discards the call's KV writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn msg(message: impl Into<String>) -> Self {
        Error(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(format!("json: {e}"))
    }
}

impl From<KvError> for Error {
    fn from(e: KvError) -> Self {
        let what = match e {
            KvError::ReadOnly => "writes are not allowed here",
            KvError::KeyTooLarge => "key too large",
            KvError::ValueTooLarge => "value too large",
            KvError::BatchTooLarge => "too many bytes written in one call",
        };
        Error(format!("kv: {what}"))
    }
}

/// A replicated state machine whose state lives entirely in [`kv`].
///
/// There is no `self`: the host runs each call (or each log entry's commands) on a
/// fresh instance, so a value kept between calls would not survive anyway. Commands, queries and their answers are
/// JSON on the wire (serde).
pub trait StateMachine {
    /// A command, decoded from the JSON bytes the client proposed.
    type Command: DeserializeOwned;
    /// The answer to a command, encoded as JSON.
    type Output: Serialize;
    /// A read-only query, decoded from JSON.
    type Query: DeserializeOwned;
    /// The answer to a query, encoded as JSON.
    type QueryOutput: Serialize;

    /// Applies a committed command. Runs on every replica in log order.
    fn apply(ctx: &Context, command: Self::Command) -> Result<Self::Output, Error>;

    /// Answers a query from the current state; [`kv`] writes fail with `ReadOnly`.
    fn query(query: Self::Query) -> Result<Self::QueryOutput, Error>;

    /// Checks a command before the leader proposes it. The default accepts every
    /// command that decodes.
    fn validate(command: &Self::Command) -> Result<(), Error> {
        let _ = command;
        Ok(())
    }
}

/// The plugin's key-value namespace, ordered bytewise.
pub mod kv {
    use super::{Error, KvError};
    use crate::bindings::keel::plugin::kv as raw;
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    /// The value under `key`, if any.
    pub fn get(key: &[u8]) -> Option<Vec<u8>> {
        raw::get(key)
    }

    /// Stores `value` under `key`.
    pub fn set(key: &[u8], value: &[u8]) -> Result<(), KvError> {
        raw::set(key, value)
    }

    /// Removes `key` (a missing key is fine).
    pub fn delete(key: &[u8]) -> Result<(), KvError> {
        raw::delete(key)
    }

    /// Up to `limit` `(key, value)` pairs with `start <= key < end` (unbounded above
    /// when `end` is `None`), ascending.
    pub fn range(start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        raw::range(start, end, limit)
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect()
    }

    /// Up to `limit` pairs whose key starts with `prefix`, ascending.
    pub fn scan_prefix(prefix: &[u8], limit: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        let end = super::prefix_end(prefix);
        range(prefix, end.as_deref(), limit)
    }

    /// The JSON value under `key`, decoded.
    pub fn get_json<T: DeserializeOwned>(key: &[u8]) -> Result<Option<T>, Error> {
        match get(key) {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Stores `value` as JSON under `key`.
    pub fn set_json<T: Serialize>(key: &[u8], value: &T) -> Result<(), Error> {
        set(key, &serde_json::to_vec(value)?)?;
        Ok(())
    }
}

/// Blobs (design §6): bytes stored beside the log, any size, named by their SHA-256. A
/// command attaches blobs (`Keel-Attach: <sha256>,…` on the HTTP request, after `PUT
/// /v1/blobs`); the plugin reads them, and [`retain`](blobs::retain)s those its state
/// keeps, so they are not collected. Only attachments of the command being applied and
/// blobs this plugin retains can be read: every replica reads the same bytes.
pub mod blobs {
    use crate::bindings::keel::plugin::blobs as raw;

    pub use raw::BlobError;

    /// A blob: SHA-256 (64 lowercase hex digits) and length.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Blob {
        /// SHA-256 of the bytes, 64 lowercase hex digits.
        pub sha256: String,
        /// Length in bytes.
        pub len: u64,
    }

    /// The blobs the command being applied attaches, in the order the client named them.
    pub fn attachments() -> Vec<Blob> {
        raw::attachments()
            .into_iter()
            .map(|b| Blob {
                sha256: b.sha256,
                len: b.len,
            })
            .collect()
    }

    /// Up to `len` bytes of a blob from `offset` (at most 1 MiB per call; empty at the end).
    pub fn read(sha256: &str, offset: u64, len: u32) -> Result<Vec<u8>, BlobError> {
        raw::read(sha256, offset, len)
    }

    /// The whole blob (reads of 1 MiB until the end; mind the memory limit).
    pub fn read_all(sha256: &str) -> Result<Vec<u8>, BlobError> {
        let mut out = Vec::new();
        loop {
            let chunk = raw::read(sha256, out.len() as u64, 1 << 20)?;
            if chunk.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&chunk);
        }
    }

    /// Keeps the blob (an attachment of this command, or one already retained) for this
    /// plugin; counted: each retain needs its own release. `apply` only.
    pub fn retain(sha256: &str) -> Result<(), BlobError> {
        raw::retain(sha256)
    }

    /// Gives up one retain; the blob may be collected once nothing retains or names it.
    pub fn release(sha256: &str) -> Result<(), BlobError> {
        raw::release(sha256)
    }

    /// How many retains this plugin holds on the blob.
    pub fn retained(sha256: &str) -> u64 {
        raw::retained(sha256)
    }
}

impl From<blobs::BlobError> for Error {
    fn from(e: blobs::BlobError) -> Self {
        Error::msg(match e {
            blobs::BlobError::Unknown => {
                "blob unknown: not attached to this command and not retained"
            }
            blobs::BlobError::ReadOnly => "blobs cannot be retained or released here",
            blobs::BlobError::NotRetained => "blob not retained",
        })
    }
}

/// Logging to the host's tracing (target `keel::plugin`).
pub mod log {
    use crate::bindings::keel::plugin::log::{Level, log};

    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }

    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` when no
/// such key exists (the prefix is empty or all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Decodes, runs and encodes; used by [`export_state_machine!`].
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use super::{Context, Error, StateMachine};
    use crate::bindings::keel::plugin::types::ApplyContext;

    fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("invalid {what}: {e}"))
    }

    fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, String> {
        serde_json::to_vec(value).map_err(|e| format!("cannot encode the answer: {e}"))
    }

    pub fn apply<S: StateMachine>(ctx: ApplyContext, command: Vec<u8>) -> Result<Vec<u8>, String> {
        let command = decode::<S::Command>("command", &command)?;
        let out = S::apply(&Context::from(ctx), command).map_err(|e: Error| e.0)?;
        encode(&out)
    }

    pub fn query<S: StateMachine>(q: Vec<u8>) -> Result<Vec<u8>, String> {
        let q = decode::<S::Query>("query", &q)?;
        let out = S::query(q).map_err(|e: Error| e.0)?;
        encode(&out)
    }

    pub fn validate<S: StateMachine>(command: Vec<u8>) -> Result<(), String> {
        let command = decode::<S::Command>("command", &command)?;
        S::validate(&command).map_err(|e: Error| e.0)
    }
}

/// Exports a [`StateMachine`] implementation as the plugin's component exports.
/// Use once per plugin crate, at the crate root.
#[macro_export]
macro_rules! export_state_machine {
    ($machine:ty) => {
        #[doc(hidden)]
        struct __KeelExport;

        impl $crate::bindings::Guest for __KeelExport {
            fn apply(
                ctx: $crate::bindings::keel::plugin::types::ApplyContext,
                command: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                $crate::__private::apply::<$machine>(ctx, command)
            }

            fn query(
                q: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                $crate::__private::query::<$machine>(q)
            }

            fn validate(
                command: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::validate::<$machine>(command)
            }
        }

        $crate::bindings::__export_raw!(__KeelExport with_types_in $crate::bindings);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn kv_errors_become_readable_messages() {
        assert_eq!(
            Error::from(KvError::ReadOnly).message(),
            "kv: writes are not allowed here"
        );
    }

    #[test]
    fn a_command_that_does_not_decode_is_an_error_result() {
        struct Never;
        impl StateMachine for Never {
            type Command = u64;
            type Output = u64;
            type Query = u64;
            type QueryOutput = u64;
            fn apply(_ctx: &Context, c: u64) -> Result<u64, Error> {
                Ok(c)
            }
            fn query(q: u64) -> Result<u64, Error> {
                Ok(q)
            }
        }
        let err = __private::validate::<Never>(b"\"nope\"".to_vec());
        assert!(err.is_err_and(|e| e.starts_with("invalid command:")));
        assert_eq!(__private::query::<Never>(b"7".to_vec()), Ok(b"7".to_vec()));
    }
}
