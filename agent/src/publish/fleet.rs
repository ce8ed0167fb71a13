//! `fleet status --source BASE --app APP`: the fleet as the bucket sees it, from the channel manifest and every
//! host's report (`BASE/APP/reports/HOST.json`): which versions the hosts run, what they did about the channel's
//! release, how far its waves have come, whether it is halted, and which hosts have gone quiet. Read-only: the
//! manifest, one listing of the reports and one small GET each, and one listing of the release's failure marks
//! (`failures/SEQUENCE/`), which count towards `halt_after` as the hosts count them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use serde::Serialize;

use crate::base::version::Version;
use crate::engine::plan::{self, WaveDecision};
use crate::engine::pull;
use crate::error::Error;
use crate::source::bucket::{Fetched, Options, Source};
use crate::source::manifest::{self, Manifest};
use crate::source::rollout::{self, HostReport, Threshold, Wave};

pub struct FleetRequest {
    pub base: String,
    pub app: String,
    pub channel: String,
    pub options: Options,
    /// Hosts whose last report is older than this are stale.
    pub stale_after: Duration,
    /// Keys the manifest must be signed with, to be shown as verified.
    pub trusted_keys: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct FleetStatus {
    pub app: String,
    pub channel: String,
    pub source: String,
    /// The channel's release (none: no manifest is published).
    pub version: Option<String>,
    pub sequence: Option<u64>,
    pub published_at: Option<String>,
    /// Whether the manifest's signature was checked against `--trusted-key` and holds.
    pub verified: bool,
    pub waves: Vec<Wave>,
    /// The wave in force now, if the rollout has waves and one has started.
    pub wave: Option<Wave>,
    pub next_wave: Option<NextWave>,
    pub halt_after: Option<Threshold>,
    pub halted: bool,
    pub halted_reason: Option<String>,
    /// Hosts that failed the channel's release under this manifest.
    pub failed: u64,
    /// Hosts that report (the fleet as the bucket knows it), and of them: due now (their seed is covered by the
    /// wave in force, or no waves), running the channel's release, and stale.
    pub hosts: u64,
    pub due: u64,
    pub on_version: u64,
    pub stale: Vec<String>,
    /// Hosts by the version they run, and by what they last reported about the channel's release.
    pub running: BTreeMap<String, u64>,
    pub outcomes: BTreeMap<String, u64>,
    pub reports: Vec<HostLine>,
    pub stale_after_s: u64,
    /// Reports that could not be read or parsed.
    pub unreadable: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct NextWave {
    pub wave: Wave,
    pub at: String,
}

#[derive(Debug, Serialize)]
pub struct HostLine {
    pub host: String,
    pub current: Option<String>,
    pub version: String,
    pub outcome: String,
    pub time: String,
    pub reported_at: Option<String>,
    /// Its seed for the channel's release.
    pub seed: Option<u8>,
    pub due: bool,
    pub stale: bool,
    pub agent_version: String,
}

pub fn fleet_status(req: &FleetRequest, rt: &tokio::runtime::Runtime) -> anyhow::Result<FleetStatus> {
    rt.block_on(fleet_async(req))
}

async fn fleet_async(req: &FleetRequest) -> anyhow::Result<FleetStatus> {
    for (what, name) in [("--app", &req.app), ("--channel", &req.channel)] {
        if !crate::config::valid_app_name(name) {
            return Err(Error::Usage(format!("{what} `{name}`: expected [A-Za-z0-9][A-Za-z0-9_-]{{0,63}}")).into());
        }
    }
    let keys = crate::config::parse_keys(&req.trusted_keys).map_err(|e| Error::Usage(format!("--trusted-key: {e}")))?;
    let base = format!("{}/{}", req.base.trim_end_matches('/'), req.app);
    let src = Source::open(&base, &req.options)?;
    let key = pull::channel_key(&req.channel);
    let manifest = match src.fetch_small(&key, None).await? {
        Fetched::Body { bytes, .. } => {
            let verified = if keys.is_empty() {
                false
            } else {
                let sig = match src.fetch_small(&format!("{key}.minisig"), None).await? {
                    Fetched::Body { bytes, .. } => String::from_utf8_lossy(&bytes).into_owned(),
                    _ => String::new(),
                };
                manifest::verify_signature(&bytes, &sig, &keys).map_err(|r| {
                    Error::Usage(format!("{}: the signature does not hold: {}", src.describe(&key), r.reason))
                })?;
                true
            };
            let m: Manifest = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Usage(format!("{} is not a manifest: {e}", src.describe(&key))))?;
            Some((m, verified))
        }
        _ => None,
    };
    let marks = match &manifest {
        Some((m, _)) => {
            src.list(&rollout::failure_dir(m.sequence), 100_000).await?.into_iter().map(|o| o.rel).collect()
        }
        None => Vec::new(),
    };
    let listed = src.list(rollout::REPORTS, 100_000).await?;
    let fetched: Vec<_> =
        futures_util::stream::iter(listed.into_iter().filter(|o| rollout::report_host(&o.rel).is_some()))
            .map(|o| {
                let src = &src;
                async move { (o.rel.clone(), src.fetch_small(&o.rel, None).await) }
            })
            .buffer_unordered(32)
            .collect()
            .await;
    let mut reports = Vec::new();
    let mut unreadable = Vec::new();
    for (rel, got) in fetched {
        match got.map(|f| match f {
            Fetched::Body { bytes, .. } => serde_json::from_slice::<HostReport>(&bytes).map_err(|e| e.to_string()),
            _ => Err("gone".to_owned()),
        }) {
            Ok(Ok(mut r)) => {
                r.host = rollout::report_host(&rel).unwrap_or_default().to_owned();
                reports.push(r);
            }
            Ok(Err(e)) => unreadable.push(format!("{}: {e}", src.describe(&rel))),
            Err(e) => unreadable.push(crate::base::chain::text(&e)),
        }
    }
    reports.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(summarize(req, src.describe(""), manifest, &reports, &marks, unreadable, SystemTime::now()))
}

/// The fleet's status from the manifest, the reports and the failure marks of the manifest, at `now`.
fn summarize(
    req: &FleetRequest,
    source: String,
    manifest: Option<(Manifest, bool)>,
    reports: &[HostReport],
    marks: &[String],
    unreadable: Vec<String>,
    now: SystemTime,
) -> FleetStatus {
    let mut s = FleetStatus {
        app: req.app.clone(),
        channel: req.channel.clone(),
        source: source.trim_end_matches('/').to_owned(),
        version: None,
        sequence: None,
        published_at: None,
        verified: false,
        waves: Vec::new(),
        wave: None,
        next_wave: None,
        halt_after: None,
        halted: false,
        halted_reason: None,
        failed: 0,
        hosts: reports.len() as u64,
        due: 0,
        on_version: 0,
        stale: Vec::new(),
        running: BTreeMap::new(),
        outcomes: BTreeMap::new(),
        reports: Vec::new(),
        stale_after_s: req.stale_after.as_secs(),
        unreadable,
    };
    let accepted = manifest.as_ref().and_then(|(m, verified)| {
        s.version = Some(m.version.clone());
        s.sequence = Some(m.sequence);
        s.published_at = m.published_at.clone();
        s.verified = *verified;
        s.waves = m.waves.clone();
        s.halt_after = m.halt_after;
        let v = Version::parse(&m.version).ok()?;
        Some((m.accepted(crate::source::origin::Origin::from(source.as_str())).ok()?, v))
    });
    if let Some((a, _)) = &accepted {
        let f = plan::failures(marks.iter().map(String::as_str), a.sequence, Some(reports.len() as u64));
        s.failed = f.failed;
        s.halted_reason = plan::halted(a.halt_after, f);
        s.halted = s.halted_reason.is_some();
        // The wave in force, as a host of seed 0 (covered by every wave) sees it; the next wave to start.
        let (WaveDecision::Due { wave } | WaveDecision::NotYet { in_force: wave, .. }) = plan::wave(a, 0, now);
        s.wave = wave;
        if let (Some(p), false) =
            (a.published_at.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t).ok()), a.waves.is_empty())
        {
            s.next_wave = a.waves.iter().find(|w| p + Duration::from_secs(w.after) > now).map(|w| NextWave {
                wave: *w,
                at: humantime::format_rfc3339_seconds(p + Duration::from_secs(w.after)).to_string(),
            });
        }
    }
    for r in reports {
        let seed = accepted.as_ref().map(|(_, v)| plan::seed(&r.host, &req.app, v));
        let due = match (&accepted, seed) {
            (Some((a, _)), Some(seed)) => matches!(plan::wave(a, seed, now), WaveDecision::Due { .. }),
            _ => false,
        };
        let at = humantime::parse_rfc3339_weak(r.reported_at.as_deref().unwrap_or(&r.time)).ok();
        let stale = at.is_none_or(|t| now.duration_since(t).is_ok_and(|age| age > req.stale_after));
        let current = r.current.clone();
        *s.running.entry(current.clone().unwrap_or_else(|| "nothing".to_owned())).or_default() += 1;
        if s.version.as_deref() == Some(r.version.as_str()) {
            *s.outcomes.entry(r.outcome.as_str().to_owned()).or_default() += 1;
        }
        if current.is_some() && current == s.version {
            s.on_version += 1;
        }
        s.due += u64::from(due);
        if stale {
            s.stale.push(r.host.clone());
        }
        s.reports.push(HostLine {
            host: r.host.clone(),
            current,
            version: r.version.clone(),
            outcome: r.outcome.as_str().to_owned(),
            time: r.time.clone(),
            reported_at: r.reported_at.clone(),
            seed,
            due,
            stale,
            agent_version: r.agent_version.clone(),
        });
    }
    s
}

impl FleetStatus {
    /// One screen: the release and its rollout, the counts, then only the hosts that need a look.
    pub fn human(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        let Some(v) = &self.version else {
            writeln!(w, "{} on channel {}: no manifest is published at {}", self.app, self.channel, self.source)?;
            return writeln!(w, "{} host(s) report", self.hosts);
        };
        writeln!(
            w,
            "{} on channel {}: {v} (sequence {}{}){}",
            self.app,
            self.channel,
            self.sequence.unwrap_or(0),
            self.published_at.as_deref().map_or(String::new(), |t| format!(", published {t}")),
            if self.verified { "" } else { " [signature not checked: give --trusted-key]" }
        )?;
        if !self.waves.is_empty() {
            let waves: Vec<String> = self.waves.iter().map(ToString::to_string).collect();
            writeln!(
                w,
                "waves: {}; in force: {}; next: {}",
                waves.join(" "),
                self.wave.map_or("none yet".to_owned(), |x| x.to_string()),
                self.next_wave.as_ref().map_or("none".to_owned(), |n| format!("{} at {}", n.wave, n.at))
            )?;
        }
        match (&self.halt_after, &self.halted_reason) {
            (_, Some(why)) => writeln!(w, "HALTED: {why}")?,
            (Some(t), None) => writeln!(
                w,
                "halt_after {t}: {} of {} reporting host(s) failed {v}: not halted",
                self.failed, self.hosts
            )?,
            (None, None) => writeln!(w, "no halt_after: {} host(s) failed {v}", self.failed)?,
        }
        let join = |m: &BTreeMap<String, u64>| m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
        writeln!(
            w,
            "hosts: {} reporting, {} due now, {} on {v}, {} stale (no report for {})",
            self.hosts,
            self.due,
            self.on_version,
            self.stale.len(),
            humantime::format_duration(Duration::from_secs(self.stale_after_s))
        )?;
        writeln!(w, "running: {}", join(&self.running))?;
        if !self.outcomes.is_empty() {
            writeln!(w, "about {v}: {}", join(&self.outcomes))?;
        }
        let look: Vec<&HostLine> = self
            .reports
            .iter()
            .filter(|h| {
                h.stale || matches!(h.outcome.as_str(), "rolled-back" | "rollback-failed" | "failed" | "refused")
            })
            .collect();
        if !look.is_empty() {
            writeln!(w, "{:<24} {:<14} {:<16} {:<14} REPORTED", "HOST", "RUNS", "OUTCOME", "ABOUT")?;
            for h in look.iter().take(15) {
                writeln!(
                    w,
                    "{:<24} {:<14} {:<16} {:<14} {}{}",
                    h.host,
                    h.current.as_deref().unwrap_or("nothing"),
                    h.outcome,
                    h.version,
                    h.time,
                    if h.stale { " (stale)" } else { "" }
                )?;
            }
            if look.len() > 15 {
                writeln!(w, "... and {} more (--json has every host)", look.len() - 15)?;
            }
        }
        for u in &self.unreadable {
            writeln!(w, "unreadable report: {u}")?;
        }
        Ok(())
    }
}
