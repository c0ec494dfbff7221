//! Verge data synchronisation: keeps trees of files in step between edge
//! nodes over slow, costly links.
//!
//! - [`manifest`]: what a tree holds, with change detection by size, mtime and inode;
//! - [`signature`], [`rollsum`], [`delta`]: rsync-style block matching;
//! - [`base`]: zstd patch-from against a version the receiver acknowledged;
//! - [`cdc`]: content-defined chunks, for files the receiver never held;
//! - [`transfer`]: the offer / request / bundle protocol, pure over bytes;
//! - [`bisync`]: who changed what since the last sync, for bidirectional sync;
//! - [`diff`]: the protocol run locally to report what a transfer would send;
//! - [`fsio`]: atomic, durable writes.

pub mod bandwidth;
pub mod base;
pub mod bisync;
pub mod cdc;
pub mod conflict;
pub mod delta;
pub mod diff;
pub mod error;
pub mod fsio;
pub mod manifest;
pub mod rollsum;
pub mod signature;
pub mod store;
pub mod transfer;
pub mod wire;

pub use error::{Result, SyncError};
