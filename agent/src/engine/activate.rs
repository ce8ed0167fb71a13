//! Going live and proving it: switch `current`, restart the service, run `after_activate`, apply the health
//! policy. And the way back when that fails: mark the release bad, switch to the last good release, restart and
//! verify again, once (never flip back and forth). The intent is journaled in the state before each step.

use crate::app::App;
use crate::base::crashpoint;
use crate::base::fsutil;
use crate::base::timeline::Timeline;
use crate::base::verdict::{HealthSummary, Verdict};
use crate::base::version::Version;
use crate::error::Error;
use crate::host::health;
use crate::host::hooks::{self, Hook};
use crate::host::service;
use crate::statedir::history::Event;
use crate::statedir::journal::Journal;
use crate::statedir::state::{Op, Step};

/// Switches to `target`, restarts and verifies: the verdict on it. The error is a failure of our own (I/O, a
/// release that is not what was verified, a shutdown).
pub fn go_live(
    app: &App,
    state: &mut Journal,
    target: &Version,
    previous: Option<&Version>,
    op: Op,
    tl: &mut Timeline,
    ev: &mut Event,
) -> anyhow::Result<Verdict> {
    // Crash points are named per operation: `before-switch` for a deploy, `rollback-before-switch` for a rollback.
    let point =
        |deploy: crashpoint::Point, rollback: crashpoint::Point| if op == Op::Deploy { deploy } else { rollback };
    // Nothing changes before the release is known to be the one that was verified (Error::NotVerified).
    let checked = crate::app::verify::check_release(app, target)?;
    tracing::debug!(
        "{}: {target} matches its index ({} entries, {} hashed)",
        app.name,
        checked.entries,
        checked.hashed
    );
    state.begin(
        op,
        target,
        previous,
        Step::Switching,
        Some(point(crashpoint::Point::BeforeSwitch, crashpoint::Point::RollbackBeforeSwitch)),
    )?;
    tl.step("switch", || app.store.switch(target).map(|()| ((), Some(format!("current -> releases/{target}")))))?;
    crashpoint::hit(point(crashpoint::Point::AfterSwitch, crashpoint::Point::RollbackAfterSwitch));
    if let Err(e) = state.advance(
        Step::Checking,
        Some(point(crashpoint::Point::AfterStateWrite, crashpoint::Point::RollbackAfterStateWrite)),
    ) {
        // The journal cannot record that `target` is live (a full or failing state disk). Nothing was restarted
        // yet, so a deploy goes back to where it was: the command then fails with nothing changed, as its exit code
        // says, and the journal's last word (switching, not live) makes the next command clear it. Without this,
        // exit 1 ("nothing changed") left `current` on the new release while the service ran the old one. A
        // rollback stays where it is: its journal says to finish it.
        if let (Op::Deploy, Some(prev)) = (op, previous) {
            match app.store.switch(prev) {
                Ok(()) => {
                    return Err(e.context(format!(
                        "cannot journal the switch to {target}, so `current` was switched back to {prev} (nothing was \
                         restarted)"
                    )))
                }
                Err(back) => tracing::error!("{}: cannot switch back to {prev}: {back:#}", app.name),
            }
        }
        return Err(e);
    }

    let release_dir = app.store.release_dir(target);
    let (v, prev) = (target.as_str(), previous.map(Version::as_str));
    let restarted = match tl.step("restart", || {
        service::restart(app, v, prev, &release_dir).map(|r| {
            let d = r.detail.clone();
            (r, Some(d))
        })
    }) {
        Ok(r) => r,
        Err(failure) => return Ok(Verdict::Unhealthy(failure.to_string())),
    };
    crashpoint::hit(point(crashpoint::Point::AfterRestart, crashpoint::Point::RollbackAfterRestart));
    if op == Op::Deploy {
        if let Err(failure) = hooks::run_in(app, Hook::AfterActivate, v, prev, &release_dir, tl, ev) {
            return Ok(Verdict::Unhealthy(failure.to_string()));
        }
    }
    let verdict = tl.step("checks", || {
        health::verify(app, v, &release_dir, &restarted, op == Op::Deploy).map(|verdict| {
            let detail = verdict.detail().to_owned();
            (verdict, Some(detail))
        })
    })?;
    state.last_health = Some(HealthSummary {
        at: fsutil::now_rfc3339(),
        version: Some(target.clone()),
        healthy: verdict.is_healthy(),
        detail: verdict.detail().to_owned(),
    });
    Ok(verdict)
}

/// After `failed` did not prove healthy: mark it bad, return to the last good release and verify that. Returns
/// the error the command reports: [`Error::RolledBack`] (exit 3) or [`Error::RollbackFailed`] (exit 4).
///
/// An operator's cancel request never interrupts this: the way back is what a cancel asks for.
pub fn fall_back(
    app: &App,
    state: &mut Journal,
    failed: &Version,
    reason: &str,
    tl: &mut Timeline,
    ev: &mut Event,
) -> anyhow::Result<Error> {
    crate::base::progress::uncancellable(|| fall_back_now(app, state, failed, reason, tl, ev))
}

fn fall_back_now(
    app: &App,
    state: &mut Journal,
    failed: &Version,
    reason: &str,
    tl: &mut Timeline,
    ev: &mut Event,
) -> anyhow::Result<Error> {
    // The failed release stays unmarked if the way back would cross an epoch (it stays active then).
    let (was_bad, was_last_good) = (state.bad.get(failed).cloned(), state.last_good.clone());
    state.mark_bad(failed, reason);
    let on_disk = app.store.on_disk()?;
    let mut refused = Vec::new();
    let (target, verdict) = loop {
        let Some(target) = state.rollback_target(Some(failed), &on_disk) else {
            let why = format!(
                "{failed} failed ({reason}) and there is no earlier good release to return to{}; {failed} stays active",
                refused.iter().map(|r| format!(" ({r})")).collect::<String>()
            );
            state.in_flight = None;
            state.current = app.store.current()?;
            state.degraded = Some(why.clone());
            state.save(None)?;
            return Ok(Error::RollbackFailed { app: app.name.clone(), reason: why });
        };
        if let Err(held) = crate::engine::plan::way_back(state, failed, &target) {
            match was_bad {
                Some(mark) => state.bad.insert(failed.clone(), mark),
                None => state.bad.remove(failed),
            };
            state.last_good = was_last_good;
            return stay_on(app, state, failed, &target, held, reason);
        }
        tl.note(&format!("{failed} is not healthy ({reason}); rolling back to {target}"));
        match go_live(app, state, &target, Some(failed), Op::Rollback, tl, ev) {
            Ok(verdict) => break (target, verdict),
            // A release that is not what was verified is never run: marked bad, and the next good one is tried.
            Err(e) if matches!(e.downcast_ref::<Error>(), Some(Error::NotVerified { .. })) => {
                tracing::error!("{}: {e}", app.name);
                state.mark_bad(&target, &format!("{e}"));
                refused.push(format!("{e}"));
            }
            Err(e) => return Err(e),
        }
    };
    match verdict {
        Verdict::Healthy(_) => {
            state.commit(&target, Some(crashpoint::Point::RollbackAfterCommit))?;
            after_rollback(app, &target, failed, ev);
            Ok(Error::RolledBack {
                app: app.name.clone(),
                version: failed.to_string(),
                restored: target.to_string(),
                reason: reason.to_owned(),
            })
        }
        Verdict::Unhealthy(second) => Ok(degrade(app, state, &target, &second)?),
    }
}

/// An operator's switch from `from` (current, and healthy as far as anyone knows) to `target` (a rollback, a
/// pin): go live and prove it; returns its health summary. If `target` is not healthy, only `target` is marked
/// bad and the app goes back to `from` (switched, restarted and verified again), where it started: the error is
/// [`Error::SwitchFailed`] (exit 3). Only when `from` fails too does the app need a person
/// ([`Error::RollbackFailed`], exit 4).
pub fn switch_to(
    app: &App,
    state: &mut Journal,
    target: &Version,
    from: &Version,
    tl: &mut Timeline,
    ev: &mut Event,
) -> anyhow::Result<String> {
    match go_live(app, state, target, Some(from), Op::Rollback, tl, ev)? {
        Verdict::Healthy(health) => {
            state.bad.remove(target);
            state.commit(target, Some(crashpoint::Point::RollbackAfterCommit))?;
            Ok(health)
        }
        Verdict::Unhealthy(reason) => crate::base::progress::uncancellable(|| {
            // Going back to `from` is a rollback of its own: never across an epoch.
            if let Err(held) = crate::engine::plan::way_back(state, target, from) {
                return Err(stay_on(app, state, target, from, held, &reason)?.into());
            }
            state.mark_bad(target, &reason);
            // What would have marked the release left behind is dropped: the app goes back to it.
            state.mark_on_commit = None;
            tl.note(&format!("{target} is not healthy ({reason}); going back to {from}"));
            match go_live(app, state, from, Some(target), Op::Rollback, tl, ev)? {
                Verdict::Healthy(_) => {
                    state.commit(from, Some(crashpoint::Point::RollbackAfterCommit))?;
                    Err(Error::SwitchFailed {
                        app: app.name.clone(),
                        target: target.to_string(),
                        restored: from.to_string(),
                        reason,
                    }
                    .into())
                }
                Verdict::Unhealthy(second) => Err(degrade(app, state, from, &second)?.into()),
            }
        }),
    }
}

/// `failed` did not prove healthy, and the way back to `target` would cross an epoch (`held`): the app stays on
/// `failed` (not marked bad: it is the release the migrated data needs), degraded until a person proves it or
/// moves it ([`Error::EpochHeld`], exit 4).
fn stay_on(
    app: &App,
    state: &mut Journal,
    failed: &Version,
    target: &Version,
    held: crate::engine::plan::Held,
    reason: &str,
) -> anyhow::Result<Error> {
    let crate::engine::plan::Held::LowerEpoch { current_epoch, target_epoch, .. } = held else {
        anyhow::bail!("the way back from {failed} to {target} is held by something other than an epoch: {held:?}");
    };
    let err = Error::EpochHeld {
        app: app.name.clone(),
        failed: failed.to_string(),
        failed_epoch: current_epoch,
        target: target.to_string(),
        target_epoch,
        reason: reason.to_owned(),
    };
    state.in_flight = None;
    state.mark_on_commit = None;
    state.current = app.store.current()?;
    state.degraded = Some(format!(
        "{failed} (epoch {current_epoch}) is not healthy ({reason}); not rolled back to {target} (epoch \
         {target_epoch}): an automatic rollback never crosses an epoch"
    ));
    state.save(None)?;
    tracing::error!("{}: {err}", app.name);
    Ok(err)
}

/// A rollback's own checks failed: stay where we are (no flip-flop), say so loudly.
pub fn degrade(app: &App, state: &mut Journal, at: &Version, reason: &str) -> anyhow::Result<Error> {
    let why = format!("the rollback to {at} switched and restarted, but {at} is not healthy either: {reason}");
    state.in_flight = None;
    state.mark_on_commit = None;
    state.current = Some(at.clone());
    state.degraded = Some(why.clone());
    state.save(None)?;
    tracing::error!("{}: {why}", app.name);
    Ok(Error::RollbackFailed { app: app.name.clone(), reason: why })
}

pub fn after_rollback(app: &App, restored: &Version, from: &Version, ev: &mut Event) {
    let dir = app.store.release_dir(restored);
    match hooks::run(app, Hook::AfterRollback, restored.as_str(), Some(from.as_str()), &dir) {
        Ok(Some(run)) => ev.output.extend(run.tail),
        Ok(None) => {}
        Err(mut failure) => {
            tracing::warn!("{}: {failure}", app.name);
            ev.output.extend(failure.take_tail());
        }
    }
}
