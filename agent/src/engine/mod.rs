//! The operations on an app: deploy, activate (switch, restart, prove, and the way back), rollback, reconcile
//! after a crash, pin, clear, prune, pulling from a channel, and what status reports.
//!
//! Owns the order of steps and the state transitions between them, journaled before each step takes effect. It
//! must never switch to a release that is not complete and verified, never prune the previous good release, and
//! never need the network for a rollback. It uses the stages below it (store, source, statedir, host, app) and
//! is used only by the daemon and the CLI.

pub mod activate;
pub mod clear;
pub mod delivery;
pub mod deploy;
pub mod pin;
pub mod plan;
pub mod pull;
pub mod reconcile;
pub mod retention;
pub mod rollback;
pub mod status;
