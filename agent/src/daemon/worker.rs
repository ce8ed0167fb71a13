//! One app's worker: polls its channel (and wakes on its inbox), converges the app to what the accepted manifest
//! names, checks the current release while idle, and says a repeating trouble once, then in summary. Every blocking
//! step runs on the blocking pool, never on the async thread.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::blocking;
use crate::app::App;
use crate::base::activity::Activity;
use crate::base::fsutil;
use crate::base::progress::{self, Worker};
use crate::engine::deploy::{self, DeployRequest};
use crate::engine::plan::{self, Converge};
use crate::engine::pull;
use crate::error::Error;
use crate::source::bucket::{Options, Source};
use crate::source::rollout::ReportOutcome;
use crate::source::SourceError;

/// Per-worker memory: the ETag of the last manifest fetched, and the artifacts refused for good.
#[derive(Default)]
pub(super) struct Memory {
    pub(super) etag: Option<String>,
    /// (version, sha256) whose artifact failed verification or unpacking: not fetched again until the channel
    /// names something else.
    refused: HashSet<(String, String)>,
    /// The last reason logged for not deploying what the channel wants (logged once).
    held: String,
    /// A poll failure that repeats: logged once, then summarised.
    pub(super) trouble: Trouble,
    /// The fleet: the rollout's gate and this host's report.
    pub(super) fleet: super::fleet::FleetMemory,
}

/// A condition that may repeat at every poll (the bucket away, no manifest published): said when it starts, then
/// summarised now and then (after 10 and 100 repeats, then every hour), and once more when it ends.
#[derive(Default)]
pub(super) struct Trouble {
    current: Option<(String, u64, std::time::Instant, String)>,
    last_summary: Option<std::time::Instant>,
}

impl Trouble {
    pub(super) fn report(&mut self, app: &str, now: Option<String>) {
        match (now, self.current.take()) {
            (None, None) => {}
            (None, Some((what, n, _, since))) => {
                tracing::info!("{app}: resolved after {n} poll(s) since {since}: {what}");
                self.last_summary = None;
            }
            (Some(what), Some((same, n, started, since))) if same == what => {
                let n = n + 1;
                let hourly = self.last_summary.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600));
                if n == 10 || n == 100 || (n > 100 && hourly) {
                    tracing::warn!("{app}: still ({n} polls since {since}): {what}");
                    self.last_summary = Some(std::time::Instant::now());
                }
                self.current = Some((what, n, started, since));
            }
            (Some(what), _) => {
                tracing::warn!("{app}: {what}");
                self.current = Some((what, 1, std::time::Instant::now(), fsutil::now_rfc3339()));
                self.last_summary = None;
            }
        }
    }
}

/// Between deploys, the daemon checks the current release once per poll, so `status` says how it is now, not
/// how it was when it went live. Nothing else follows from it: a release that turns unhealthy after its bake is
/// reported, not rolled back (that is a person's call, or the next release's).
pub(super) async fn idle_health(app: &App, worker: &Arc<Worker>) {
    if app.cfg.checks.is_empty() {
        return;
    }
    let a = app.clone();
    let checked = blocking(worker, move || {
        let Some(current) = a.store.current()? else { return Ok(None) };
        let results = crate::engine::status::check_now(&a)?;
        let failed = results.iter().find(|r| !r.ok);
        Ok(Some(crate::base::verdict::HealthSummary {
            at: fsutil::now_rfc3339(),
            version: Some(current),
            healthy: failed.is_none(),
            detail: match failed {
                Some(r) => format!("{}: {}", r.check, r.detail),
                None => format!("{} check(s) passed", results.len()),
            },
        }))
    })
    .await;
    match checked {
        Ok(h) => {
            if let Some(h) = h.as_ref().filter(|h| !h.healthy) {
                if worker.health().is_none_or(|old| old.healthy) {
                    tracing::warn!(
                        "{}: {} is not healthy now: {}",
                        app.name,
                        h.version.as_ref().map_or("?", |v| v.as_str()),
                        h.detail
                    );
                }
            }
            worker.set_health(h);
        }
        Err(e) => tracing::debug!("{}: idle check: {e:#}", app.name),
    }
}

pub(super) fn open_source(app: &App) -> Option<Source> {
    let url = app.cfg.source.as_deref()?;
    match Source::open(url, &Options::of(&app.cfg)) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!("{}: {}", app.name, crate::base::chain::text(&e));
            None
        }
    }
}

/// Whether what the accepted manifest asks for is settled (done, or refused for good), or must be tried again
/// later (busy, pinned, the bucket away, a shutdown): an inbox drop stays in the inbox until it is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Converged {
    Settled,
    Later,
}

/// Brings the app to what its accepted manifest names, as [`plan::converge`] decides (not a version marked bad,
/// not away from a pin, not an expired manifest, not an artifact refused before).
pub(super) async fn converge(app: &App, src: Option<&Source>, worker: &Arc<Worker>, mem: &mut Memory) -> Converged {
    let a = app.clone();
    let (state, on_disk) = match blocking(worker, move || Ok((a.load_state()?, a.store.on_disk()?))).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{}: {e:#}", app.name);
            return Converged::Later;
        }
    };
    let current = state.current.as_ref().map_or("nothing".to_owned(), ToString::to_string);
    use Converged::{Later, Settled};
    let (want, have) = match plan::converge(&state, &on_disk, &mem.refused, std::time::SystemTime::now()) {
        Converge::NoManifest => {
            worker.set_activity(Activity::Waiting { current, why: "no manifest accepted yet".to_owned() });
            return Settled;
        }
        Converge::OnIt { version: v } => {
            // The newest word on the current release: the daemon's idle check, else the deploy's.
            let newest = worker.health().filter(|h| h.version.as_ref() == Some(&v)).or(state.last_health.clone());
            let healthy = newest.as_ref().filter(|h| h.version.as_ref() == Some(&v)).map(|h| h.healthy);
            worker.set_activity(Activity::On { current: v.to_string(), healthy });
            return Settled;
        }
        Converge::Hold { version: v, why, retry } => {
            if mem.held != why {
                tracing::warn!("{}: not deploying {v}: {why}", app.name);
                mem.held = why.clone();
            }
            worker.set_activity(Activity::Waiting { current, why: format!("holding: {why}") });
            return if retry { Later } else { Settled };
        }
        Converge::Deploy { want, on_disk } => {
            let want = *want;
            match super::fleet::gate(app, src, &want, &current, worker, &mut mem.fleet).await {
                Some(super::fleet::Gated::Later) => return Later,
                Some(super::fleet::Gated::Settled) => return Settled,
                None => {}
            }
            (want, on_disk)
        }
    };
    let v = want.version.clone();
    let key = (v.to_string(), want.sha256.clone());
    mem.held.clear();
    // A delta when the manifest names one and its base is here; the full artifact if that fails in any way.
    let mut delta = if have { None } else { plan::delta_base(&state, &on_disk, &want).cloned() };
    // Downloads that were not used (a delta that did not assemble): counted in the one that is.
    let mut unused: Vec<deploy::Fetched> = Vec::new();
    let (archive, result) = loop {
        let mut fetched = None;
        let archive = if have {
            // An artifact left from a deploy a shutdown interrupted is not needed any more.
            let left = app.downloads_dir().join(format!("{}.tar.zst", want.sha256));
            let _ = blocking(worker, move || Ok(std::fs::remove_file(left))).await;
            None
        } else {
            worker.set_activity(Activity::Downloading {
                current: current.clone(),
                version: v.to_string(),
                progress: None,
            });
            let w = worker.clone();
            let (current2, v2) = (current.clone(), v.to_string());
            let show = move |n: u64, total: u64| {
                w.set_activity(Activity::Downloading {
                    current: current2.clone(),
                    version: v2.clone(),
                    progress: Some((n, total)),
                })
            };
            match pull::fetch_artifact(app, src, &want, delta.as_ref(), &show).await {
                Ok((p, took)) => {
                    crate::base::crashpoint::hit(crate::base::crashpoint::Point::AfterDownload);
                    fetched = took;
                    Some(p)
                }
                Err(e) if delta.is_some() => {
                    let e = crate::base::chain::text(&e);
                    tracing::warn!("{}: cannot fetch the delta of {v}: {e}; fetching the full artifact", app.name);
                    delta = None;
                    continue;
                }
                Err(e) => {
                    let mismatch = matches!(e, Error::Source(SourceError::Mismatch { .. }));
                    let e = crate::base::chain::text(&e);
                    tracing::warn!("{}: cannot fetch {v}: {e}", app.name);
                    worker.set_activity(Activity::Waiting { current, why: format!("fetching {v} failed: {e}") });
                    if mismatch {
                        worker.set_refusal(Some(format!("{} refused the artifact of {v}: {e}", fsutil::now_rfc3339())));
                        mem.refused.insert(key);
                        mem.fleet.status = Some((ReportOutcome::Refused, v.clone(), want.sequence));
                        return Settled;
                    }
                    return Later;
                }
            }
        };
        worker.set_activity(Activity::Deploying { version: v.to_string(), stage: None });
        let full = deploy::Promise { sha256: want.sha256.clone(), size: want.size };
        let req = DeployRequest {
            archive: archive.clone(),
            expected: Some(match &delta {
                Some(d) => deploy::Promise { sha256: d.sha256.clone(), size: d.size },
                None => full.clone(),
            }),
            version: v.clone(),
            force: false,
            reason: Some(format!(
                "{} (sequence {}){}",
                want.from,
                want.sequence,
                delta.as_ref().map_or(String::new(), |d| format!(", from the delta against {}", d.from))
            )),
            fetched: fetched.clone().map(|f: deploy::Fetched| f.after(&unused)),
            delta: delta.as_ref().map(|d| deploy::DeltaOf { base: d.from.clone(), release: full }),
            epoch: want.epoch,
        };
        let a = app.clone();
        let result = blocking(worker, move || deploy::deploy(&a, &req, Duration::from_secs(1), false)).await;
        let refused = result.as_ref().err().is_some_and(pull::refused_archive);
        if let (true, Some(d), Err(e)) = (refused, &delta, &result) {
            // The base is not what the delta was made against (changed, or its files not shareable here), or the
            // delta is not what its manifest says: nothing of it is kept, and the full artifact decides.
            tracing::warn!(
                "{}: the delta of {v} against {} was not used ({e:#}); fetching the full artifact",
                app.name,
                d.from
            );
            if let Some(p) = archive.filter(|p| p.starts_with(app.downloads_dir())) {
                let _ = blocking(worker, move || Ok(std::fs::remove_file(p))).await;
            }
            delta = None;
            unused.extend(fetched);
            continue;
        }
        match &result {
            Ok(out) => tracing::info!("{}: {} {} ({})", app.name, out.version, out.outcome, out.health),
            Err(e) => {
                if refused {
                    mem.refused.insert(key.clone());
                    mem.fleet.status = Some((ReportOutcome::Refused, v.clone(), want.sequence));
                    worker.set_refusal(Some(format!("{} refused the artifact of {v}: {e:#}", fsutil::now_rfc3339())));
                }
                tracing::warn!("{}: {e:#}", app.name);
            }
        }
        break (archive, result);
    };
    // The download is kept only for a deploy that did not get to use it (busy, or stopped by a shutdown before
    // the release was on disk); a release on disk never needs its artifact again.
    let busy = matches!(result.as_ref().err().and_then(|e| e.downcast_ref::<Error>()), Some(Error::Busy { .. }));
    let (a, w, v2) = (app.clone(), worker.clone(), v.clone());
    let after = blocking(worker, move || {
        w.clear_cancel();
        let unused = busy || (progress::shutting_down() && !a.store.on_disk().unwrap_or_default().contains(&v2));
        if let Some(p) = archive.filter(|p| p.starts_with(a.downloads_dir())) {
            if !unused {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok((unused, a.load_state().unwrap_or_default()))
    })
    .await;
    let (unused, state) = after.unwrap_or_default();
    let now = state.current.as_ref().map_or("nothing".to_owned(), ToString::to_string);
    worker.set_activity(match result {
        Ok(_) => Activity::On { current: now, healthy: Some(true) },
        // A rolled-back deploy's error already says "deploy of V ... failed": said once.
        Err(e) if matches!(e.downcast_ref::<Error>(), Some(Error::RolledBack { .. })) => {
            Activity::Waiting { current: now, why: first_line(&format!("{e}")).to_owned() }
        }
        Err(e) => {
            Activity::Waiting { current: now, why: format!("deploy of {v} failed: {}", first_line(&format!("{e}"))) }
        }
    });
    if unused {
        Later
    } else {
        Settled
    }
}

pub(super) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}
