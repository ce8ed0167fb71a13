//! What the daemon publishes about each app while it runs, `STATE_DIR/APP/daemon.json`: its activity, its last
//! poll, the URL it polls, the last refusal and its own idle health check. Written only by the daemon (atomically,
//! without the app's lock), read by `status`.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What the daemon tells `status` about an app: `STATE_DIR/APP/daemon.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DaemonInfo {
    pub pid: u32,
    pub activity: String,
    pub last_poll: String,
    pub updated_at: String,
    /// The channel URL the daemon polls (redacted), if the app has a source.
    #[serde(default)]
    pub source: Option<String>,
    /// The last refusal and when, kept until a newer manifest is accepted.
    #[serde(default)]
    pub last_refusal: Option<String>,
    /// The daemon's own check of the current release while idle (once per poll).
    #[serde(default)]
    pub health: Option<crate::base::verdict::HealthSummary>,
}

pub const INFO_FILE: &str = "daemon.json";

/// The daemon's info for an app, if a daemon that is still alive wrote it.
pub fn read(state_dir: &Path) -> Option<DaemonInfo> {
    let text = std::fs::read(state_dir.join(INFO_FILE)).ok()?;
    let info: DaemonInfo = serde_json::from_slice(&text).ok()?;
    let pid = rustix::process::Pid::from_raw(info.pid as i32)?;
    rustix::process::test_kill_process(pid).ok()?;
    Some(info)
}
