//! Restarting the app's service after a switch: a systemd unit (restart, or reload-or-restart, with systemctl,
//! then its `ActiveState`, `NRestarts` and `MainPID` are read back) or a configured command on hosts without
//! systemd.

use std::path::Path;

use crate::app::App;
use crate::host::command;

/// Why the service did not come up (or stay up) on a release: the reason a deploy goes back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceFailure {
    /// The configured restart command names a program of the release that is not what was verified.
    #[error("restart command not run: {0}")]
    NotRun(String),
    /// The restart command could not be run (or timed out).
    #[error("restart command: {0}")]
    CommandError(String),
    /// The restart command ran and failed: its exit status and last line of output.
    #[error("restart command {status} ({last})")]
    CommandFailed { status: String, last: String },
    /// `systemctl` itself failed (`what` is the command line).
    #[error("{what}: {why}")]
    Systemctl { what: String, why: String },
    /// The unit is not running right after the restart or reload.
    #[error("unit {unit} is {state} after {verb}")]
    NotActiveAfter { unit: String, state: String, verb: &'static str },
    /// The unit stopped or failed during the checks.
    #[error("unit {unit} is {state}")]
    Down { unit: String, state: String },
    /// The unit restarted by itself since the deploy.
    #[error("unit {unit} restarted {restarts} time(s) since the deploy (crash loop)")]
    CrashLoop { unit: String, restarts: u64 },
}

/// What a restart left behind, used by the health loop to detect a crash loop.
#[derive(Debug, Default, Clone)]
pub struct Restarted {
    pub unit: Option<String>,
    pub n_restarts: Option<u64>,
    pub detail: String,
}

/// Restarts the service so it runs `release_dir`.
pub fn restart(
    app: &App,
    version: &str,
    previous: Option<&str>,
    release_dir: &Path,
) -> Result<Restarted, ServiceFailure> {
    let Some(svc) = &app.cfg.service else {
        return Ok(Restarted { detail: "no service configured".to_owned(), ..Restarted::default() });
    };
    let env = app.hook_env(version, previous, release_dir);
    if let Some(argv) = &svc.restart {
        // The restart command runs as root: it is the configuration's. What of the release it runs is checked.
        crate::app::verify::check_exec(app, version, argv, release_dir)
            .map_err(|e| ServiceFailure::NotRun(format!("{e:#}")))?;
        let done = command::run_at(
            argv,
            release_dir,
            &env,
            svc.timeout,
            &app.state_dir,
            None,
            Some(crate::base::crashpoint::Point::DuringRestart),
        )
        .map_err(|e| ServiceFailure::CommandError(format!("{e:#}")))?;
        if !done.success {
            return Err(ServiceFailure::CommandFailed {
                status: done.status,
                last: done.tail.last().map_or("no output".to_owned(), String::clone),
            });
        }
        let program = Path::new(&argv[0]).file_name().map_or(argv[0].clone(), |n| n.to_string_lossy().into_owned());
        return Ok(Restarted {
            detail: format!("restart command ({program}) {}", done.status),
            ..Restarted::default()
        });
    }
    let unit = svc.unit.clone().unwrap_or_default();
    // A unit that is not running (the first deploy, or a release that died) cannot be reloaded: it is started.
    let verb = if svc.reload { "reload-or-restart" } else { "restart" };
    let argv = vec!["systemctl".to_owned(), verb.to_owned(), unit.clone()];
    let done = command::run_at(
        &argv,
        release_dir,
        &[],
        svc.timeout,
        &app.state_dir,
        None,
        Some(crate::base::crashpoint::Point::DuringRestart),
    )
    .map_err(|e| ServiceFailure::Systemctl { what: argv.join(" "), why: format!("{e:#}") })?;
    if !done.success {
        return Err(ServiceFailure::Systemctl {
            what: argv.join(" "),
            why: format!("{} ({})", done.status, done.tail.join(" / ")),
        });
    }
    let props = unit_properties(&unit)?;
    let state = props.get("ActiveState").cloned().unwrap_or_default();
    if !matches!(state.as_str(), "active" | "activating" | "reloading") {
        return Err(ServiceFailure::NotActiveAfter { unit, state, verb });
    }
    let mut detail = format!("systemctl {verb} {unit}: {state}");
    if let Some(pid) = props.get("MainPID").and_then(|p| p.parse::<u32>().ok()).filter(|p| *p > 0) {
        if !runs_from(pid, release_dir) {
            detail.push_str(&format!(
                "; WARNING: main process {pid} does not run from {} (old code may still be running)",
                release_dir.display()
            ));
            tracing::warn!("{}: {detail}", app.name);
        }
    }
    Ok(Restarted { unit: Some(unit), n_restarts: props.get("NRestarts").and_then(|n| n.parse().ok()), detail })
}

/// `systemctl show` properties of a unit.
pub fn unit_properties(unit: &str) -> Result<std::collections::HashMap<String, String>, ServiceFailure> {
    let failed = |why: String| ServiceFailure::Systemctl { what: format!("systemctl show {unit}"), why };
    let argv: Vec<String> = ["systemctl", "show", "-p", "ActiveState,SubState,NRestarts,MainPID", unit]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = std::process::Command::new(&argv[0]).args(&argv[1..]).output().map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(out.status.to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// Whether the process's working directory, executable or one of its arguments (an interpreter's script,
/// `--config=PATH`) resolves into `release_dir`.
fn runs_from(pid: u32, release_dir: &Path) -> bool {
    let Ok(release) = release_dir.canonicalize() else { return true };
    let proc = Path::new("/proc").join(pid.to_string());
    if ["cwd", "exe"].iter().any(|what| std::fs::read_link(proc.join(what)).is_ok_and(|p| p.starts_with(&release))) {
        return true;
    }
    let Ok(cmdline) = std::fs::read(proc.join("cmdline")) else { return false };
    if cmdline.is_empty() {
        // Still inside execve (a Type=simple unit's restart returns right after the fork): no verdict yet.
        return true;
    }
    cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).any(|arg| {
        let arg = String::from_utf8_lossy(arg);
        let path = arg.rsplit_once('=').map_or(&*arg, |(_, p)| p);
        // A relative argument is relative to the process's working directory, which is not ours.
        path.starts_with('/') && Path::new(path).canonicalize().is_ok_and(|p| p.starts_with(&release))
    })
}

/// Re-reads the unit during checks: a failed unit or a growing restart counter is a failure even if a probe answers.
pub fn unit_still_up(r: &Restarted) -> Result<(), ServiceFailure> {
    let Some(unit) = &r.unit else { return Ok(()) };
    let props = unit_properties(unit)?;
    let state = props.get("ActiveState").map(String::as_str).unwrap_or("");
    if matches!(state, "failed" | "inactive") {
        return Err(ServiceFailure::Down { unit: unit.clone(), state: state.to_owned() });
    }
    let now: Option<u64> = props.get("NRestarts").and_then(|n| n.parse().ok());
    if let (Some(before), Some(now)) = (r.n_restarts, now) {
        if now > before {
            return Err(ServiceFailure::CrashLoop { unit: unit.clone(), restarts: now - before });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::runs_from;

    #[test]
    fn a_process_runs_from_the_release_its_script_argument_is_in() {
        let tmp = tempfile::tempdir().unwrap();
        let (new, old, elsewhere) =
            (tmp.path().join("releases/2"), tmp.path().join("releases/1"), tmp.path().join("x"));
        for d in [&new, &old, &elsewhere] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(new.join("app.sh"), "").unwrap();
        std::os::unix::fs::symlink(&new, tmp.path().join("current")).unwrap();
        // An interpreter outside the release, started elsewhere, given a script through the `current` link (the
        // shell waits for sleep instead of exec-ing it, so its arguments stay in /proc/PID/cmdline).
        let script = tmp.path().join("current/app.sh");
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; exit 0", "app"])
            .arg(&script)
            .current_dir(&elsewhere)
            .spawn()
            .unwrap();
        let mut config = std::process::Command::new("sh")
            .args(["-c", "sleep 30; exit 0", "app"])
            .arg(format!("--config={}", script.display()))
            .current_dir(&elsewhere)
            .spawn()
            .unwrap();
        // Right after spawn the child may still be inside execve, with an empty command line for a moment.
        for pid in [child.id(), config.id()] {
            let started = std::time::Instant::now();
            while std::fs::read(format!("/proc/{pid}/cmdline")).map_or(true, |c| c.is_empty()) {
                assert!(started.elapsed() < std::time::Duration::from_secs(5), "{pid} never showed its arguments");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        let verdicts = (runs_from(child.id(), &new), runs_from(child.id(), &old), runs_from(config.id(), &new));
        for c in [&mut child, &mut config] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        assert_eq!(verdicts, (true, false, true));
    }
}
