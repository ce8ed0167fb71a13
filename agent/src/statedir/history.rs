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
    pub op: Action,
    pub version: Option<String>,
    pub previous: Option<String>,
    pub outcome: Outcome,
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

/// What an event records: the command (or the daemon's step) that changed the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Deploy,
    Rollback,
    /// What reconcile did after an interrupted command.
    Recover,
    Pin,
    Unpin,
    Clear,
    Prune,
    /// The daemon accepted a new channel manifest.
    Accept,
    /// Written by a newer Switchback: kept readable, shown as `unknown`.
    #[serde(other)]
    Unknown,
}

/// How an event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    /// A deploy failed its checks and the app went back to the last good release (exit 3).
    RolledBack,
    /// The way back failed too: the app needs a person (exit 4).
    RollbackFailed,
    /// The release failed and the way back would have crossed an epoch: the app stays on it, degraded, and needs
    /// a person (exit 4).
    Degraded,
    /// The app's lock was held by someone else (exit 5).
    Busy,
    Failed,
    /// Reconcile finished or undid an interrupted command.
    Recovered,
    /// The command ended before recording its outcome (recorded by the next one), or was stopped at a safe point
    /// by the daemon's shutdown.
    Interrupted,
    /// Written by a newer Switchback: kept readable, shown as `unknown`.
    #[serde(other)]
    Unknown,
}

/// The same words as in the JSON (`deploy`, `rolled-back`, ...); padding applies.
macro_rules! words {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

words!(Action {
    Deploy => "deploy", Rollback => "rollback", Recover => "recover", Pin => "pin", Unpin => "unpin",
    Clear => "clear", Prune => "prune", Accept => "accept", Unknown => "unknown",
});
words!(Outcome {
    Ok => "ok", RolledBack => "rolled-back", RollbackFailed => "rollback-failed", Degraded => "degraded", Busy => "busy",
    Failed => "failed", Recovered => "recovered", Interrupted => "interrupted", Unknown => "unknown",
});

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
            daemon: crate::base::progress::is_daemon(),
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
    pub fn new(app: &str, op: Action) -> Event {
        Event {
            time: fsutil::now_rfc3339(),
            app: app.to_owned(),
            op,
            version: None,
            previous: None,
            outcome: Outcome::Ok,
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

/// The events of the last 256 KiB of history, oldest first.
fn tail(path: &Path) -> anyhow::Result<Vec<Event>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let len = f.metadata().with_context(|| format!("inspecting {}", path.display()))?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(256 << 10))).with_context(|| format!("reading {}", path.display()))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).with_context(|| format!("reading {}", path.display()))?;
    Ok(tail.split(|b| *b == b'\n').filter_map(|l| serde_json::from_slice::<Event>(l).ok()).collect())
}

/// Whether `event` (the same command: time, op and pid) is among the events of the last 256 KiB of history.
pub fn recently_recorded(path: &Path, event: &Event) -> anyhow::Result<bool> {
    Ok(tail(path)?
        .iter()
        .any(|e| e.time == event.time && e.op == event.op && e.who.pid == event.who.pid && e.app == event.app))
}

/// The newest event of the last 256 KiB of history that `which` picks.
pub fn last(path: &Path, which: impl Fn(&Event) -> bool) -> anyhow::Result<Option<Event>> {
    Ok(tail(path)?.into_iter().rev().find(|e| which(e)))
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

/// Reads a history file as it grows: each [`Tail::read_new`] parses only the lines appended since the last one.
/// It takes no lock (history is append-only); a last line still being written is left until it is complete. A
/// file that shrank or was replaced is read again from its start, and the caller told so.
#[derive(Debug, Default)]
pub struct Tail {
    offset: u64,
    /// The file's (device, inode) when it was last read.
    id: Option<(u64, u64)>,
}

/// What a [`Tail`] read: the new events, and whether they start over (the file was replaced or cut).
#[derive(Debug, Default)]
pub struct Appended {
    pub events: Vec<Event>,
    pub restarted: bool,
}

impl Tail {
    /// Lines longer than this are skipped, not buffered (history lines are a few KiB).
    const MAX_LINE: usize = 4 << 20;

    pub fn read_new(&mut self, path: &Path) -> anyhow::Result<Appended> {
        use std::io::{BufRead, Read, Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let restarted = self.offset > 0;
                *self = Tail::default();
                return Ok(Appended { events: Vec::new(), restarted });
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let meta = f.metadata().with_context(|| format!("inspecting {}", path.display()))?;
        let id = Some((meta.dev(), meta.ino()));
        let mut out = Appended::default();
        if self.id.is_some() && (self.id != id || meta.len() < self.offset) {
            out.restarted = true;
            self.offset = 0;
        }
        self.id = id;
        if meta.len() == self.offset {
            return Ok(out);
        }
        let mut r = std::io::BufReader::new(f);
        r.seek(SeekFrom::Start(self.offset)).with_context(|| format!("reading {}", path.display()))?;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut r)
                .take(Self::MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .with_context(|| format!("reading {}", path.display()))?;
            if line.last() != Some(&b'\n') {
                if n <= Self::MAX_LINE {
                    // The end, or a line still being appended: read again next time.
                    return Ok(out);
                }
                // Longer than any line of ours: skipped to its end, once it has one.
                line.clear();
                let m = r.read_until(b'\n', &mut line).with_context(|| format!("reading {}", path.display()))?;
                if line.last() != Some(&b'\n') {
                    return Ok(out);
                }
                self.offset += (n + m) as u64;
                continue;
            }
            self.offset += n as u64;
            if let Ok(e) = serde_json::from_slice::<Event>(&line) {
                out.events.push(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_and_outcomes_keep_their_words() {
        for (a, w) in [(Action::Deploy, "deploy"), (Action::Recover, "recover"), (Action::Accept, "accept")] {
            assert_eq!(serde_json::to_value(a).unwrap(), w);
            assert_eq!(a.to_string(), w);
        }
        for (o, w) in [
            (Outcome::RolledBack, "rolled-back"),
            (Outcome::RollbackFailed, "rollback-failed"),
            (Outcome::Degraded, "degraded"),
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), w);
            assert_eq!(serde_json::from_value::<Outcome>(w.into()).unwrap(), o);
        }
        assert_eq!(format!("{:<8}|", Action::Pin), "pin     |");
        // A word from a newer version is read, not dropped with its event.
        assert_eq!(serde_json::from_value::<Outcome>("paused".into()).unwrap(), Outcome::Unknown);
    }

    #[test]
    fn a_tail_reads_only_new_complete_lines_and_starts_over_on_a_new_file() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let mut tail = Tail::default();
        assert!(tail.read_new(&path).unwrap().events.is_empty());
        let line = |op| {
            let mut l = serde_json::to_vec(&Event::new("web", op)).unwrap();
            l.push(b'\n');
            l
        };
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        f.write_all(&line(Action::Deploy)).unwrap();
        let half = line(Action::Rollback);
        f.write_all(&half[..half.len() / 2]).unwrap();
        let got = tail.read_new(&path).unwrap();
        assert_eq!(got.events.iter().map(|e| e.op).collect::<Vec<_>>(), [Action::Deploy]);
        assert!(!got.restarted);
        // The torn line is read once it is complete, and nothing twice.
        f.write_all(&half[half.len() / 2..]).unwrap();
        f.write_all(b"not json\n").unwrap();
        f.write_all(&line(Action::Pin)).unwrap();
        let got = tail.read_new(&path).unwrap();
        assert_eq!(got.events.iter().map(|e| e.op).collect::<Vec<_>>(), [Action::Rollback, Action::Pin]);
        assert!(tail.read_new(&path).unwrap().events.is_empty());
        // Replaced: read from its start again.
        let other = dir.path().join("new");
        std::fs::write(&other, line(Action::Clear)).unwrap();
        std::fs::rename(&other, &path).unwrap();
        let got = tail.read_new(&path).unwrap();
        assert!(got.restarted);
        assert_eq!(got.events.iter().map(|e| e.op).collect::<Vec<_>>(), [Action::Clear]);
    }
}
