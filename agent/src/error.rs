//! Typed errors of the library. Messages are lowercase and read after "failed to" or on their own; the cause
//! sits in `#[source]` and is never pasted into the message (the CLI prints the whole chain with `{:#}`, and an
//! error printed on its own is printed with `base::chain::text`).
//!
//! The errors of the layers below have their own types, which [`Error`] wraps as they are (`?` converts them):
//! [`crate::config::LoadError`] and [`crate::config::UnknownApp`] of the configuration, and
//! `source::SourceError` of sources, artifacts and keys.

use std::path::PathBuf;

use crate::base::exit;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file was not loaded: it names the file, and its source says why.
    #[error(transparent)]
    Config(#[from] crate::config::LoadError),

    #[error(transparent)]
    UnknownApp(#[from] crate::config::UnknownApp),

    #[error(transparent)]
    InvalidVersion(#[from] crate::base::version::InvalidVersion),

    #[error("invalid usage: {0}")]
    Usage(String),

    #[error("app `{app}` is busy: {holder}; waited {waited_secs}s for its lock ({})", path.display())]
    Busy { app: String, path: PathBuf, waited_secs: u64, holder: String },

    #[error(
        "another switchback daemon (pid {pid}) already runs on the state directory {}; one daemon per state \
         directory", state_dir.display()
    )]
    DaemonRunning { state_dir: PathBuf, pid: String },

    #[error("refused archive {archive}")]
    ArchiveRefused {
        archive: PathBuf,
        #[source]
        source: Box<crate::store::unpack::UnpackError>,
    },

    #[error(
        "version `{version}` of `{app}` already exists with other content (recorded sha256 {recorded}, this artifact {actual})"
    )]
    VersionConflict { app: String, version: String, recorded: String, actual: String },

    #[error("version `{version}` of `{app}` is marked bad ({reason}); deploy it again only with --force")]
    MarkedBad { app: String, version: String, reason: String },

    #[error("app `{app}` is pinned to `{pinned}`; run `switchback unpin {app}` first (or pass --force)")]
    Pinned { app: String, pinned: String },

    /// A switch back to a release of a lower epoch (across a marked schema migration), not forced.
    #[error(
        "`{app}` is on `{current}` (epoch {current_epoch}) and `{target}` is of the lower epoch {target_epoch}: \
         going back across an epoch (a marked schema migration) is refused, as `{target}` may not read what \
         `{current}` migrated; pass --force to switch anyway"
    )]
    LowerEpoch { app: String, current: String, current_epoch: u64, target: String, target_epoch: u64 },

    /// The manifest and the release (its archive's `.switchback/release.toml`, or its record) say different epochs.
    #[error(
        "version `{version}` of `{app}` is of epoch {declared} ({declared_by}), but its signed manifest says epoch \
         {manifest}; refused, nothing was activated"
    )]
    EpochMismatch { app: String, version: String, manifest: u64, declared: u64, declared_by: String },

    /// The archive's `.switchback/release.toml` is not valid: the release is refused.
    #[error("refused archive {archive}")]
    InvalidDeclaration {
        archive: PathBuf,
        #[source]
        source: crate::store::declared::InvalidDeclaration,
    },

    #[error("version `{version}` of `{app}` is not on disk (on disk: {available})")]
    NotOnDisk { app: String, version: String, available: String },

    #[error(
        "version `{version}` of `{app}` on disk is not the release that was verified: {detail}; nothing of it runs \
         until it is removed and deployed again"
    )]
    NotVerified { app: String, version: String, detail: String },

    #[error(
        "`{version}` of `{app}` is not on disk, and the signed manifest of channel `{channel}` names {named}{why}; \
         only a version a signed manifest names is fetched: publish or promote it, or pass --file ARCHIVE"
    )]
    NotPublished { app: String, version: String, channel: String, named: String, why: String },

    #[error("no earlier good release of `{app}` to roll back to")]
    NoRollbackTarget { app: String },

    #[error(
        "not enough free space under {path}: {available} available, {needed} needed (release estimate plus reserve)"
    )]
    NoSpace { path: PathBuf, available: String, needed: String },

    #[error("deploy of `{version}` to `{app}` failed ({reason}); rolled back to `{restored}`")]
    RolledBack { app: String, version: String, restored: String, reason: String },

    #[error("switching `{app}` to `{target}` failed ({reason}); `{target}` is marked bad, and the app is back on `{restored}`, healthy")]
    SwitchFailed { app: String, target: String, restored: String, reason: String },

    #[error("ROLLBACK FAILED for `{app}`: {reason}; the app needs a person")]
    RollbackFailed { app: String, reason: String },

    /// A release failed and the way back would cross an epoch: the app stays on it, degraded.
    #[error(
        "`{failed}` of `{app}` is not healthy ({reason}), and it is not rolled back to `{target}`: `{target}` is of \
         epoch {target_epoch} and `{failed}` of epoch {failed_epoch}, and an automatic rollback never crosses an \
         epoch; `{failed}` stays active and the app is DEGRADED: it needs a person"
    )]
    EpochHeld { app: String, failed: String, failed_epoch: u64, target: String, target_epoch: u64, reason: String },

    #[error("health checks of `{app}` failed: {reason}")]
    CheckFailed { app: String, reason: String },

    #[error("the work on `{app}` was interrupted by the daemon's shutdown during {step}; the next start finishes it")]
    Interrupted { app: String, step: String },

    /// A source, an artifact or a key: see `source::SourceError` (a refused artifact is one of them).
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
}

impl Error {
    /// `version` is not among the releases `on_disk`; the message lists those that are.
    pub fn not_on_disk(
        app: &str,
        version: &crate::base::version::Version,
        on_disk: &[crate::base::version::Version],
    ) -> Error {
        let available = on_disk.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        Error::NotOnDisk {
            app: app.to_owned(),
            version: version.to_string(),
            available: if available.is_empty() { "none".into() } else { available },
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::UnknownApp(_) | Error::InvalidVersion(_) | Error::Usage(_) => exit::USAGE,
            Error::Busy { .. } | Error::DaemonRunning { .. } => exit::BUSY,
            Error::RolledBack { .. } | Error::SwitchFailed { .. } => exit::ROLLED_BACK,
            Error::RollbackFailed { .. } | Error::EpochHeld { .. } => exit::ROLLBACK_FAILED,
            Error::ArchiveRefused { .. }
            | Error::VersionConflict { .. }
            | Error::MarkedBad { .. }
            | Error::Pinned { .. }
            | Error::LowerEpoch { .. }
            | Error::EpochMismatch { .. }
            | Error::InvalidDeclaration { .. }
            | Error::NotOnDisk { .. }
            | Error::NotVerified { .. }
            | Error::NotPublished { .. }
            | Error::NoRollbackTarget { .. }
            | Error::NoSpace { .. }
            | Error::CheckFailed { .. }
            | Error::Interrupted { .. }
            | Error::Source(_) => exit::FAILED,
        }
    }
}

/// Maps an error chain to its exit code: the first typed error in the chain decides ([`Error`], or an error of a
/// layer below that reached the chain without it: an invalid version, configuration or app name is a usage error
/// wherever it comes from, a source's error a plain failure); anything untyped is a plain failure.
pub fn code_for(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|cause| {
            let usage = cause.is::<crate::base::version::InvalidVersion>()
                || cause.is::<crate::config::LoadError>()
                || cause.is::<crate::config::UnknownApp>();
            cause
                .downcast_ref::<Error>()
                .map(Error::exit_code)
                .or(usage.then_some(exit::USAGE))
                .or(cause.is::<crate::source::SourceError>().then_some(exit::FAILED))
        })
        .unwrap_or(exit::FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::source::SourceError;

    #[test]
    fn the_layers_errors_keep_their_exit_codes_wrapped_or_not() {
        let config = || Config::parse("[apps.web]\nroot = \"srv\"\n", std::path::Path::new("/x.toml")).unwrap_err();
        let ok = Config::parse("[apps.web]\nroot = \"/srv/web\"\n", std::path::Path::new("/x.toml")).unwrap();
        let unknown = || ok.app("api").unwrap_err();
        let source = || SourceError::NotFound { at: "s3://b/web/x".into() };
        for (err, code) in [
            (anyhow::Error::from(config()), exit::USAGE),
            (Error::from(config()).into(), exit::USAGE),
            (anyhow::Error::from(config()).context("loading"), exit::USAGE),
            (anyhow::Error::from(unknown()), exit::USAGE),
            (Error::from(unknown()).into(), exit::USAGE),
            (anyhow::Error::from(source()), exit::FAILED),
            (Error::from(source()).into(), exit::FAILED),
        ] {
            assert_eq!(code_for(&err), code, "{err:#}");
        }
        // Wrapped, they print as they do on their own.
        assert_eq!(
            format!("{:#}", anyhow::Error::from(Error::from(config()))),
            format!("{:#}", anyhow::Error::from(config()))
        );
        assert_eq!(Error::from(unknown()).to_string(), "unknown app `api` (configured: web)");
    }
}
