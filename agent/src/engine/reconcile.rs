//! Reconcile on start: make the state agree with the disk after whatever happened (crash, `kill -9`, power loss).
//! Runs under the app's lock before every command that changes the app, and when the daemon starts. It removes
//! staging leftovers, finishes or undoes an interrupted switch, and re-verifies a release that went live without
//! being proven healthy (rolling back if it fails), as [`plan::recovery`] decides. What it did is written to
//! history.

use crate::app::App;
use crate::base::timeline::Timeline;
use crate::base::verdict::Verdict;
use crate::base::version::Version;
use crate::engine::activate;
use crate::engine::plan::{self, Recovery};
use crate::statedir::history::{Action, Outcome};
use crate::statedir::journal::Journal;
use crate::statedir::state::Op;

pub fn reconcile(app: &App, tl: &mut Timeline) -> anyhow::Result<Journal> {
    app.store.prepare()?;
    let mut removed = app.store.remove_leftovers()?;
    removed.extend(crate::base::fsutil::remove_stale_temps(&app.state_dir, std::time::Duration::from_secs(60))?);
    // The killed command's own event first: it happened before the recovery this may record.
    if let Some(ev) = app.recover_pending_event()? {
        tl.note(&format!("recorded the event of an interrupted {} (pid {})", ev.op, ev.who.pid));
    }
    let mut state = app.journal()?;
    let before = state.clone();
    let on_disk = app.store.on_disk()?;
    state.releases.retain(|v, _| on_disk.contains(v));
    crate::store::index::remove_orphans(&app.state_dir, &on_disk);
    let actual = app.store.current()?;
    let mut notes: Vec<String> = Vec::new();
    if !removed.is_empty() {
        notes.push(format!("removed leftovers of an interrupted run: {}", removed.join(", ")));
    }
    // Before anything restarts again: a restart command or hook the killed agent was waiting for.
    notes.extend(crate::host::command::kill_leftovers(&app.state_dir));
    let mut ev = app.event(Action::Recover);
    let mut failure = None;
    let was = |v: &Option<Version>| v.as_ref().map_or("nothing".to_owned(), ToString::to_string);
    match plan::recovery(&state, actual.as_ref()) {
        Recovery::Nothing => {}
        Recovery::Correct { recorded, actual } => {
            notes.push(format!(
                "state said current is {}, the symlink says {}: state corrected",
                was(&recorded),
                was(&actual)
            ));
            state.current = actual;
        }
        Recovery::Forget { flight: f, actual } => {
            state.in_flight = None;
            state.mark_on_commit = None;
            notes.push(
                format!(
                    "{:?} of {} (pid {}) was interrupted before the switch; still on {}",
                    f.op,
                    f.version,
                    f.pid,
                    was(&actual)
                )
                .to_lowercase(),
            );
            state.current = actual;
        }
        Recovery::Finish { flight: f } => {
            notes.push(
                format!(
                    "{:?} of {} (pid {}) was interrupted at step {:?}; finishing it: restart and verify",
                    f.op, f.version, f.pid, f.step
                )
                .to_lowercase(),
            );
            ev.version = Some(f.version.to_string());
            ev.previous = f.previous.as_ref().map(ToString::to_string);
            tl.note(&format!("recovering: {}", notes.last().map(String::as_str).unwrap_or("")));
            let verdict =
                // Finishing the journal is the way to safety: an operator's cancel does not interrupt it.
                match crate::base::progress::uncancellable(|| {
                    activate::go_live(app, &mut state, &f.version, f.previous.as_ref(), f.op, tl, &mut ev)
                }) {
                    // Live, but no longer what was verified: never restarted as it is; handled like a failed check.
                    Err(e)
                        if matches!(
                            e.downcast_ref::<crate::error::Error>(),
                            Some(crate::error::Error::NotVerified { .. })
                        ) =>
                    {
                        Verdict::Unhealthy(format!("{e}"))
                    }
                    other => other?,
                };
            crate::base::crashpoint::hit(crate::base::crashpoint::Point::ReconcileMidRecovery);
            match verdict {
                Verdict::Healthy(health) => {
                    // Committed in memory only: the state is saved after the history event (below).
                    state.commit_in_memory(&f.version);
                    notes.push(format!("{} is healthy ({health})", f.version));
                }
                Verdict::Unhealthy(reason) if f.op == Op::Deploy => {
                    let err = activate::fall_back(app, &mut state, &f.version, &reason, tl, &mut ev)?;
                    notes.push(format!("{err}"));
                    failure = Some(err);
                }
                Verdict::Unhealthy(reason) => {
                    let err = activate::degrade(app, &mut state, &f.version, &reason)?;
                    notes.push(format!("{err}"));
                    failure = Some(err);
                }
            }
        }
    }
    // History first, then the state: the interrupted command never wrote its own event, so once the state no
    // longer says what was interrupted, this event is the only trace of it. A crash in between repeats the
    // recovery (and its event) at the next command instead of losing it.
    if !notes.is_empty() {
        ev.outcome = match &failure {
            Some(crate::error::Error::EpochHeld { .. }) => Outcome::Degraded,
            Some(_) => Outcome::Failed,
            None => Outcome::Recovered,
        };
        ev.duration_ms = tl.elapsed_ms();
        ev.reason = Some(notes.join("; "));
        ev.steps = tl.steps.clone();
        tl.note(&format!("reconciled {}: {}", app.name, notes.join("; ")));
        tracing::warn!("{}: reconciled: {}", app.name, notes.join("; "));
        app.record(&ev)?;
        crate::base::crashpoint::hit(crate::base::crashpoint::Point::ReconcileAfterRecord);
    }
    if *state != before {
        state.save(None)?;
    }
    Ok(state)
}
