//! The ground floor: small, self-contained pieces every other stage uses: validated versions, redaction of
//! secrets, error chains on one line, durable file writes, what root may trust on disk, owners, crash points,
//! progress and cancellation, the timeline of an operation's steps, and the exit-code table.
//!
//! Owns no app, no state and no policy. It must never depend on any other folder of the crate: everything else
//! points down to here.

pub mod activity;
pub mod chain;
pub mod crashpoint;
pub mod digest;
pub mod exit;
pub mod fsutil;
pub mod owner;
pub mod progress;
pub mod redact;
pub mod timeline;
pub mod trust;
pub mod units;
pub mod verdict;
pub mod version;
