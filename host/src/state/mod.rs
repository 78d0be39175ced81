//! The replicated state machine's side of the node: the plugin registry, applying committed
//! entries, the write-back layer and layered views, and the state hash.

mod apply;
mod auth;
mod dry_run;
mod hash;
mod journal;
mod layer;
mod registry;
mod versions;

pub use apply::*;
pub use auth::*;
pub use dry_run::*;
pub use hash::*;
pub use journal::*;
pub use layer::*;
pub use registry::*;
pub use versions::*;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_lifecycle;
