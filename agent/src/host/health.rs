//! Health checks and the policy that turns them into a verdict: wait `start_period`, then check every `interval`
//! until `healthy_after` consecutive rounds pass or `deadline` runs out; then keep checking through the `bake`
//! window, where one failed round is still a failure. With no checks configured the restart's own success
//! decides (and `status` says the app is unchecked).

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::app::App;
use crate::base::activity::Activity;
use crate::base::progress::{self, Interrupt};
use crate::base::verdict::Verdict;
use crate::config::CheckConfig;
use crate::error::Error;
use crate::host::command;
use crate::host::service::{self, Restarted};

/// The result of one check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub check: String,
    pub ok: bool,
    pub detail: String,
    pub ms: u64,
}

pub fn describe(c: &CheckConfig) -> String {
    if let Some(u) = &c.http {
        format!("http {u}")
    } else if let Some(a) = &c.tcp {
        format!("tcp {a}")
    } else if let Some(argv) = &c.exec {
        format!("exec {}", argv.join(" "))
    } else {
        "unit_active".to_owned()
    }
}

/// Runs one check now.
pub fn run_check(app: &App, c: &CheckConfig, version: &str, release_dir: &Path) -> CheckResult {
    let start = Instant::now();
    let outcome = if let Some(url) = &c.http {
        http(url, c.expect_status.unwrap_or(200), c.body_contains.as_deref(), c.timeout)
    } else if let Some(addr) = &c.tcp {
        tcp(addr, c.timeout)
    } else if let Some(argv) = &c.exec {
        let env = app.hook_env(version, None, release_dir);
        match crate::app::verify::check_exec(app, version, argv, release_dir)
            .and_then(|()| command::run(argv, release_dir, &env, c.timeout, &app.state_dir, app.run_as))
        {
            Ok(done) if done.success => Ok("exit 0".to_owned()),
            Ok(done) => {
                Err(format!("{} ({})", done.status, done.tail.last().map(String::as_str).unwrap_or("no output")))
            }
            Err(e) => Err(format!("{e:#}")),
        }
    } else {
        let unit = app.cfg.service.as_ref().and_then(|s| s.unit.clone()).unwrap_or_default();
        match service::unit_properties(&unit) {
            Ok(p) => match p.get("ActiveState").map(String::as_str) {
                Some("active") => Ok(format!("{unit} active")),
                other => Err(format!("{unit} is {}", other.unwrap_or("unknown"))),
            },
            Err(e) => Err(e.to_string()),
        }
    };
    let (ok, detail) = match outcome {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    let check = describe(c);
    progress::checked(&check, ok);
    CheckResult { check, ok, detail, ms: start.elapsed().as_millis() as u64 }
}

fn http(url: &str, expect: u16, body_contains: Option<&str>, timeout: Duration) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut resp = agent.get(url).call().map_err(|e| format!("{e}"))?;
    let status = resp.status().as_u16();
    if status != expect {
        return Err(format!("status {status}, expected {expect}"));
    }
    if let Some(needle) = body_contains {
        let mut body = String::new();
        resp.body_mut()
            .as_reader()
            .take(64 << 10)
            .read_to_string(&mut body)
            .map_err(|e| format!("reading body: {e}"))?;
        if !body.contains(needle) {
            return Err(format!("status {status} but the body lacks `{needle}`"));
        }
    }
    Ok(format!("status {status}"))
}

fn tcp(addr: &str, timeout: Duration) -> Result<String, String> {
    let addrs: Vec<_> = addr.to_socket_addrs().map_err(|e| format!("resolving {addr}: {e}"))?.collect();
    let mut last = format!("{addr} resolved to nothing");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Ok(format!("connected to {a}")),
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err(last)
}

/// One round: every check, plus the unit's own state.
fn round(app: &App, version: &str, release_dir: &Path, restarted: &Restarted) -> Result<Vec<CheckResult>, String> {
    service::unit_still_up(restarted).map_err(|e| e.to_string())?;
    let results: Vec<CheckResult> = app.cfg.checks.iter().map(|c| run_check(app, c, version, release_dir)).collect();
    match results.iter().find(|r| !r.ok) {
        Some(bad) => Err(format!("{}: {}", bad.check, bad.detail)),
        None => Ok(results),
    }
}

/// Applies the app's health policy: [`Verdict::Healthy`] with a one-line summary, or [`Verdict::Unhealthy`] with
/// the reason for rolling back (an operator's cancel request is one). The error is the daemon's shutdown: the
/// release stays live and unproven, and the journal makes the next start verify it again.
///
/// `bake` is whether the bake window applies: it does for a deploy; a rollback goes back to a release that was
/// proven before, and is done once it passes `healthy_after` rounds (getting back to safety fast is its point).
pub fn verify(
    app: &App,
    version: &str,
    release_dir: &Path,
    restarted: &Restarted,
    bake: bool,
) -> Result<Verdict, Error> {
    let policy = &app.cfg.health;
    let bake_for = if bake { policy.bake } else { Duration::ZERO };
    if app.cfg.checks.is_empty() {
        // Unchecked: only the restart (and, for a unit, its state right after) decides.
        return Ok(match service::unit_still_up(restarted) {
            Ok(()) => Verdict::Healthy("unchecked: the restart succeeded".to_owned()),
            Err(e) => Verdict::Unhealthy(e.to_string()),
        });
    }
    let pause = |d: Duration, stage: &str| -> Result<Result<(), String>, Error> {
        match progress::sleep(d) {
            Ok(()) => Ok(Ok(())),
            Err(Interrupt::Cancel(why)) => Ok(Err(format!("cancelled during {stage} by an operator's request: {why}"))),
            Err(Interrupt::Shutdown) => Err(Error::Interrupted { app: app.name.clone(), step: stage.to_owned() }),
        }
    };
    let stage = |s: String| progress::set_activity(Activity::Deploying { version: version.to_owned(), stage: Some(s) });
    stage("starting".to_owned());
    let start = Instant::now();
    if let Err(e) = pause(policy.start_period, "the checks' start period")? {
        return Ok(Verdict::Unhealthy(e));
    }
    let deadline = start + policy.start_period + policy.deadline;
    let mut passes = 0u32;
    let mut last_failure = String::from("no round completed");
    loop {
        match round(app, version, release_dir, restarted) {
            Ok(_) => {
                passes += 1;
                stage(format!("checks {passes}/{}", policy.healthy_after));
                if passes >= policy.healthy_after {
                    break;
                }
            }
            Err(e) => {
                passes = 0;
                stage(format!("checks 0/{}: {e}", policy.healthy_after));
                last_failure = e;
            }
        }
        crate::base::crashpoint::hit(crate::base::crashpoint::Point::DuringChecks);
        if Instant::now() + policy.interval > deadline {
            return Ok(Verdict::Unhealthy(format!(
                "not healthy within {} ({} consecutive passes needed); last failure: {last_failure}",
                humantime::format_duration(policy.deadline),
                policy.healthy_after
            )));
        }
        if let Err(e) = pause(policy.interval, "the checks")? {
            return Ok(Verdict::Unhealthy(e));
        }
    }
    let healthy_at = start.elapsed();
    let bake_end = Instant::now() + bake_for;
    while Instant::now() < bake_end {
        crate::base::crashpoint::hit(crate::base::crashpoint::Point::DuringBake);
        stage(format!("baking, {} left", fmt_secs(bake_end.saturating_duration_since(Instant::now()))));
        if let Err(e) =
            pause(policy.interval.min(bake_end.saturating_duration_since(Instant::now())), "the bake window")?
        {
            return Ok(Verdict::Unhealthy(e));
        }
        if let Err(e) = round(app, version, release_dir, restarted) {
            return Ok(Verdict::Unhealthy(format!(
                "failed during the bake window, {} after turning healthy: {e}",
                fmt_secs(start.elapsed().saturating_sub(healthy_at))
            )));
        }
    }
    let mut summary = format!("healthy after {} ({} passes)", fmt_secs(healthy_at), policy.healthy_after);
    if !bake_for.is_zero() {
        summary.push_str(&format!(", baked {}", humantime::format_duration(bake_for)));
    }
    Ok(Verdict::Healthy(summary))
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
