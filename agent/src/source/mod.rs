//! Where releases come from: the bucket of an app (manifests, archives, signatures, resumable downloads), the
//! signed channel manifest and its checks, and the one descriptor through which an artifact is read; `error.rs`
//! says what went wrong with any of them (redacted: no credential ever shows).
//!
//! Owns the network and everything untrusted that arrives from it. Nothing here activates or runs anything:
//! it hands over verified manifests and opened artifacts. It depends on `base` and `config`, never on the
//! state directory, the host or the engine (nor on `crate::error`, which wraps its errors).

pub mod artifact;
pub mod bucket;
pub mod error;
pub mod manifest;
pub mod origin;
pub mod rollout;

pub use error::SourceError;
