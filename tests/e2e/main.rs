//! End-to-end tests: each drives the real `switchback` binary on its own temporary host tree.

mod harness;

mod cli;
mod crash;
mod health;
mod hostile;
