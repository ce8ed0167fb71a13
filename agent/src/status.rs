//! What `status`, `releases` and `check` report. Reading only: no lock, no reconcile, so `status` answers even
//! while a deploy holds the lock (the state file is replaced atomically, so it is never seen half-written).

use std::path::PathBuf;

use serde::Serialize;

use crate::app::App;
use crate::health::{self, CheckResult};
use crate::state::{HealthSummary, InFlight, Pin};

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
    pub channel: Option<crate::manifest::Accepted>,
    /// What the running daemon is doing for this app, and when it last polled; `null` when no daemon runs.
    pub daemon: Option<crate::daemon::DaemonInfo>,
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
}

pub fn app_status(app: &App) -> anyhow::Result<AppStatus> {
    let state = app.load_state()?;
    let current = app.store.current()?;
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
        in_flight: state.in_flight,
        degraded: state.degraded,
        checked: !app.cfg.checks.is_empty(),
        last_health: state.last_health,
        releases,
        channel: state.channel,
        daemon: crate::daemon::info(app),
    })
}

pub fn print_human(s: &AppStatus, w: &mut impl std::io::Write) -> std::io::Result<()> {
    let health = match (&s.last_health, s.checked) {
        (_, false) => "unchecked (no health checks configured)".to_owned(),
        (Some(h), true) => format!("{} ({}, {})", if h.healthy { "healthy" } else { "UNHEALTHY" }, h.detail, h.at),
        (None, true) => "not checked yet".to_owned(),
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
            "  in flight  {:?} {} at step {:?} (pid {}, since {})",
            f.op, f.version, f.step, f.pid, f.started_at
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
            s.releases.iter().map(|r| r.version.clone()).collect::<Vec<_>>().join(", ")
        }
    )
}

pub fn print_releases(s: &AppStatus, w: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(w, "{:<20} {:<8} {:<18} SHA256", "VERSION", "", "UNPACKED")?;
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
            "{:<20} {:<8} {:<18} {}",
            r.version,
            flags.join(","),
            r.unpacked_at.as_deref().unwrap_or("-"),
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
