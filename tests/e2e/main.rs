//! End-to-end tests: each drives the real `switchback` binary on its own temporary host tree.

mod bucket;
mod bucket_faults;
mod harness;
mod tarw;

mod cli;
mod crash;
mod daemon;
mod delta;
mod epochs;
mod faults;
mod fidelity;
mod fleet;
mod fuzz;
mod health;
mod hostile;
mod memory;
mod metrics;
mod nspawn;
mod operations;
mod package;
mod reuse;
mod security;
mod snapshots;
mod zero_downtime;
