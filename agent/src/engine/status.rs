//! What `status`, `releases` and `check` report. Reading only: no lock, no reconcile, so `status` answers even
//! while a deploy holds the lock (the state file is replaced atomically, so it is never seen half-written).

use std::path::PathBuf;

use serde::Serialize;

use crate::app::App;
use crate::base::verdict::HealthSummary;
use crate::base::version::Version;
use crate::host::health::{self, CheckResult};
use crate::statedir::state::{InFlight, Pin};

#[derive(Debug, Serialize)]
pub struct AppStatus {
    pub app: String,
    pub root: PathBuf,
    pub current: Option<String>,
    pub last_good: Option<String>,
    pub bad: Vec<BadRelease>,
    pub pin: Option<Pin>,
    pub in_flight: Option<InFlight>,
    /// Why the app needs a person (a rollback failed), if it does.
    pub degraded: Option<String>,
    /// Whether health checks are configured; an unchecked app is judged by its restart alone.
    pub checked: bool,
    pub last_health: Option<HealthSummary>,
    pub releases: Vec<ReleaseStatus>,
    /// The last channel manifest accepted.
    pub channel: Option<crate::source::manifest::Accepted>,
    /// What the running daemon is doing for this app, and when it last polled; `null` when no daemon runs.
    pub daemon: Option<crate::statedir::info::DaemonInfo>,
    /// The channel manifest URL the app follows (redacted), if it has a source.
    pub source: Option<String>,
    /// The truth about health now: the newest check of the current release (the deploy's, or the daemon's own
    /// while idle), and whether it is of the current release at all.
    pub health: Health,
    /// Whether the in-flight step's process is gone (killed): the next command finishes it.
    pub in_flight_interrupted: bool,
    /// The last refusal the daemon saw, until a newer manifest is accepted.
    pub last_refusal: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Health {
    /// "healthy", "unhealthy", "unchecked" (no checks configured), "unknown" (no check of the current release).
    pub verdict: &'static str,
    pub version: Option<String>,
    pub at: Option<String>,
    pub detail: Option<String>,
    /// Who checked: "deploy" (the checks of a deploy or rollback) or "daemon" (its idle check).
    pub by: Option<&'static str>,
}

/// The newest check of `current` among the deploy's (`state`) and the daemon's idle one.
fn health_now(
    current: Option<&str>,
    checked: bool,
    state: Option<&HealthSummary>,
    daemon: Option<&HealthSummary>,
) -> Health {
    let none = |verdict| Health { verdict, version: None, at: None, detail: None, by: None };
    if !checked {
        return none("unchecked");
    }
    let of_current = |h: &&HealthSummary| h.version.as_ref().map(|v| v.as_str()) == current;
    let newest = [state.filter(of_current).map(|h| (h, "deploy")), daemon.filter(of_current).map(|h| (h, "daemon"))]
        .into_iter()
        .flatten()
        .max_by(|a, b| a.0.at.cmp(&b.0.at));
    match newest {
        Some((h, by)) => Health {
            verdict: if h.healthy { "healthy" } else { "unhealthy" },
            version: h.version.as_ref().map(ToString::to_string),
            at: Some(h.at.clone()),
            detail: Some(h.detail.clone()),
            by: Some(by),
        },
        None => none("unknown"),
    }
}

#[derive(Debug, Serialize)]
pub struct BadRelease {
    pub version: String,
    pub reason: String,
    pub at: String,
}

#[derive(Debug, Serialize)]
pub struct ReleaseStatus {
    pub version: String,
    pub current: bool,
    pub last_good: bool,
    pub good: bool,
    pub bad: bool,
    pub pinned: bool,
    pub sha256: Option<String>,
    pub unpacked_at: Option<String>,
    /// Its epoch, as recorded at unpack (0 when it declared none, or is not recorded).
    pub epoch: u64,
    /// Bytes of its files, and the bytes only it holds (unchanged files are shared between releases): filled by
    /// `releases` (see [`with_usage`]), which reads every release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unique_bytes: Option<u64>,
}

/// Whether process `pid` still runs.
fn alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32).is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

pub fn app_status(app: &App) -> anyhow::Result<AppStatus> {
    let state = app.load_state()?;
    let current = app.store.current()?;
    let current_name = current.as_ref().map(ToString::to_string);
    let daemon = crate::statedir::info::read(&app.state_dir);
    let in_flight = state.in_flight.clone();
    let on_disk = app.store.on_disk()?;
    let releases = on_disk
        .iter()
        .map(|v| {
            let rec = state.releases.get(v);
            ReleaseStatus {
                version: v.to_string(),
                current: current.as_ref() == Some(v),
                last_good: state.last_good.as_ref() == Some(v),
                good: rec.is_some_and(|r| r.good_seq.is_some()),
                bad: state.bad.contains_key(v),
                pinned: state.pin.as_ref().is_some_and(|p| &p.version == v),
                sha256: rec.map(|r| r.sha256.clone()),
                unpacked_at: rec.map(|r| r.unpacked_at.clone()),
                epoch: rec.map_or(0, |r| r.epoch()),
                bytes: None,
                unique_bytes: None,
            }
        })
        .collect();
    Ok(AppStatus {
        app: app.name.clone(),
        root: app.store.root().to_owned(),
        current: current.map(|v| v.to_string()),
        last_good: state.last_good.map(|v| v.to_string()),
        bad: state
            .bad
            .iter()
            .map(|(v, b)| BadRelease { version: v.to_string(), reason: b.reason.clone(), at: b.at.clone() })
            .collect(),
        pin: state.pin,
        degraded: state.degraded,
        checked: !app.cfg.checks.is_empty(),
        last_health: state.last_health.clone(),
        releases,
        channel: state.channel,
        health: health_now(
            current_name.as_deref(),
            !app.cfg.checks.is_empty(),
            state.last_health.as_ref(),
            daemon.as_ref().and_then(|d| d.health.as_ref()),
        ),
        in_flight_interrupted: in_flight.as_ref().is_some_and(|f| !alive(f.pid)),
        in_flight,
        last_refusal: daemon.as_ref().and_then(|d| d.last_refusal.clone()),
        source: app.cfg.source.as_ref().map(|_| crate::engine::pull::channel_url(app)),
        daemon,
    })
}

pub fn print_human(s: &AppStatus, w: &mut impl std::io::Write) -> std::io::Result<()> {
    let h = &s.health;
    let health = match h.verdict {
        "unchecked" => "unchecked (no health checks configured)".to_owned(),
        "unknown" => match &s.last_health {
            Some(l) => format!(
                "unknown: no check of {} yet (the last one was of {} at {}: {})",
                s.current.as_deref().unwrap_or("(none)"),
                l.version.as_ref().map_or("(none)", |v| v.as_str()),
                l.at,
                if l.healthy { "healthy" } else { "unhealthy" }
            ),
            None => "unknown: not checked yet".to_owned(),
        },
        v => format!(
            "{} at {} ({} of {}: {})",
            if v == "healthy" { "healthy" } else { "UNHEALTHY" },
            h.at.as_deref().unwrap_or(""),
            if h.by == Some("daemon") { "the daemon's check" } else { "checked by the deploy" },
            h.version.as_deref().unwrap_or(""),
            h.detail.as_deref().unwrap_or("")
        ),
    };
    writeln!(w, "{}", s.app)?;
    writeln!(w, "  root       {}", s.root.display())?;
    writeln!(w, "  current    {}", s.current.as_deref().unwrap_or("(none)"))?;
    writeln!(w, "  last good  {}", s.last_good.as_deref().unwrap_or("(none)"))?;
    writeln!(w, "  health     {health}")?;
    if let Some(p) = &s.pin {
        writeln!(
            w,
            "  pinned     {} (by {} at {}{})",
            p.version,
            p.by,
            p.at,
            p.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
        )?;
    }
    if let Some(f) = &s.in_flight {
        writeln!(
            w,
            "  in flight  {:?} {} at step {:?} (pid {}, since {}){}",
            f.op,
            f.version,
            f.step,
            f.pid,
            f.started_at,
            if s.in_flight_interrupted {
                "; INTERRUPTED: that process is gone, the next command finishes it"
            } else {
                ""
            }
        )?;
    }
    if let Some(d) = &s.degraded {
        writeln!(w, "  DEGRADED   {d}")?;
    }
    if let Some(c) = &s.channel {
        writeln!(
            w,
            "  channel    wants {} (sequence {}, accepted {}, {} {}, from {})",
            c.version,
            c.sequence,
            c.accepted_at,
            if c.expired(std::time::SystemTime::now()) { "EXPIRED" } else { "expires" },
            c.expires,
            c.from
        )?;
    }
    if let Some(src) = &s.source {
        writeln!(w, "  source     {src}")?;
    }
    if let Some(r) = &s.last_refusal {
        writeln!(w, "  REFUSED    {r}")?;
    }
    match &s.daemon {
        Some(d) => {
            writeln!(w, "  daemon     pid {}: {}", d.pid, d.activity)?;
            if !d.last_poll.is_empty() {
                writeln!(w, "  last poll  {}", d.last_poll)?;
            }
        }
        None => writeln!(w, "  daemon     not running")?,
    }
    for b in &s.bad {
        writeln!(w, "  bad        {}: {} ({})", b.version, b.reason, b.at)?;
    }
    writeln!(
        w,
        "  releases   {}",
        if s.releases.is_empty() {
            "(none)".to_owned()
        } else {
            // Epochs are said once any release declares one.
            let epochs = s.releases.iter().any(|r| r.epoch > 0);
            let name = |r: &ReleaseStatus| {
                if epochs {
                    format!("{} (epoch {})", r.version, r.epoch)
                } else {
                    r.version.clone()
                }
            };
            s.releases.iter().map(name).collect::<Vec<_>>().join(", ")
        }
    )
}

/// Adds to each release of `s` what it costs on disk.
pub fn with_usage(app: &App, s: &mut AppStatus) -> anyhow::Result<()> {
    let dirs = s
        .releases
        .iter()
        .map(|r| Ok(app.store.release_dir(&Version::parse(&r.version)?)))
        .collect::<anyhow::Result<Vec<std::path::PathBuf>>>()?;
    let refs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    for (r, u) in s.releases.iter_mut().zip(crate::store::usage::of(&refs)?) {
        (r.bytes, r.unique_bytes) = (Some(u.bytes), Some(u.unique));
    }
    Ok(())
}

pub fn print_releases(s: &AppStatus, w: &mut impl std::io::Write) -> std::io::Result<()> {
    let size = |n: Option<u64>| n.map_or("-".to_owned(), |n| bytesize::ByteSize(n).display().iec().to_string());
    writeln!(
        w,
        "{:<20} {:<8} {:>5} {:<18} {:>10} {:>10}  SHA256",
        "VERSION", "", "EPOCH", "UNPACKED", "SIZE", "UNIQUE"
    )?;
    for r in &s.releases {
        let mut flags = Vec::new();
        if r.current {
            flags.push("current");
        }
        if r.last_good && !r.current {
            flags.push("good");
        }
        if r.bad {
            flags.push("bad");
        }
        if r.pinned {
            flags.push("pinned");
        }
        writeln!(
            w,
            "{:<20} {:<8} {:>5} {:<18} {:>10} {:>10}  {}",
            r.version,
            flags.join(","),
            r.epoch,
            r.unpacked_at.as_deref().unwrap_or("-"),
            size(r.bytes),
            size(r.unique_bytes),
            r.sha256.as_deref().map(|s| &s[..16.min(s.len())]).unwrap_or("-")
        )?;
    }
    Ok(())
}

/// Runs every check against the current release now.
pub fn check_now(app: &App) -> anyhow::Result<Vec<CheckResult>> {
    let current = app.store.current()?.ok_or_else(|| anyhow::anyhow!("`{}` has no current release", app.name))?;
    let dir = app.store.release_dir(&current);
    Ok(app.cfg.checks.iter().map(|c| health::run_check(app, c, current.as_str(), &dir)).collect())
}
