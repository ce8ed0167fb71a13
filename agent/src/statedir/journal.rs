//! The one writer of an app's state: a [`Journal`] holds the state of an app under its lock, and every write of
//! `state.json` goes through it. Each method that moves the operation in flight (begin, advance, commit, abandon)
//! changes the state, saves it atomically and durably, and then reaches the crash point named for that moment,
//! so that what a crash test kills at is exactly what the journal says.
//!
//! It reads the clock and the pid (for the in-flight record) and passes them to [`AppState`]'s pure transitions;
//! it never decides what the next step is (the engine does, see `engine::plan`).

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

use crate::base::crashpoint::{self, Point};
use crate::base::fsutil;
use crate::base::version::Version;
use crate::statedir::state::{AppState, Op, Step};

pub struct Journal {
    path: PathBuf,
    group: Option<rustix::fs::Gid>,
    state: AppState,
}

impl Journal {
    /// Loads the state at `path` (a default state when there is none yet); saved files are readable by `group`.
    pub fn load(path: PathBuf, group: Option<rustix::fs::Gid>) -> anyhow::Result<Journal> {
        let state = AppState::load(&path)?;
        Ok(Journal { path, group, state })
    }

    /// Writes the state as it is now, then reaches `then`.
    pub fn save(&self, then: Option<Point>) -> anyhow::Result<()> {
        self.state.save(&self.path, self.group)?;
        if let Some(p) = then {
            crashpoint::hit(p);
        }
        Ok(())
    }

    /// Starts (or restarts at `step`) the operation `op` towards `version`, journaled before it takes effect.
    pub fn begin(
        &mut self,
        op: Op,
        version: &Version,
        previous: Option<&Version>,
        step: Step,
        then: Option<Point>,
    ) -> anyhow::Result<()> {
        self.state.begin(op, version, previous.cloned(), step, &fsutil::now_rfc3339(), std::process::id());
        self.save(then)
    }

    /// Moves the operation in flight to `step`.
    pub fn advance(&mut self, step: Step, then: Option<Point>) -> anyhow::Result<()> {
        self.state.set_step(step);
        self.save(then)
    }

    /// `version` is live and proven good: the operation in flight is over.
    pub fn commit(&mut self, version: &Version, then: Option<Point>) -> anyhow::Result<()> {
        self.state.commit(version, &fsutil::now_rfc3339());
        self.save(then)
    }

    /// `version` is proven good, saved with the next write (recovery writes its history event first).
    pub fn commit_in_memory(&mut self, version: &Version) {
        self.state.commit(version, &fsutil::now_rfc3339());
    }

    /// The operation in flight ended before it changed anything visible.
    pub fn abandon(&mut self) -> anyhow::Result<()> {
        self.state.in_flight = None;
        self.save(None)
    }

    /// Marks `version` bad (in memory; saved with the next write).
    pub fn mark_bad(&mut self, version: &Version, reason: &str) {
        self.state.mark_bad(version, reason, &fsutil::now_rfc3339());
    }
}

/// Reads go straight to the state; changes made through it are written by the next save.
impl Deref for Journal {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.state
    }
}

impl DerefMut for Journal {
    fn deref_mut(&mut self) -> &mut AppState {
        &mut self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn every_transition_is_on_disk_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut j = Journal::load(path.clone(), None).unwrap();
        j.record_release(&v("1"), "00", 1, "t0");
        j.begin(Op::Deploy, &v("1"), None, Step::Unpacking, None).unwrap();
        assert_eq!(AppState::load(&path).unwrap().in_flight.unwrap().step, Step::Unpacking);
        j.advance(Step::Checking, None).unwrap();
        assert_eq!(AppState::load(&path).unwrap().in_flight.unwrap().step, Step::Checking);
        j.commit(&v("1"), None).unwrap();
        let saved = AppState::load(&path).unwrap();
        assert_eq!((saved.in_flight, saved.current, saved.last_good), (None, Some(v("1")), Some(v("1"))));
        // A change through the state alone is not written until the next save.
        j.pin = None;
        j.mark_bad(&v("1"), "test");
        assert!(AppState::load(&path).unwrap().bad.is_empty());
        j.save(None).unwrap();
        assert!(AppState::load(&path).unwrap().bad.contains_key(&v("1")));
    }
}
