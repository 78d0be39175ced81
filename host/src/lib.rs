//! Keel: a Raft host whose replicated state machines are WebAssembly components.
//!
//! This crate is the node: [`node`] drives the consensus core (`keel-raft`) over durable
//! storage (`keel-storage`) and plugins (`keel-plugin`); [`net`] serves peers and clients
//! over HTTP; [`dev`] starts a local cluster; [`client`] is the CLI's client and [`cli`] the
//! rest of the CLI that has tests.

pub mod apply;
pub mod apply_worker;
pub mod blobs;
pub mod cli;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod deploy;
pub mod dev;
pub mod log_writer;
pub mod metrics;
pub mod net;
pub mod node;
pub mod transport;
