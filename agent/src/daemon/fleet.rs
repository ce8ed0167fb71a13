//! The daemon's part in a fleet rollout: whether this host is due for what the channel names (the wave in force
//! covers its seed, and the other hosts' failure marks have not halted the release), and this host's own report,
//! `BASE/APP/reports/HOST.json`, after what it did.
//!
//! An idle poll costs nothing here: the wave is a function of the clock, the failures are counted only by a host
//! that is due (one listing of the manifest's failure marks, and of `reports/` for a threshold in percent; a halt
//! is remembered until a newer manifest), and a report is written only when what it says changes. A host that
//! failed the release marks it (`failures/SEQUENCE/HOST.json`) before it writes its report.

use std::sync::Arc;
use std::time::SystemTime;

use super::blocking;
use crate::app::App;
use crate::base::activity::Activity;
use crate::base::progress::Worker;
use crate::base::version::Version;
use crate::engine::plan::{self, Failures, WaveDecision};
use crate::source::bucket::Source;
use crate::source::manifest::Accepted;
use crate::source::rollout::{self, HostReport, ReportOutcome, Threshold};
use crate::statedir::history::{self, Action, Outcome};

/// Most objects counted in a listing (a fleet larger than this is counted by its first ones).
const MAX_LISTED: usize = 100_000;

/// What the worker remembers of the fleet between polls.
#[derive(Default)]
pub(super) struct FleetMemory {
    /// The manifest (by sequence) found halted, and why: the failures are not counted again until a newer one.
    halted: Option<(u64, String)>,
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
    match count_failures(src, want.sequence, threshold).await {
        Ok(f) => {
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
            tracing::warn!("{}: cannot count the fleet's failures for halt_after: {e}", app.name);
            wait(format!("not deploying {v} yet: cannot count the fleet's failures for halt_after ({e})"));
            Some(Gated::Later)
        }
    }
}

/// The failures of the manifest `sequence`: one listing of its failure marks, and for a threshold in percent one
/// of the reports (the fleet's size). No report is read.
async fn count_failures(
    src: &Source,
    sequence: u64,
    threshold: Threshold,
) -> Result<Failures, crate::source::SourceError> {
    let marks = src.list(&rollout::failure_dir(sequence), MAX_LISTED).await?;
    let hosts = match threshold {
        Threshold::Hosts(_) => None,
        Threshold::Percent(_) => {
            let listed = src.list(rollout::REPORTS, MAX_LISTED).await?;
            Some(listed.iter().filter(|o| rollout::report_host(&o.rel).is_some()).count() as u64)
        }
    };
    Ok(plan::failures(marks.iter().map(|o| o.rel.as_str()), sequence, hosts))
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
    let bytes: bytes::Bytes = match serde_json::to_vec_pretty(&r) {
        Ok(b) => b.into(),
        Err(e) => return tracing::debug!("{}: {e}", app.name),
    };
    // The mark first: a report of a failure is only sent once the failure counts.
    if let Some(mark) = r.failure_mark() {
        if let Err(e) = src.put(&mark, bytes.clone()).await {
            let e = crate::base::chain::text(&e);
            return tracing::warn!("{}: cannot mark this host's failure of {}: {e}", app.name, r.version);
        }
    }
    match src.put(&key, bytes).await {
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
