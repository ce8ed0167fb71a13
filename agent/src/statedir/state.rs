//! The per-app state (`STATE_DIR/APP/state.json`) as a pure value. Transitions are plain methods that touch no
//! disk and read no clock (the time is passed in); [`crate::statedir::journal::Journal`] is the one writer. The
//! in-flight step is the intent journal: it is saved before the step takes effect, so a restart after a crash
//! knows what to finish or undo.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::base::fsutil;
use crate::base::verdict::HealthSummary;
use crate::base::version::Version;

pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AppState {
    pub schema: u32,
    /// The release `current` points at, as last written by us (the symlink is the truth; reconcile aligns this).
    pub current: Option<Version>,
    /// The last release proven healthy.
    pub last_good: Option<Version>,
    #[serde(default)]
    pub bad: BTreeMap<Version, BadMark>,
    pub pin: Option<Pin>,
    #[serde(default)]
    pub releases: BTreeMap<Version, ReleaseRecord>,
    pub in_flight: Option<InFlight>,
    /// Set when a rollback failed: the app needs a person.
    pub degraded: Option<String>,
    pub last_health: Option<HealthSummary>,
    /// Orders good releases: each commit takes the next number.
    #[serde(default)]
    pub good_counter: u64,
    /// The last channel manifest accepted (its sequence only grows; see `manifest`).
    #[serde(default)]
    pub channel: Option<crate::source::manifest::Accepted>,
    /// A bad mark the switch in flight applies when it commits (a manual rollback marks the release it leaves
    /// only once it has left it): journaled with the switch, so a crash in between still applies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark_on_commit: Option<PendingMark>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingMark {
    pub version: Version,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BadMark {
    pub at: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pin {
    pub version: Version,
    pub at: String,
    pub by: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReleaseRecord {
    pub sha256: String,
    pub size: u64,
    pub unpacked_at: String,
    /// Position in the order of commits; `None` if the release was never proven good.
    pub good_seq: Option<u64>,
    /// The release's epoch (declared by its archive's `.switchback/release.toml` or its manifest; 0 when neither
    /// declares one), recorded at unpack. `None`: recorded by an agent older than epochs (taken as 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

impl ReleaseRecord {
    /// The epoch the rules use: a release that declares none (or was recorded before epochs) has epoch 0.
    pub fn epoch(&self) -> u64 {
        self.epoch.unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Deploy,
    Rollback,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Unpacking into staging; nothing visible has changed.
    Unpacking,
    /// The release directory exists; `current` is untouched.
    Released,
    /// About to switch (or switched): `current` may point at either version.
    Switching,
    /// `current` points at the new version; restart and checks pending.
    Checking,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InFlight {
    pub op: Op,
    pub version: Version,
    pub previous: Option<Version>,
    pub step: Step,
    pub started_at: String,
    pub pid: u32,
}

impl AppState {
    pub fn load(path: &Path) -> anyhow::Result<AppState> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let s: AppState =
                    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
                anyhow::ensure!(
                    s.schema <= SCHEMA,
                    "{} has schema {} (this switchback knows {SCHEMA})",
                    path.display(),
                    s.schema
                );
                Ok(s)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(AppState { schema: SCHEMA, ..AppState::default() })
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the state atomically and durably; readable by `group` (the state directory's read group) when set.
    pub(super) fn save(&self, path: &Path, group: Option<rustix::fs::Gid>) -> anyhow::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).context("serializing state")?;
        bytes.push(b'\n');
        fsutil::write_atomic_shared(path, &bytes, group).with_context(|| format!("saving {}", path.display()))
    }

    /// The operation `op` towards `version` is in flight, started `now` by `pid`.
    pub fn begin(&mut self, op: Op, version: &Version, previous: Option<Version>, step: Step, now: &str, pid: u32) {
        self.in_flight =
            Some(InFlight { op, version: version.clone(), previous, step, started_at: now.to_owned(), pid });
    }

    pub fn set_step(&mut self, step: Step) {
        if let Some(f) = self.in_flight.as_mut() {
            f.step = step;
        }
    }

    pub fn record_release(&mut self, version: &Version, sha256: &str, size: u64, now: &str) {
        self.releases.entry(version.clone()).or_insert_with(|| ReleaseRecord {
            sha256: sha256.to_owned(),
            size,
            unpacked_at: now.to_owned(),
            good_seq: None,
            epoch: None,
        });
    }

    /// `version` is live and proven good.
    pub fn commit(&mut self, version: &Version, now: &str) {
        if let Some(m) = self.mark_on_commit.take() {
            if m.version != *version {
                self.mark_bad(&m.version, &m.reason, now);
            }
        }
        self.good_counter += 1;
        if let Some(r) = self.releases.get_mut(version) {
            r.good_seq = Some(self.good_counter);
        }
        self.current = Some(version.clone());
        self.last_good = Some(version.clone());
        self.in_flight = None;
        self.degraded = None;
    }

    pub fn mark_bad(&mut self, version: &Version, reason: &str, now: &str) {
        self.bad.insert(version.clone(), BadMark { at: now.to_owned(), reason: reason.to_owned() });
        if self.last_good.as_ref() == Some(version) {
            self.last_good = None;
        }
    }

    /// The most recent good release other than `except`, skipping bad ones and those not in `on_disk`.
    pub fn rollback_target(&self, except: Option<&Version>, on_disk: &[Version]) -> Option<Version> {
        self.releases
            .iter()
            .filter(|(v, r)| {
                r.good_seq.is_some() && Some(*v) != except && !self.bad.contains_key(*v) && on_disk.contains(v)
            })
            .max_by_key(|(_, r)| r.good_seq)
            .map(|(v, _)| v.clone())
    }

    /// Releases that may be removed to keep `keep`: never current, last good, pinned, or the rollback target.
    pub fn prunable(&self, on_disk: &[Version], keep: usize) -> Vec<Version> {
        let current = self.current.as_ref();
        let protected: Vec<&Version> =
            [current, self.last_good.as_ref(), self.pin.as_ref().map(|p| &p.version)].into_iter().flatten().collect();
        let target = self.rollback_target(current, on_disk);
        // Newest first: by good order, then unpack time, then name.
        let mut ordered: Vec<&Version> = on_disk.iter().collect();
        ordered.sort_by_key(|v| {
            let r = self.releases.get(*v);
            std::cmp::Reverse((r.and_then(|r| r.good_seq), r.map(|r| r.unpacked_at.clone()), (*v).clone()))
        });
        let mut kept = 0usize;
        let mut out = Vec::new();
        for v in ordered {
            let must_keep = protected.contains(&v) || target.as_ref() == Some(v);
            if must_keep || kept < keep {
                kept += 1;
            } else {
                out.push(v.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn with_releases(names: &[&str]) -> AppState {
        let mut s = AppState::default();
        for n in names {
            s.record_release(&v(n), "00", 1, "t");
        }
        s
    }

    #[test]
    fn rollback_target_skips_bad_and_current() {
        let mut s = with_releases(&["1", "2", "3", "4"]);
        for n in ["1", "2", "3"] {
            s.commit(&v(n), "t");
        }
        let disk = vec![v("1"), v("2"), v("3"), v("4")];
        assert_eq!(s.rollback_target(Some(&v("3")), &disk), Some(v("2")));
        s.mark_bad(&v("2"), "test", "t");
        assert_eq!(s.rollback_target(Some(&v("3")), &disk), Some(v("1")));
        // Never-good releases are never a target.
        assert_eq!(s.rollback_target(Some(&v("1")), &disk), Some(v("3")));
        assert_eq!(s.rollback_target(Some(&v("3")), &[v("3"), v("4")]), None);
    }

    #[test]
    fn prune_keeps_current_last_good_pin_and_target() {
        let mut s = with_releases(&["1", "2", "3", "4", "5"]);
        for n in ["1", "2", "3", "4", "5"] {
            s.commit(&v(n), "t");
        }
        s.pin = Some(Pin { version: v("1"), at: String::new(), by: String::new(), reason: None });
        let disk: Vec<Version> = ["1", "2", "3", "4", "5"].iter().map(|n| v(n)).collect();
        let gone = s.prunable(&disk, 2);
        assert_eq!(gone, vec![v("3"), v("2")]);
        // keep = 1 still keeps current and the rollback target.
        let gone = s.prunable(&disk, 1);
        assert!(!gone.contains(&v("5")) && !gone.contains(&v("4")) && !gone.contains(&v("1")));
    }

    #[test]
    fn a_state_from_before_epochs_loads_with_epoch_0() {
        let old = r#"{"schema":1,"current":"1","last_good":"1","pin":null,"in_flight":null,"degraded":null,
            "last_health":null,"releases":{"1":{"sha256":"aa","size":1,"unpacked_at":"t","good_seq":1}}}"#;
        let s: AppState = serde_json::from_str(old).unwrap();
        let r = &s.releases[&v("1")];
        assert_eq!((r.epoch, r.epoch()), (None, 0));
        // And a recorded epoch survives a round trip.
        let mut s = s;
        s.releases.get_mut(&v("1")).unwrap().epoch = Some(2);
        let back: AppState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.releases[&v("1")].epoch(), 2);
    }

    #[test]
    fn state_round_trips_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut s = with_releases(&["1"]);
        s.schema = SCHEMA;
        s.begin(Op::Deploy, &v("1"), None, Step::Unpacking, "t", 1);
        s.save(&path, None).unwrap();
        assert_eq!(AppState::load(&path).unwrap(), s);
    }
}
