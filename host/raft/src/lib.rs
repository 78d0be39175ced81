#![doc = include_str!("../README.md")]

mod config;
mod error;
mod log;
mod message;
mod progress;
mod raft;
mod ready;
// The broken variants exist in every build, so the core names them in one way; only the
// testkit feature lets a caller switch them on.
#[cfg(feature = "testkit")]
pub mod testkit;
#[cfg(not(feature = "testkit"))]
#[allow(dead_code, unreachable_pub)]
mod testkit;
mod types;

pub use config::Config;
pub use error::{CompactError, ConfigChangeError, ConfigError, ProposeError, ReadError, StepError};
pub use message::{Message, MessageBody};
pub use progress::{Progress, ReplicationState};
pub use raft::{InitialState, Raft, ReadMode, Status};
pub use ready::{Event, ReadState, Ready};
pub use types::*;
