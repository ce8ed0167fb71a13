//! `rollback APP [--to V]`: switch to the most recent good release before the current one (or the named one),
//! restart and verify, without any network. The release left behind is marked bad so that no automation brings
//! it back.

use std::time::Duration;

use serde::Serialize;

use crate::app::App;
use crate::base::timeline::Timeline;
use crate::base::timeline::Timing;
use crate::base::version::Version;
use crate::engine::activate;
use crate::engine::reconcile;
use crate::error::Error;
use crate::statedir::state::PendingMark;

#[derive(Debug, Serialize)]
pub struct RollbackOutcome {
    pub app: String,
    pub from: String,
    pub to: String,
    pub health: String,
    pub steps: Vec<Timing>,
}

pub fn rollback(
    app: &App,
    to: Option<&Version>,
    reason: Option<&str>,
    force: bool,
    wait: Duration,
    print: bool,
) -> anyhow::Result<RollbackOutcome> {
    let mut tl = Timeline::new(print);
    let before = app.store.current()?;
    let _lock = app.lock_preempting(wait, "rollback", to)?;
    let mut state = reconcile::reconcile(app, &mut tl)?;
    let current = app.store.current()?.ok_or_else(|| Error::NoRollbackTarget { app: app.name.clone() })?;
    if let (None, Some(before)) = (to, &before) {
        // The daemon's deploy of `before` was cancelled for this command and has already gone back: that is the
        // rollback asked for. Going back once more would skip a good release.
        if *before != current && state.bad.contains_key(before) && state.last_good.as_ref() == Some(&current) {
            let mut ev = app.event(crate::statedir::history::Action::Rollback);
            ev.version = Some(current.to_string());
            ev.previous = Some(before.to_string());
            ev.reason = Some(format!(
                "the daemon's deploy of {before} was cancelled and switched back to {current}{}",
                reason.map(|r| format!("; {r}")).unwrap_or_default()
            ));
            app.record(&ev)?;
            tl.note(&format!("{}: the daemon already rolled back from {before} to {current}", app.name));
            return Ok(RollbackOutcome {
                app: app.name.clone(),
                from: before.to_string(),
                to: current.to_string(),
                health: state.last_health.as_ref().map_or(String::new(), |h| h.detail.clone()),
                steps: tl.steps,
            });
        }
    }
    let on_disk = app.store.on_disk()?;
    let target = match to {
        Some(v) if !on_disk.contains(v) => return Err(Error::not_on_disk(&app.name, v, &on_disk).into()),
        Some(v) if *v == current => {
            return Err(Error::Usage(format!("`{v}` is already the current release of `{}`", app.name)).into())
        }
        Some(v) => v.clone(),
        None => state
            .rollback_target(Some(&current), &on_disk)
            .ok_or_else(|| Error::NoRollbackTarget { app: app.name.clone() })?,
    };
    crate::engine::plan::may_switch_to(&state, &target, force).map_err(|held| held.error(&app.name, &target))?;
    let mut ev = app.event(crate::statedir::history::Action::Rollback);
    ev.version = Some(target.to_string());
    ev.previous = Some(current.to_string());
    ev.reason = reason.map(str::to_owned);
    tl.note(&format!("rolling back {} from {current} to {target}", app.name));
    let health = app.recorded(ev, &mut tl, |ev, tl| {
        // The release left behind is marked bad (so no automation brings it back) once the app has left it: the
        // mark is journaled with the switch, and dropped if the target fails and the app goes back to it.
        let why =
            format!("manual rollback by {}{}", ev.who.describe(), reason.map(|r| format!(": {r}")).unwrap_or_default());
        state.mark_on_commit = Some(PendingMark { version: current.clone(), reason: why });
        let health = activate::switch_to(app, &mut state, &target, &current, tl, ev)?;
        activate::after_rollback(app, &target, &current, ev);
        Ok(health)
    })?;
    Ok(RollbackOutcome {
        app: app.name.clone(),
        from: current.to_string(),
        to: target.to_string(),
        health,
        steps: tl.steps,
    })
}
