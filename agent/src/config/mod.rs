//! The configuration file: parsed and validated as a pure value before anything touches the disk. Unknown keys and
//! bad values are errors naming the file, the key and what was expected. Durations are written "500ms", "30s";
//! sizes "4GiB", "512MiB" or a plain number of bytes.
//!
//! `check.rs` loads and validates the file; `error.rs` holds the typed errors of this layer (a file not loaded and
//! why, a value a shared check refused, an unknown app). It depends on `base` and `store` only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

mod check;
mod error;

pub use check::{no_credentials, parse_keys, valid_app_name, valid_host_id};
pub use error::{ConfigError, LoadError, UnknownApp, ValueError};

pub const DEFAULT_PATH: &str = "/etc/switchback/switchback.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default)]
    pub apps: BTreeMap<String, AppConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_poll", deserialize_with = "crate::base::units::duration")]
    pub poll_interval: Duration,
    /// A group that may read `status` and `history` (the state files); everything else in STATE_DIR is root's.
    pub read_group: Option<String>,
    /// This host's id in a fleet (it names the host's report and seeds its place in staged rollouts); without it,
    /// `/etc/machine-id`.
    pub host_id: Option<String>,
    /// Where the daemon serves Prometheus metrics at `/metrics` (an IP address and port); none when absent.
    pub metrics: Option<String>,
}

impl AgentConfig {
    /// The metrics address, once validated.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_deref().and_then(|a| a.parse().ok())
    }

    /// This host's id: `host_id`, else the machine id; `None` when neither is there.
    pub fn host_id(&self) -> Option<String> {
        self.host_id.clone().or_else(|| {
            let id = std::fs::read_to_string(MACHINE_ID).ok()?;
            let id = id.trim();
            valid_host_id(id).then(|| id.to_owned())
        })
    }
}

/// Where the host id comes from when `[agent] host_id` is not set.
pub const MACHINE_ID: &str = "/etc/machine-id";

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            state_dir: default_state_dir(),
            poll_interval: default_poll(),
            read_group: None,
            host_id: None,
            metrics: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub root: PathBuf,
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// How unchanged files are shared with the releases on disk: "auto" (reflink, else hard link), "reflink",
    /// "hardlink" or "off".
    #[serde(default)]
    pub reuse: crate::store::reuse::ReuseMode,
    /// The app's place in the artifact bucket, `BASE/APP` (s3://, gs://, az://, https://, file://).
    pub source: Option<String>,
    /// S3-compatible endpoint (e.g. a MinIO or Garage server); AWS itself needs none.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Allow plain-http endpoints (loopback test servers); off by default.
    #[serde(default)]
    pub allow_http: bool,
    /// A directory watched for `*.json` manifests (+ `.minisig`) with their archives, deployed at once.
    pub inbox: Option<PathBuf>,
    /// How downloads from `source` give up on a slow or silent bucket.
    #[serde(default)]
    pub download: DownloadPolicy,
    #[serde(default = "default_channel")]
    pub channel: String,
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Paths under `ROOT/shared/` linked into every release.
    #[serde(default)]
    pub shared: Vec<PathBuf>,
    /// The app's user, "USER", "USER:GROUP" or "UID:GID": it owns what it writes under `ROOT/shared/`, and its group
    /// may read the release (which stays root's: nobody but root can change a verified release).
    pub owner: Option<String>,
    /// Absolute prefixes a symlink of a release may lead into, outside the release (its `ROOT/shared` always may).
    #[serde(default = "default_outside_links")]
    pub outside_links: Vec<PathBuf>,
    /// The user hooks and exec checks run as (default: `owner`, or root when there is none); "root" to keep root.
    pub run_as: Option<String>,
    /// The longest a manifest may stay valid (`expires` minus now); a manifest asking for longer is refused.
    #[serde(default = "default_max_lifetime", deserialize_with = "crate::base::units::duration")]
    pub max_manifest_lifetime: Duration,
    #[serde(default)]
    pub limits: Limits,
    pub service: Option<ServiceConfig>,
    #[serde(default)]
    pub checks: Vec<CheckConfig>,
    #[serde(default)]
    pub health: HealthPolicy,
    #[serde(default)]
    pub hooks: HooksConfig,
}

/// Downloads: a connection silent for `stall`, or slower than `min_rate` over a `stall` window, is dropped and
/// the download resumed (with exponential backoff, at most `attempts` times); the whole download ends at
/// `deadline`. A trickling server can hold a download no longer than that.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DownloadPolicy {
    #[serde(default = "default_stall", deserialize_with = "crate::base::units::duration")]
    pub stall: Duration,
    #[serde(default = "default_min_rate", deserialize_with = "crate::base::units::size")]
    pub min_rate: u64,
    #[serde(default = "default_download_deadline", deserialize_with = "crate::base::units::duration")]
    pub deadline: Duration,
    #[serde(default = "default_attempts")]
    pub attempts: u32,
}

impl Default for DownloadPolicy {
    fn default() -> Self {
        DownloadPolicy {
            stall: default_stall(),
            min_rate: default_min_rate(),
            deadline: default_download_deadline(),
            attempts: default_attempts(),
        }
    }
}

pub use crate::store::unpack::Limits;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// systemd unit restarted (or reloaded) with systemctl.
    pub unit: Option<String>,
    /// `systemctl reload-or-restart` rather than `restart`: reloaded when it runs, started when it does not.
    #[serde(default)]
    pub reload: bool,
    /// Command that restarts the service, for hosts without systemd.
    pub restart: Option<Vec<String>>,
    #[serde(default = "default_restart_timeout", deserialize_with = "crate::base::units::duration")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    pub http: Option<String>,
    pub tcp: Option<String>,
    pub exec: Option<Vec<String>>,
    pub unit_active: Option<bool>,
    pub expect_status: Option<u16>,
    pub body_contains: Option<String>,
    #[serde(default = "default_check_timeout", deserialize_with = "crate::base::units::duration")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthPolicy {
    #[serde(default = "zero", deserialize_with = "crate::base::units::duration")]
    pub start_period: Duration,
    #[serde(default = "one_second", deserialize_with = "crate::base::units::duration")]
    pub interval: Duration,
    #[serde(default = "default_healthy_after")]
    pub healthy_after: u32,
    #[serde(default = "default_deadline", deserialize_with = "crate::base::units::duration")]
    pub deadline: Duration,
    #[serde(default = "zero", deserialize_with = "crate::base::units::duration")]
    pub bake: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            start_period: zero(),
            interval: one_second(),
            healthy_after: default_healthy_after(),
            deadline: default_deadline(),
            bake: zero(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    pub before_activate: Option<Vec<String>>,
    pub after_activate: Option<Vec<String>>,
    pub after_rollback: Option<Vec<String>>,
    #[serde(default = "default_hook_timeout", deserialize_with = "crate::base::units::duration")]
    pub timeout: Duration,
    /// Whether hooks shipped in the archive (`.switchback/hooks/NAME`) run; configured hooks always do.
    #[serde(default = "yes")]
    pub from_archive: bool,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            before_activate: None,
            after_activate: None,
            after_rollback: None,
            timeout: default_hook_timeout(),
            from_archive: true,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Hook {
    BeforeActivate,
    AfterActivate,
    AfterRollback,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::BeforeActivate, Hook::AfterActivate, Hook::AfterRollback];

    pub fn name(self) -> &'static str {
        match self {
            Hook::BeforeActivate => "before_activate",
            Hook::AfterActivate => "after_activate",
            Hook::AfterRollback => "after_rollback",
        }
    }
}

/// Where an archive ships the hook, relative to the release.
pub fn shipped(hook: Hook) -> String {
    format!(".switchback/hooks/{}", hook.name())
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/switchback")
}
fn default_stall() -> Duration {
    Duration::from_secs(30)
}
fn default_min_rate() -> u64 {
    16 << 10
}
fn default_download_deadline() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_attempts() -> u32 {
    5
}
fn default_poll() -> Duration {
    Duration::from_secs(30)
}
fn default_keep() -> usize {
    5
}
fn default_channel() -> String {
    "production".to_owned()
}
fn default_restart_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_healthy_after() -> u32 {
    3
}
fn default_deadline() -> Duration {
    Duration::from_secs(60)
}
fn default_hook_timeout() -> Duration {
    Duration::from_secs(300)
}
/// The system's own directories: a virtualenv's `bin/python3 -> /usr/bin/python3`, a link to a system library.
pub fn default_outside_links() -> Vec<PathBuf> {
    ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/opt", "/etc/alternatives"].iter().map(PathBuf::from).collect()
}
fn default_max_lifetime() -> Duration {
    Duration::from_secs(90 * 86400)
}
fn yes() -> bool {
    true
}
fn zero() -> Duration {
    Duration::ZERO
}
fn one_second() -> Duration {
    Duration::from_secs(1)
}
