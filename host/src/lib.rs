//! Keel: a Raft host whose replicated state machines are WebAssembly components.
//!
//! This crate is the node, one layer per folder, imports pointing down (docs/node.md):
//! [`http`] serves clients and peers; [`driver`] drives the consensus core (`keel-raft`)
//! over durable storage (`keel-storage`); [`state`] applies committed entries through the
//! plugins (`keel-plugin`); [`peer`] sends Raft messages to the other nodes. [`dev`] starts
//! a local cluster; [`client`] is the CLI's client and [`cli`] the rest of the CLI that has
//! tests.

pub mod auth;
pub mod backup;
pub mod blobs;
pub mod certs;
pub mod cli;
pub mod cli_plugins;
pub mod client;
pub mod cluster_view;
pub mod config;
pub mod dev;
pub mod driver;
pub mod http;
pub mod join;
pub mod metrics;
pub mod peer;
pub mod plugin_dir;
pub mod plugin_test;
pub mod state;
pub mod templates;
pub mod tls;
