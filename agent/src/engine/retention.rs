//! Retention: `prune APP [--keep N]` and the prune after each successful deploy. Never removes the current
//! release, the last good one, a pinned one, or the release a rollback would go to.

use std::time::Duration;

use serde::Serialize;

use crate::app::App;
use crate::base::timeline::Timeline;
use crate::engine::reconcile;
use crate::statedir::journal::Journal;

#[derive(Debug, Serialize)]
pub struct PruneOutcome {
    pub app: String,
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

pub fn prune(app: &App, keep: Option<usize>, wait: Duration, print: bool) -> anyhow::Result<PruneOutcome> {
    let mut tl = Timeline::new(print);
    let _lock = app.lock(wait, "prune")?;
    let mut state = reconcile::reconcile(app, &mut tl)?;
    let keep = keep.unwrap_or(app.cfg.keep);
    let mut ev = app.event(crate::statedir::history::Action::Prune);
    ev.reason = Some(format!("keep {keep}"));
    let removed = app.recorded(ev, &mut tl, |ev, _| {
        let removed = remove(app, &mut state, keep)?;
        ev.removed = removed.clone();
        Ok(removed)
    })?;
    let kept = app.store.on_disk()?.iter().map(ToString::to_string).collect();
    Ok(PruneOutcome { app: app.name.clone(), removed, kept })
}

/// After a successful deploy (under the lock already held).
pub fn prune_after_deploy(app: &App, state: &mut Journal) -> anyhow::Result<Vec<String>> {
    remove(app, state, app.cfg.keep)
}

/// The history event of the prune after the deploy of `v` (the deploy's own event lists what it removed too).
pub fn record_prune_after_deploy(app: &App, v: &str, removed: &[String]) -> anyhow::Result<()> {
    if removed.is_empty() {
        return Ok(());
    }
    let mut ev = app.event(crate::statedir::history::Action::Prune);
    ev.reason = Some(format!("after the deploy of {v} (keep {})", app.cfg.keep));
    ev.version = Some(v.to_owned());
    ev.removed = removed.to_vec();
    app.record(&ev)
}

fn remove(app: &App, state: &mut Journal, keep: usize) -> anyhow::Result<Vec<String>> {
    let on_disk = app.store.on_disk()?;
    let mut removed = Vec::new();
    for v in state.prunable(&on_disk, keep) {
        app.store.remove_release(&v)?;
        let _ = std::fs::remove_file(crate::store::index::path(&app.state_dir, v.as_str()));
        state.releases.remove(&v);
        state.save(Some(crate::base::crashpoint::Point::PruneMidRemove))?;
        removed.push(v.to_string());
    }
    Ok(removed)
}
