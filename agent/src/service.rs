//! Restarting the app's service after a switch: a systemd unit (restart or reload with systemctl, then its
//! `ActiveState`, `NRestarts` and `MainPID` are read back) or a configured command on hosts without systemd.

use std::path::Path;

use crate::app::App;
use crate::command;

/// What a restart left behind, used by the health loop to detect a crash loop.
#[derive(Debug, Default, Clone)]
pub struct Restarted {
    pub unit: Option<String>,
    pub n_restarts: Option<u64>,
    pub detail: String,
}

/// Restarts the service so it runs `release_dir`. The error is a one-line reason.
pub fn restart(app: &App, version: &str, previous: Option<&str>, release_dir: &Path) -> Result<Restarted, String> {
    let Some(svc) = &app.cfg.service else {
        return Ok(Restarted { detail: "no service configured".to_owned(), ..Restarted::default() });
    };
    let env = app.hook_env(version, previous, release_dir);
    if let Some(argv) = &svc.restart {
        let done = command::run_at(argv, release_dir, &env, svc.timeout, Some("during-restart"))
            .map_err(|e| format!("restart command: {e:#}"))?;
        if !done.success {
            return Err(format!(
                "restart command {} ({})",
                done.status,
                done.tail.last().map(String::as_str).unwrap_or("no output")
            ));
        }
        let program = Path::new(&argv[0]).file_name().map_or(argv[0].clone(), |n| n.to_string_lossy().into_owned());
        return Ok(Restarted {
            detail: format!("restart command ({program}) {}", done.status),
            ..Restarted::default()
        });
    }
    let unit = svc.unit.clone().unwrap_or_default();
    let verb = if svc.reload { "reload" } else { "restart" };
    let argv = vec!["systemctl".to_owned(), verb.to_owned(), unit.clone()];
    let done = command::run_at(&argv, release_dir, &[], svc.timeout, Some("during-restart"))
        .map_err(|e| format!("systemctl {verb} {unit}: {e:#}"))?;
    if !done.success {
        return Err(format!("systemctl {verb} {unit}: {} ({})", done.status, done.tail.join(" / ")));
    }
    let props = unit_properties(&unit)?;
    let state = props.get("ActiveState").cloned().unwrap_or_default();
    if !matches!(state.as_str(), "active" | "activating" | "reloading") {
        return Err(format!("unit {unit} is {state} after {verb}"));
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
pub fn unit_properties(unit: &str) -> Result<std::collections::HashMap<String, String>, String> {
    let argv: Vec<String> = ["systemctl", "show", "-p", "ActiveState,SubState,NRestarts,MainPID", unit]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| format!("systemctl show {unit}: {e}"))?;
    if !out.status.success() {
        return Err(format!("systemctl show {unit}: {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// Whether the process's working directory or executable resolves into `release_dir`.
fn runs_from(pid: u32, release_dir: &Path) -> bool {
    let Ok(release) = release_dir.canonicalize() else { return true };
    ["cwd", "exe"]
        .iter()
        .any(|what| std::fs::read_link(format!("/proc/{pid}/{what}")).is_ok_and(|p| p.starts_with(&release)))
}

/// Re-reads the unit during checks: a failed unit or a growing restart counter is a failure even if a probe answers.
pub fn unit_still_up(r: &Restarted) -> Result<(), String> {
    let Some(unit) = &r.unit else { return Ok(()) };
    let props = unit_properties(unit)?;
    let state = props.get("ActiveState").map(String::as_str).unwrap_or("");
    if matches!(state, "failed" | "inactive") {
        return Err(format!("unit {unit} is {state}"));
    }
    let now: Option<u64> = props.get("NRestarts").and_then(|n| n.parse().ok());
    if let (Some(before), Some(now)) = (r.n_restarts, now) {
        if now > before {
            return Err(format!("unit {unit} restarted {} time(s) since the deploy (crash loop)", now - before));
        }
    }
    Ok(())
}
