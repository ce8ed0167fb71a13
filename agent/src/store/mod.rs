//! The release store on disk: an archive's bytes become `ROOT/releases/VERSION/` (unpack, staging, the atomic
//! switch of `current`, prune), with an index of every release that proves later that it is still the release
//! that was verified, and what a release declares about itself (`.switchback/release.toml`: its epoch).
//!
//! Owns every write under an app root. It must never write outside the app's own directories, never follow a link
//! while writing, never replace a release and never leave `current` pointing at anything but a complete release.
//! It knows nothing of channels, services, health or the daemon; it depends only on `base`.

pub mod declared;
pub mod index;
pub mod layout;
pub mod reuse;
pub mod unpack;
pub mod usage;
