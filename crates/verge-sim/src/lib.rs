//! `verge sim`: a simulated fleet on the real protocol.
//!
//! N agents in one process connect to a real `verge server` over the real
//! gateway, placed in real cities weighted by population, and report RTTs
//! from a real measured matrix. The run measures what the server sustains
//! and how well it places, fails over and learns the network. This crate
//! owns the simulated nodes and the measurements; it never reaches into the
//! server other than through its API and gateway.

mod fleet;
mod node;
mod report;
mod run;
mod secure;

pub use fleet::{Fleet, SimError};
pub use report::Report;
pub use run::{run, SimOptions};
pub use secure::SimTls;
