//! The state directory `STATE_DIR/APP/`: the app's state with its in-flight step (the intent journal) and the
//! [`journal::Journal`] that is its one writer, the append-only history, the app's lock and the daemon's
//! published status.
//!
//! Owns every write under the state directory and the modes of what it writes. It must never write a file that
//! a reader could see torn, never rewrite a line of history, and never decide anything: what to do next is the
//! engine's. It depends on `base`, `error` and `source` (for the manifest it records).

pub mod history;
pub mod info;
pub mod journal;
pub mod lock;
pub mod state;
