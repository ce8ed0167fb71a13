//! Running external commands (restart commands, hooks, exec checks) with a timeout. Output goes to a temporary
//! file, not a pipe: a restart command that leaves a daemon behind must not make us wait for the daemon's end.
//! On timeout the whole process group is killed.

use std::io::{Read, Seek};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Finished {
    pub success: bool,
    pub status: String,
    pub tail: Vec<String>,
}

/// Runs `argv` in `cwd` with extra `env`, waiting at most `timeout`. A relative program path with a slash is
/// taken relative to `cwd`.
pub fn run(argv: &[String], cwd: &Path, env: &[(String, String)], timeout: Duration) -> anyhow::Result<Finished> {
    run_at(argv, cwd, env, timeout, None)
}

/// Like [`run`]; `point` names the crash point reached once the command is running (see [`crate::crashpoint`]).
pub fn run_at(
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
    timeout: Duration,
    point: Option<&str>,
) -> anyhow::Result<Finished> {
    anyhow::ensure!(!argv.is_empty(), "empty command");
    let program =
        if argv[0].contains('/') && !argv[0].starts_with('/') { cwd.join(&argv[0]) } else { argv[0].clone().into() };
    let mut out = tempfile::tempfile()?;
    let start = Instant::now();
    let mut child = Command::new(&program)
        .args(&argv[1..])
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        // The daemon's systemd notify socket and watchdog are its own, not the app's.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out.try_clone()?)
        .process_group(0)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", program.display()))?;
    if let Some(point) = point {
        crate::crashpoint::hit(point);
    }
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() >= timeout {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.wait();
            break None;
        }
        crate::progress::beat();
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = String::new();
    out.rewind()?;
    out.take(1 << 20).read_to_string(&mut text).ok();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for l in &lines {
        tracing::info!(target: "switchback::command", "{}: {l}", argv[0]);
    }
    let tail = lines[lines.len().saturating_sub(20)..].to_vec();
    let (success, status) = match status {
        Some(s) if s.success() => (true, "exit 0".to_owned()),
        Some(s) => (false, s.to_string()),
        None => (false, format!("timed out after {}", humantime::format_duration(timeout))),
    };
    Ok(Finished { success, status, tail })
}
