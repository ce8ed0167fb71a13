//! Switchback: a host-level atomic deployment agent. Releases are verified, unpacked into their own immutable
//! directories, switched to with an atomic symlink rename, restarted, health-checked, and rolled back
//! automatically when they fail. `main.rs` only parses arguments and prints errors; everything is here.
//!
//! # Map
//!
//! Each folder is one stage of the flow, with a `//!` saying what it owns and what it must never do.
//! Dependencies point one way, down this table: a module uses only modules of its own row or of rows above it.
//!
//! | module | what it is | uses |
//! |---|---|---|
//! | `base/` | versions, redaction, error chains, durable writes, trust checks, owners, crash points, progress and the daemon's activity, timeline, verdicts, exit codes | nothing of ours |
//! | `store/` | the release store: unpack, staging, `current`, prune, the index of each release, reuse of unchanged files, what a release declares (`.switchback/release.toml`) | base |
//! | `config/` | the configuration file, parsed and validated once, and its typed errors | base, store |
//! | `source/` | buckets, signed manifests and where they came from, the artifact's one descriptor, a fleet's waves and host reports, and their typed errors | base, config |
//! | `error` | the typed errors (wrapping those of the rows above) and the one mapping of errors to exit codes | base, store, config, source |
//! | `statedir/` | state, the journal (its one writer), history, locks | base, error, source |
//! | `app/` | one managed app: its config, store and state paths, and the checks of what runs | all of the above |
//! | `host/` | commands, the service, health checks, hooks | base … app |
//! | `engine/` | the pure decisions (`plan`: the switch gate, recovery, convergence, waves and halts), then deploy, activate, rollback, reconcile, pin, clear, retention, pull, status | base … host |
//! | `daemon/` | the systemd service: one worker per app follows its channel and inbox, gated by its fleet's rollout, and reports | base … engine |
//! | `publish/`, `demo` | the CI side (keygen, publish, deltas, fleet status) and the self-contained demo | base … engine |
//! | `cli/` | the command line: parse, execute into a report, render it (human or JSON) | everything |

pub mod cli;
pub mod config;
pub mod error;

mod app;
mod base;
mod daemon;
mod demo;
mod engine;
mod host;
mod publish;
mod source;
mod statedir;
mod store;

pub use base::{exit, version};
pub use store::unpack;

/// The names of every crash point (see the `crash-points` feature), for the crash tests to check that each is
/// killed at.
pub fn crash_points() -> impl Iterator<Item = &'static str> {
    base::crashpoint::Point::ALL.iter().map(|p| p.name())
}
