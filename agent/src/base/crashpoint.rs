//! Named crash points for the crash tests: with the `crash-points` feature, a process whose environment has
//! `SWITCHBACK_CRASH_AT=NAME` kills itself with SIGKILL when it reaches the point NAME (no destructors, no flush:
//! as close to power loss as a process can get), and one with `SWITCHBACK_HANG_AT=NAME` stops there for good
//! without a sign of life (a hung agent, for the watchdog tests). Without the feature, `hit` compiles to nothing.
//!
//! - `NAME:N` instead of `NAME` acts the N-th time the point is reached in the process (points inside loops:
//!   `mid-unpack:3` kills after the third entry was written); plain `NAME` is the first time.
//! - `SWITCHBACK_PAUSE_AT=NAME` with `SWITCHBACK_PAUSE_FILE=PATH` creates PATH at the point and waits until the test
//!   removes it, then goes on: a test can change the world (fill a disk) at an exact step.
//!
//! The points, in order ([`Point::ALL`]; `grep -rn 'Point::' agent/src` shows where each is):
//! - every recorded command (deploy, rollback, pin, unpin, prune, accept): `after-pending-event` (its event is
//!   saved, nothing changed yet) and `after-record` (below);
//! - deploy: `mid-unpack` (after each entry), `after-unpack`, `after-staging-durable`, `after-release-rename`,
//!   `before-switch`, `after-temp-symlink` (in every switch), `after-switch`, `after-state-write`, `during-restart`
//!   (the restart command or systemctl is running), `after-restart`, `during-checks` (after each round),
//!   `during-bake` (each turn of the bake window), `after-commit`, `after-record` (the event is in history, its
//!   pending copy not yet removed: every recorded command passes it);
//! - rollback, manual or automatic: `rollback-before-switch`, `after-temp-symlink`, `rollback-after-switch`,
//!   `rollback-after-state-write`, `during-restart`, `rollback-after-restart`, `during-checks` (a rollback does not bake),
//!   `rollback-after-commit`;
//! - prune (explicit or after a deploy): `prune-after-trash-rename` (a release renamed to trash, not yet deleted),
//!   `prune-mid-remove` (after each release removed and the state saved);
//! - reconcile: `reconcile-mid-recovery` (a release re-verified, not yet committed), `reconcile-after-record`
//!   (the recovery written to history, the state not yet saved);
//! - daemon: `after-download` (the artifact verified in `downloads/`, the deploy not started).

/// A named point where a crash test may kill, hang or pause the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    AfterPendingEvent,
    AfterRecord,
    MidUnpack,
    AfterUnpack,
    AfterStagingDurable,
    AfterReleaseRename,
    BeforeSwitch,
    AfterTempSymlink,
    AfterSwitch,
    AfterStateWrite,
    DuringRestart,
    AfterRestart,
    DuringChecks,
    DuringBake,
    AfterCommit,
    RollbackBeforeSwitch,
    RollbackAfterSwitch,
    RollbackAfterStateWrite,
    RollbackAfterRestart,
    RollbackAfterCommit,
    PruneAfterTrashRename,
    PruneMidRemove,
    ReconcileMidRecovery,
    ReconcileAfterRecord,
    AfterDownload,
}

impl Point {
    /// Every point, in the order of the list above.
    pub const ALL: &[Point] = &[
        Point::AfterPendingEvent,
        Point::AfterRecord,
        Point::MidUnpack,
        Point::AfterUnpack,
        Point::AfterStagingDurable,
        Point::AfterReleaseRename,
        Point::BeforeSwitch,
        Point::AfterTempSymlink,
        Point::AfterSwitch,
        Point::AfterStateWrite,
        Point::DuringRestart,
        Point::AfterRestart,
        Point::DuringChecks,
        Point::DuringBake,
        Point::AfterCommit,
        Point::RollbackBeforeSwitch,
        Point::RollbackAfterSwitch,
        Point::RollbackAfterStateWrite,
        Point::RollbackAfterRestart,
        Point::RollbackAfterCommit,
        Point::PruneAfterTrashRename,
        Point::PruneMidRemove,
        Point::ReconcileMidRecovery,
        Point::ReconcileAfterRecord,
        Point::AfterDownload,
    ];

    /// The name the environment variables use.
    pub fn name(self) -> &'static str {
        match self {
            Point::AfterPendingEvent => "after-pending-event",
            Point::AfterRecord => "after-record",
            Point::MidUnpack => "mid-unpack",
            Point::AfterUnpack => "after-unpack",
            Point::AfterStagingDurable => "after-staging-durable",
            Point::AfterReleaseRename => "after-release-rename",
            Point::BeforeSwitch => "before-switch",
            Point::AfterTempSymlink => "after-temp-symlink",
            Point::AfterSwitch => "after-switch",
            Point::AfterStateWrite => "after-state-write",
            Point::DuringRestart => "during-restart",
            Point::AfterRestart => "after-restart",
            Point::DuringChecks => "during-checks",
            Point::DuringBake => "during-bake",
            Point::AfterCommit => "after-commit",
            Point::RollbackBeforeSwitch => "rollback-before-switch",
            Point::RollbackAfterSwitch => "rollback-after-switch",
            Point::RollbackAfterStateWrite => "rollback-after-state-write",
            Point::RollbackAfterRestart => "rollback-after-restart",
            Point::RollbackAfterCommit => "rollback-after-commit",
            Point::PruneAfterTrashRename => "prune-after-trash-rename",
            Point::PruneMidRemove => "prune-mid-remove",
            Point::ReconcileMidRecovery => "reconcile-mid-recovery",
            Point::ReconcileAfterRecord => "reconcile-after-record",
            Point::AfterDownload => "after-download",
        }
    }
}

#[cfg(feature = "crash-points")]
pub fn hit(point: Point) {
    let name = point.name();
    use std::collections::HashMap;
    use std::sync::Mutex;
    static COUNTS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);
    let n = {
        let mut counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
        let c = counts.get_or_insert_with(HashMap::new).entry(name.to_owned()).or_insert(0);
        *c += 1;
        *c
    };
    let wanted = |var: &str| {
        std::env::var(var).is_ok_and(|want| match want.rsplit_once(':') {
            Some((point, nth)) => point == name && nth.parse() == Ok(n),
            None => want == name && n == 1,
        })
    };
    if wanted("SWITCHBACK_CRASH_AT") {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    if wanted("SWITCHBACK_HANG_AT") {
        tracing::warn!("hanging at crash point {name} (SWITCHBACK_HANG_AT)");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    if wanted("SWITCHBACK_PAUSE_AT") {
        if let Some(file) = std::env::var_os("SWITCHBACK_PAUSE_FILE") {
            tracing::warn!("pausing at crash point {name} until {} is removed", file.to_string_lossy());
            let _ = std::fs::write(&file, name);
            while std::fs::symlink_metadata(&file).is_ok() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn hit(_point: Point) {}
