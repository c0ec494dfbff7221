//! The control plane's state: commands applied to a state machine and
//! persisted in redb before the caller hears "done".
//!
//! [`State`] is the pure state machine (no I/O); [`Store`] applies each
//! command to it and writes the records it changed in one durable redb
//! transaction, so an acknowledged write survives `kill -9`. Heartbeat-derived
//! soft state (metrics, leases) does not live here.

pub mod cachelog;
mod state;
mod store;

pub use cachelog::CacheBacklog;
pub use state::{Command, Key, NodeRecord, State, StateError, WorkloadRecord};
pub use store::{Durability, Store, StoreError};
