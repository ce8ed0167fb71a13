//! `clear APP`: an operator's way out of a state only a person may end. It clears the degraded mark (the app
//! needed a person after a rollback failed) and, with `--bad V` or `--all-bad`, bad marks, so automation may bring
//! those versions back. It changes no release and restarts nothing; the event in history says who and why.

use std::time::Duration;

use serde::Serialize;

use crate::app::App;
use crate::base::timeline::Timeline;
use crate::base::version::Version;
use crate::engine::reconcile;
use crate::error::Error;

#[derive(Debug, Serialize)]
pub struct Cleared {
    pub app: String,
    /// The degraded reason that was cleared, if the app was degraded.
    pub degraded: Option<String>,
    /// The versions whose bad mark was cleared.
    pub bad: Vec<String>,
}

pub fn clear(
    app: &App,
    bad: &[Version],
    all_bad: bool,
    reason: Option<&str>,
    wait: Duration,
) -> anyhow::Result<Cleared> {
    let mut tl = Timeline::new(false);
    let _lock = app.lock(wait, "clear")?;
    let mut state = reconcile::reconcile(app, &mut tl)?;
    for v in bad {
        if !state.bad.contains_key(v) {
            let marked: Vec<String> = state.bad.keys().map(ToString::to_string).collect();
            return Err(Error::Usage(format!(
                "`{v}` of `{}` is not marked bad (marked bad: {})",
                app.name,
                if marked.is_empty() { "none".to_owned() } else { marked.join(", ") }
            ))
            .into());
        }
    }
    let versions: Vec<Version> = if all_bad { state.bad.keys().cloned().collect() } else { bad.to_vec() };
    let mut ev = app.event(crate::statedir::history::Action::Clear);
    let what = match (&state.degraded, versions.is_empty()) {
        (None, true) => "nothing to clear".to_owned(),
        (d, _) => {
            let mut parts = Vec::new();
            if d.is_some() {
                parts.push("the degraded state".to_owned());
            }
            if !versions.is_empty() {
                parts.push(format!(
                    "the bad mark of {}",
                    versions.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                ));
            }
            format!("cleared {}", parts.join(" and "))
        }
    };
    ev.reason = Some(match reason {
        Some(r) => format!("{what}: {r}"),
        None => what,
    });
    ev.version = state.current.as_ref().map(ToString::to_string);
    app.recorded(ev, &mut tl, |_, _| {
        let degraded = state.degraded.take();
        for v in &versions {
            state.bad.remove(v);
        }
        state.save(None)?;
        Ok(Cleared { app: app.name.clone(), degraded, bad: versions.iter().map(ToString::to_string).collect() })
    })
}
