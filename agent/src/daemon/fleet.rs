//! The daemon's part in a fleet rollout: whether this host is due for what the channel names (the wave in force
//! covers its seed, and the other hosts' reports have not halted the release), and this host's own report,
//! `BASE/APP/reports/HOST.json`, after what it did.
//!
//! An idle poll costs nothing here: the wave is a function of the clock, the reports are listed only by a host
//! that is due (once per manifest: a halt is remembered until a newer one), and a report is written only when
//! what it says changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::StreamExt;

use super::blocking;
use crate::app::App;
use crate::base::activity::Activity;
use crate::base::progress::Worker;
use crate::base::version::Version;
use crate::engine::plan::{self, WaveDecision};
use crate::source::bucket::{Fetched, Source};
use crate::source::manifest::Accepted;
use crate::source::rollout::{self, HostReport, ReportOutcome};
use crate::statedir::history::{self, Action, Outcome};

/// Most reports read (a fleet larger than this is counted by its first ones).
const MAX_REPORTS: usize = 100_000;
/// Reports fetched at once.
const FETCHES: usize = 16;

/// What the worker remembers of the fleet between polls.
#[derive(Default)]
pub(super) struct FleetMemory {
    /// The manifest (by sequence) found halted, and why: the reports are not read again until a newer manifest.
    halted: Option<(u64, String)>,
    /// Reports read, by object, with their ETag: only those that changed are fetched again.
    reports: HashMap<String, (Option<String>, HostReport)>,
    /// What this host is doing about the channel's release when history does not say it (waiting for its wave,
    /// halted, the artifact refused): reported instead of the last event.
    pub(super) status: Option<(ReportOutcome, Version, u64)>,
    /// The substance of the last report written, and the length of history it was built from.
    sent: Option<Substance>,
    sent_at: Option<std::time::Instant>,
    history_len: Option<u64>,
}

type Substance = (String, ReportOutcome, Option<String>, u64);

fn substance(r: &HostReport) -> Substance {
    (r.version.clone(), r.outcome, r.current.clone(), r.sequence)
}

/// Why the gate stopped the worker: to try again at the next poll, or settled until a newer manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gated {
    Later,
    Settled,
}

/// Whether this host may deploy what `want` names now; `None`: go on. Otherwise the activity is set and the
/// worker stops here for this poll.
pub(super) async fn gate(
    app: &App,
    src: Option<&Source>,
    want: &Accepted,
    current: &str,
    worker: &Arc<Worker>,
    fm: &mut FleetMemory,
) -> Option<Gated> {
    fm.status = None;
    if want.waves.is_empty() && want.halt_after.is_none() {
        return None;
    }
    let v = &want.version;
    let wait = |why: String| {
        worker.set_activity(Activity::Waiting { current: current.to_owned(), why });
    };
    let Some(host) = app.host_id.as_deref() else {
        wait(format!(
            "not deploying {v}: its manifest has a staged rollout, and this host has no id (set host_id under \
             [agent], or give it {})",
            crate::config::MACHINE_ID
        ));
        return Some(Gated::Later);
    };
    let seed = plan::seed(host, &app.name, v);
    if let WaveDecision::NotYet { in_force, next, .. } = plan::wave(want, seed, SystemTime::now()) {
        let now = in_force.map_or("no wave has started".to_owned(), |w| format!("wave {w} in force"));
        let next = match next {
            Some((w, at)) => format!("its wave {w} starts at {}", humantime::format_rfc3339_seconds(at)),
            None => "no wave of this rollout covers it".to_owned(),
        };
        wait(format!("waiting to deploy {v}: seed {seed}, {now}; {next}"));
        fm.status = Some((ReportOutcome::Waiting, v.clone(), want.sequence));
        return Some(Gated::Later);
    }
    let threshold = want.halt_after?;
    // Without a bucket (an inbox drop) there are no reports to read: the threshold cannot be judged here.
    let src = src?;
    if let Some((seq, why)) = &fm.halted {
        if *seq == want.sequence {
            wait(format!("not deploying {v}: {why}"));
            fm.status = Some((ReportOutcome::Halted, v.clone(), want.sequence));
            return Some(Gated::Settled);
        }
    }
    match read_reports(src, fm).await {
        Ok(()) => {
            let f = plan::failures(fm.reports.values().map(|(_, r)| r), v, want.sequence);
            if let Some(why) = plan::halted(Some(threshold), f) {
                tracing::warn!("{}: not deploying {v}: {why}", app.name);
                wait(format!("not deploying {v}: {why}"));
                fm.halted = Some((want.sequence, why));
                fm.status = Some((ReportOutcome::Halted, v.clone(), want.sequence));
                return Some(Gated::Settled);
            }
            None
        }
        Err(e) => {
            // halt_after is a safety gate: not judged, not passed.
            let e = crate::base::chain::text(&e);
            tracing::warn!("{}: cannot read the fleet's reports for halt_after: {e}", app.name);
            wait(format!("not deploying {v} yet: cannot read the fleet's reports for halt_after ({e})"));
            Some(Gated::Later)
        }
    }
}

/// Brings the cache of reports up to date with the bucket: one listing, and a fetch of each report that is new
/// or changed. A report that cannot be read or parsed is left out (and said at debug level).
async fn read_reports(src: &Source, fm: &mut FleetMemory) -> Result<(), crate::source::SourceError> {
    let listed = src.list(rollout::REPORTS, MAX_REPORTS).await?;
    let keep: std::collections::HashSet<String> = listed.iter().map(|o| o.rel.clone()).collect();
    let wanted: Vec<_> = listed
        .into_iter()
        .filter(|o| rollout::report_host(&o.rel).is_some())
        .filter(|o| o.etag.is_none() || fm.reports.get(&o.rel).map(|(e, _)| e) != Some(&o.etag))
        .collect();
    let fetched: Vec<_> = futures_util::stream::iter(wanted)
        .map(|o| async move {
            let got = src.fetch_small(&o.rel, None).await;
            (o, got)
        })
        .buffer_unordered(FETCHES)
        .collect()
        .await;
    for (o, got) in fetched {
        match got {
            Ok(Fetched::Body { bytes, etag }) => match serde_json::from_slice::<HostReport>(&bytes) {
                Ok(mut r) => {
                    // The object's name says whose it is.
                    r.host = rollout::report_host(&o.rel).unwrap_or_default().to_owned();
                    fm.reports.insert(o.rel, (etag.or(o.etag), r));
                }
                Err(e) => tracing::debug!("{}: not a report: {e}", src.describe(&o.rel)),
            },
            Ok(_) => {}
            Err(e) => tracing::debug!("{}", crate::base::chain::text(&e)),
        }
    }
    fm.reports.retain(|k, _| keep.contains(k));
    Ok(())
}

/// Writes this host's report when what it says changed, and every [`rollout::REPORT_EVERY`] anyway: the status the gate or a refusal left, else the last
/// deploy or rollback in history. Nothing is read or sent when neither changed; a failed write is tried again
/// at the next poll.
pub(super) async fn report(app: &App, src: Option<&Source>, worker: &Arc<Worker>, fm: &mut FleetMemory) {
    let (Some(src), Some(host)) = (src, app.host_id.clone()) else { return };
    let again = fm.sent_at.is_some_and(|t| t.elapsed() >= rollout::REPORT_EVERY);
    let (a, status, known) = (app.clone(), fm.status.clone(), fm.history_len);
    let built = blocking(worker, move || {
        let len = std::fs::metadata(a.history_path()).map_or(0, |m| m.len());
        if status.is_none() && known == Some(len) && !again {
            return Ok((len, None));
        }
        let state = a.load_state()?;
        let current = state.current.as_ref().map(ToString::to_string);
        let sequence_of =
            |v: &str| state.channel.as_ref().filter(|c| c.version.as_str() == v).map_or(0, |c| c.sequence);
        let mut r = HostReport {
            host,
            app: a.name.clone(),
            version: String::new(),
            outcome: ReportOutcome::Unknown,
            current,
            sequence: 0,
            health: state.last_health.as_ref().map(|h| h.detail.clone()).unwrap_or_default(),
            duration_ms: 0,
            steps_ms: Default::default(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            time: crate::base::fsutil::now_rfc3339(),
            reported_at: Some(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
        };
        if let Some((outcome, v, sequence)) = status {
            r.version = v.to_string();
            r.outcome = outcome;
            r.sequence = sequence;
            return Ok((len, Some(r)));
        }
        let Some(ev) = history::last(&a.history_path(), |e| outcome_of(e).is_some())? else {
            return Ok((len, None));
        };
        r.version = ev.version.clone().unwrap_or_default();
        r.outcome = outcome_of(&ev).unwrap_or(ReportOutcome::Unknown);
        r.sequence = sequence_of(&r.version);
        r.duration_ms = ev.duration_ms;
        r.steps_ms = ev.steps.iter().map(|t| (t.step.clone(), t.ms)).collect();
        r.time = ev.time;
        Ok((len, Some(r)))
    })
    .await;
    let (len, r) = match built {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!("{}: building the report: {e:#}", app.name);
            return;
        }
    };
    let Some(r) = r.filter(|r| again || fm.sent.as_ref() != Some(&substance(r))) else {
        fm.history_len = Some(len);
        return;
    };
    let key = rollout::report_key(&r.host);
    let bytes = match serde_json::to_vec_pretty(&r) {
        Ok(b) => b,
        Err(e) => return tracing::debug!("{}: {e}", app.name),
    };
    match src.put(&key, bytes.into()).await {
        Ok(()) => {
            tracing::debug!("{}: reported {} {} to {}", app.name, r.outcome.as_str(), r.version, src.describe(&key));
            fm.sent = Some(substance(&r));
            fm.sent_at = Some(std::time::Instant::now());
            fm.history_len = Some(len);
        }
        Err(e) => tracing::warn!("{}: cannot write this host's report: {}", app.name, crate::base::chain::text(&e)),
    }
}

/// What a history event says to the fleet: deploys and rollbacks that ended (not busy or interrupted ones).
fn outcome_of(e: &history::Event) -> Option<ReportOutcome> {
    e.version.as_ref()?;
    match (e.op, e.outcome) {
        (Action::Deploy, Outcome::Ok) => Some(ReportOutcome::Ok),
        (Action::Deploy, Outcome::RolledBack) => Some(ReportOutcome::RolledBack),
        (Action::Deploy | Action::Rollback, Outcome::RollbackFailed) => Some(ReportOutcome::RollbackFailed),
        (Action::Deploy, Outcome::Failed) => Some(ReportOutcome::Failed),
        (Action::Rollback, Outcome::Ok) => Some(ReportOutcome::Rollback),
        _ => None,
    }
}
