//! Switchback: a host-level atomic deployment agent. Releases are verified, unpacked into their own immutable
//! directories, switched to with an atomic symlink rename, restarted, health-checked, and rolled back
//! automatically when they fail. `main.rs` only parses arguments and prints errors; everything is here.

pub mod cli;
pub mod config;
pub mod error;
pub mod exit;
pub mod unpack;
pub mod version;

mod activate;
mod app;
mod artifact;
mod clear;
mod command;
mod crashpoint;
mod daemon;
mod demo;
mod deploy;
mod fsutil;
mod health;
mod history;
mod hooks;
mod index;
mod integrity;
mod lock;
mod manifest;
mod owner;
mod pin;
mod progress;
mod publish;
mod pull;
mod reconcile;
mod redact;
mod retention;
mod rollback;
mod service;
mod source;
mod state;
mod status;
mod store;
mod timeline;
mod trust;
