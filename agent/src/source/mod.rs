//! Where releases come from: the bucket of an app (manifests, archives, signatures, resumable downloads), the
//! signed channel manifest and its checks, and the one descriptor through which an artifact is read.
//!
//! Owns the network and everything untrusted that arrives from it. Nothing here activates or runs anything:
//! it hands over verified manifests and opened artifacts. It depends on `base`, `error` and `config`, never on the
//! state directory, the host or the engine.

pub mod artifact;
pub mod bucket;
pub mod manifest;
pub mod origin;
