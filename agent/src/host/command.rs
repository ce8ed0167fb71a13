//! Running external commands (restart commands, hooks, exec checks) with a timeout. Output goes to a temporary
//! file, not a pipe: a restart command that leaves a daemon behind must not make us wait for the daemon's end.
//! On timeout the whole process group is killed.
//!
//! While a command runs, `STATE_DIR/APP/running-command-AGENTPID.json` names it (its pid and start time, its
//! argv, and the agent's start time; one file per agent process, so a read-only `check` running beside a
//! deploy does not overwrite the deploy's). If the agent is killed meanwhile, the command would run on in its own
//! process group and overlap the next restart or hook; [`kill_leftovers`] (called by reconcile, under the app's
//! lock) kills that group once the agent is gone, after making sure by the start times that neither pid was
//! reused.

use std::io::{Read, Seek};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::base::owner::Owner;

const RUNNING_PREFIX: &str = "running-command-";

/// The command in progress, as `running-command-AGENTPID.json` records it.
#[derive(Debug, Serialize, Deserialize)]
struct Running {
    pid: i32,
    /// Field 22 of /proc/PID/stat (clock ticks after boot): with the pid, it names one process for good.
    start_time: u64,
    argv: Vec<String>,
    /// The start time of the agent that started it (its pid is in the file's name).
    by_start_time: u64,
}

#[derive(Debug)]
pub struct Finished {
    pub success: bool,
    pub status: String,
    pub tail: Vec<String>,
}

/// Runs `argv` in `cwd` with extra `env`, waiting at most `timeout`; `state_dir` is the app's, where the running
/// command is recorded. A relative program path with a slash is taken relative to `cwd`. With `user`, the command
/// runs as that user and group, with no supplementary groups.
///
/// The command gets a fixed environment, never the agent's own (which may hold the bucket's credentials): `PATH`
/// (the agent's, or the usual system one), `LANG`, `LC_ALL` and `TZ` when set, `HOME`, `USER` and `LOGNAME` of the
/// user it runs as, and `env`.
pub fn run(
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
    timeout: Duration,
    state_dir: &Path,
    user: Option<Owner>,
) -> anyhow::Result<Finished> {
    run_at(argv, cwd, env, timeout, state_dir, user, None)
}

/// The usual system `PATH`, when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Like [`run`]; `point` names the crash point reached once the command is running (see [`crate::base::crashpoint`]).
pub fn run_at(
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
    timeout: Duration,
    state_dir: &Path,
    user: Option<Owner>,
    point: Option<crate::base::crashpoint::Point>,
) -> anyhow::Result<Finished> {
    anyhow::ensure!(!argv.is_empty(), "empty command");
    let program =
        if argv[0].contains('/') && !argv[0].starts_with('/') { cwd.join(&argv[0]) } else { argv[0].clone().into() };
    let mut out = tempfile::tempfile()?;
    let start = Instant::now();
    let mut cmd = Command::new(&program);
    cmd.args(&argv[1..])
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()));
    for k in ["LANG", "LC_ALL", "TZ"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    let uid = user.map_or_else(rustix::process::geteuid, |u| u.uid);
    let account = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid.as_raw())).ok().flatten();
    let name = account.as_ref().map_or_else(|| uid.as_raw().to_string(), |a| a.name.clone());
    cmd.env("HOME", account.as_ref().map_or_else(|| "/".into(), |a| a.dir.clone()))
        .env("USER", &name)
        .env("LOGNAME", &name)
        .envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(u) = user {
        // std drops the supplementary groups (setgroups(0)) before setuid when a uid is given.
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    }
    let mut child =
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out.try_clone()?).process_group(0).spawn().map_err(
            |e| {
                let who = user.map(|_| format!(" as {name}")).unwrap_or_default();
                anyhow::anyhow!("cannot start {}{who}: {e}", program.display())
            },
        )?;
    let me = std::process::id() as i32;
    let record = state_dir.join(format!("{RUNNING_PREFIX}{me}.json"));
    let running = Running {
        pid: child.id() as i32,
        start_time: start_time(child.id() as i32),
        argv: argv.to_vec(),
        by_start_time: start_time(me),
    };
    if let Err(e) = write_running(&record, &running) {
        tracing::warn!("cannot record the running command in {}: {e}", record.display());
    }
    if let Some(point) = point {
        crate::base::crashpoint::hit(point);
    }
    // Checked after 1 ms, then twice as long each time up to 20 ms: a command that is done at once (`true`, a
    // systemctl that has nothing to wait for) costs no 20 ms nap.
    let mut nap = Duration::from_millis(1);
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
        crate::base::progress::beat();
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    };
    let _ = std::fs::remove_file(&record);
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

/// Replaces the record without syncing it: it only matters while this process lives, and power loss ends the
/// command too.
fn write_running(path: &Path, running: &Running) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let written = crate::base::fsutil::write_new(&tmp, &serde_json::to_vec(running)?, 0o600)
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The fields of /proc/PID/stat after the name (from field 3, the state, on), or `None` if the process is gone.
/// The name may hold spaces and parentheses, so the fields start after its last `)`.
pub fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect())
}

/// Field 22 of /proc/PID/stat, or 0 if the process is gone.
fn start_time(pid: i32) -> u64 {
    proc_stat(pid).and_then(|f| f.get(19)?.parse().ok()).unwrap_or(0)
}

/// Kills the process group of each command that a killed agent left running in `state_dir`, and forgets the records
/// of agents that are gone. Returns what it killed, for the recovery's history event.
pub fn kill_leftovers(state_dir: &Path) -> Vec<String> {
    let me = std::process::id() as i32;
    let mut notes = Vec::new();
    let Ok(rd) = std::fs::read_dir(state_dir) else { return notes };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // running-command-PID.json, or its temporary copy .json.tmp.
        let Some(by) = name.strip_prefix(RUNNING_PREFIX).and_then(|r| r.split('.').next()?.parse::<i32>().ok()) else {
            continue;
        };
        let running: Option<Running> = std::fs::read(entry.path()).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let agent_alive = match &running {
            Some(r) => r.by_start_time != 0 && start_time(by) == r.by_start_time,
            // Half written, or unreadable: the agent's pid alone must do.
            None => start_time(by) != 0,
        };
        if agent_alive && by != me {
            // Another live agent's command (a `check` run beside this one): not ours to touch.
            continue;
        }
        let _ = std::fs::remove_file(entry.path());
        let Some(r) = running.filter(|r| by != me && r.start_time != 0 && start_time(r.pid) == r.start_time) else {
            continue;
        };
        let Some(pid) = rustix::process::Pid::from_raw(r.pid) else { continue };
        if rustix::process::kill_process_group(pid, rustix::process::Signal::KILL).is_ok() {
            let note = format!("killed `{}` (pid {}), left running by pid {by}", r.argv.join(" "), r.pid);
            tracing::warn!("{note}");
            notes.push(note);
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leftover_command_is_killed_only_once_its_agent_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let spawn = || Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let (mut agent, mut cmd) = (spawn(), spawn());
        let (agent_pid, cmd_pid) = (agent.id() as i32, cmd.id() as i32);
        let record = Running {
            pid: cmd_pid,
            start_time: start_time(cmd_pid),
            argv: vec!["sleep".into(), "30".into()],
            by_start_time: start_time(agent_pid),
        };
        let path = dir.path().join(format!("{RUNNING_PREFIX}{agent_pid}.json"));
        write_running(&path, &record).unwrap();

        assert_eq!(kill_leftovers(dir.path()), Vec::<String>::new(), "the agent is alive: its command is its own");
        assert!(path.exists() && cmd.try_wait().unwrap().is_none());

        agent.kill().unwrap();
        agent.wait().unwrap();
        let notes = kill_leftovers(dir.path());
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains(&format!("`sleep 30` (pid {cmd_pid}), left running by pid {agent_pid}")),
            "{notes:?}"
        );
        assert!(!path.exists());
        assert!(cmd.wait().unwrap().code().is_none(), "killed by a signal");
    }
}
