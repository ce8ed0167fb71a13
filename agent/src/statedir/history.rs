//! The append-only audit log `STATE_DIR/APP/history.jsonl`: one JSON object per line for every deploy, rollback,
//! pin, prune and recovery, with who, why, timings and outcome. Lines are only ever appended.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::base::fsutil;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub time: String,
    pub app: String,
    pub op: String,
    pub version: Option<String>,
    pub previous: Option<String>,
    /// "ok", "rolled-back", "rollback-failed", "failed", "refused", "recovered", "interrupted" (the command
    /// ended before recording its outcome; recorded by the next one).
    pub outcome: String,
    pub duration_ms: u64,
    pub reason: Option<String>,
    pub who: Who,
    #[serde(default)]
    pub steps: Vec<Timing>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<String>,
    /// Releases removed (a prune).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

/// Who did something, as far as the kernel can vouch for it: the real uid and the login uid (set at login, kept
/// across `sudo` and `su`, and not changeable by the process). `SUDO_USER` is only an environment variable, which
/// anyone can set: it is recorded as claimed, never as who it was.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Who {
    pub uid: u32,
    /// The name of `uid` on this host, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `/proc/self/loginuid`, when the session has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_user: Option<String>,
    /// What `SUDO_USER` claimed (unverified).
    pub sudo_user: Option<String>,
    pub pid: u32,
    /// Whether the daemon did it (rather than a command someone ran).
    #[serde(default)]
    pub daemon: bool,
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
}

impl Who {
    pub fn me() -> Who {
        let uid = rustix::process::getuid().as_raw();
        // 4294967295 (-1) means no login session (a service started by init).
        let login_uid = std::fs::read_to_string("/proc/self/loginuid")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|n| *n != u32::MAX);
        Who {
            uid,
            user: user_name(uid),
            login_uid,
            login_user: login_uid.and_then(user_name),
            sudo_user: std::env::var("SUDO_USER").ok().filter(|s| !s.is_empty()),
            pid: std::process::id(),
            daemon: crate::base::progress::in_worker(),
        }
    }

    pub fn describe(&self) -> String {
        let name = |uid: u32, user: &Option<String>| match user {
            Some(u) => format!("{u} (uid {uid})"),
            None => format!("uid {uid}"),
        };
        let mut out = if self.daemon {
            format!("the daemon as {}", name(self.uid, &self.user))
        } else {
            name(self.uid, &self.user)
        };
        if let Some(l) = self.login_uid.filter(|l| *l != self.uid) {
            out.push_str(&format!(", logged in as {}", name(l, &self.login_user)));
        }
        if let Some(s) = &self.sudo_user {
            out.push_str(&format!(", SUDO_USER={s} (claimed)"));
        }
        out
    }
}

use crate::base::timeline::Timing;

impl Event {
    pub fn new(app: &str, op: &str) -> Event {
        Event {
            time: fsutil::now_rfc3339(),
            app: app.to_owned(),
            op: op.to_owned(),
            version: None,
            previous: None,
            outcome: "ok".to_owned(),
            duration_ms: 0,
            reason: None,
            who: Who::me(),
            steps: Vec::new(),
            output: Vec::new(),
            removed: Vec::new(),
        }
    }
}

/// Appends `event`; the file is root's, readable by `group` (the state directory's read group) when set.
pub fn append(path: &Path, event: &Event, group: Option<rustix::fs::Gid>) -> anyhow::Result<()> {
    let line = serde_json::to_vec(event).context("serializing a history event")?;
    fsutil::append_line(path, &line, group)
}

/// Whether `event` (the same command: time, op and pid) is among the events of the last 256 KiB of history.
pub fn recently_recorded(path: &Path, event: &Event) -> anyhow::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let len = f.metadata().with_context(|| format!("inspecting {}", path.display()))?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(256 << 10))).with_context(|| format!("reading {}", path.display()))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).with_context(|| format!("reading {}", path.display()))?;
    Ok(tail
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Event>(l).ok())
        .any(|e| e.time == event.time && e.op == event.op && e.who.pid == event.who.pid && e.app == event.app))
}

/// Reads every event; a torn last line (power loss mid-append) is skipped, not fatal.
pub fn read(path: &Path) -> anyhow::Result<Vec<Event>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}
