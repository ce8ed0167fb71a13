//! `pin APP V` / `unpin APP`: hold an app on a version. While pinned, the daemon moves nothing, and a manual
//! deploy or rollback to another version needs `--force`.

use std::time::Duration;

use crate::app::App;
use crate::error::Error;
use crate::fsutil;
use crate::reconcile;
use crate::state::Pin;
use crate::timeline::Timeline;
use crate::version::Version;

pub fn pin(app: &App, version: &Version, reason: Option<&str>, wait: Duration) -> anyhow::Result<()> {
    let mut tl = Timeline::new(false);
    let _lock = app.lock_preempting(wait, "pin")?;
    let mut state = reconcile::reconcile(app, &mut tl)?;
    let on_disk = app.store.on_disk()?;
    if !on_disk.contains(version) {
        return Err(Error::not_on_disk(&app.name, version, &on_disk).into());
    }
    let mut ev = app.event("pin");
    ev.version = Some(version.to_string());
    ev.previous = state.pin.as_ref().map(|p| p.version.to_string());
    ev.reason = reason.map(str::to_owned);
    app.recorded(ev, &mut tl, |ev, _| {
        state.pin = Some(Pin {
            version: version.clone(),
            at: fsutil::now_rfc3339(),
            by: ev.who.describe(),
            reason: reason.map(str::to_owned),
        });
        app.save_state(&state)
    })
}

pub fn unpin(app: &App, wait: Duration) -> anyhow::Result<Option<String>> {
    let mut tl = Timeline::new(false);
    let _lock = app.lock(wait)?;
    let mut state = reconcile::reconcile(app, &mut tl)?;
    let Some(old) = state.pin.take() else { return Ok(None) };
    let mut ev = app.event("unpin");
    ev.previous = Some(old.version.to_string());
    app.recorded(ev, &mut tl, |_, _| app.save_state(&state))?;
    Ok(Some(old.version.to_string()))
}
