//! `pin APP V` / `unpin APP`: hold an app on a version. While pinned, the daemon moves nothing, and a manual
//! deploy or rollback to another version needs `--force`.

use std::time::Duration;

use crate::app::App;
use crate::base::fsutil;
use crate::base::timeline::Timeline;
use crate::base::version::Version;
use crate::engine::reconcile;
use crate::error::Error;
use crate::statedir::state::Pin;

/// What `pin` did: the switch it made first, when the app was on another version.
#[derive(Debug, serde::Serialize)]
pub struct Pinned {
    pub app: String,
    pub pin: String,
    /// The version the app was switched away from, if it was not on the pinned one.
    pub switched_from: Option<String>,
    pub health: Option<String>,
}

/// Pins the app to `version`: when it runs another version (the daemon's deploy was cancelled for this, or had
/// finished), it is switched to `version` first, restarted and verified, as a rollback would; if that fails the
/// app goes back to where it was and nothing is pinned.
pub fn pin(app: &App, version: &Version, reason: Option<&str>, force: bool, wait: Duration) -> anyhow::Result<Pinned> {
    let mut tl = Timeline::new(false);
    let _lock = app.lock_preempting(wait, "pin", Some(version))?;
    let mut state = reconcile::reconcile(app, &mut tl)?;
    let on_disk = app.store.on_disk()?;
    if !on_disk.contains(version) {
        return Err(Error::not_on_disk(&app.name, version, &on_disk).into());
    }
    crate::engine::plan::not_bad(&state, version, force).map_err(|held| held.error(&app.name, version))?;
    let current = app.store.current()?;
    // Pinning switches to the version first: never back to a lower epoch unless forced.
    crate::engine::plan::not_lower_epoch(&state, current.as_ref(), version, None, force)
        .map_err(|held| held.error(&app.name, version))?;
    let mut ev = app.event(crate::statedir::history::Action::Pin);
    ev.version = Some(version.to_string());
    ev.previous = state.pin.as_ref().map(|p| p.version.to_string());
    ev.reason = reason.map(str::to_owned);
    app.recorded(ev, &mut tl, |ev, tl| {
        let mut out = Pinned { app: app.name.clone(), pin: version.to_string(), switched_from: None, health: None };
        if let Some(from) = current.as_ref().filter(|c| *c != version) {
            tl.note(&format!("{}: on {from}; switching to {version} before pinning it", app.name));
            let health = crate::engine::activate::switch_to(app, &mut state, version, from, tl, ev)?;
            out.switched_from = Some(from.to_string());
            out.health = Some(health);
        }
        state.pin = Some(Pin {
            version: version.clone(),
            at: fsutil::now_rfc3339(),
            by: ev.who.describe(),
            reason: reason.map(str::to_owned),
        });
        state.save(None)?;
        Ok(out)
    })
}

pub fn unpin(app: &App, wait: Duration) -> anyhow::Result<Option<String>> {
    let mut tl = Timeline::new(false);
    let _lock = app.lock(wait, "unpin")?;
    let mut state = reconcile::reconcile(app, &mut tl)?;
    let Some(old) = state.pin.take() else { return Ok(None) };
    let mut ev = app.event(crate::statedir::history::Action::Unpin);
    ev.previous = Some(old.version.to_string());
    app.recorded(ev, &mut tl, |_, _| state.save(None))?;
    Ok(Some(old.version.to_string()))
}
