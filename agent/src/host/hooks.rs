//! Deploy hooks: `before_activate` (in the new release, before the switch), `after_activate` (after the restart,
//! before the checks) and `after_rollback`. A hook is a configured command, or an executable shipped in the
//! archive as `.switchback/hooks/NAME` (as trusted as the archive itself: it was verified). Each runs in the
//! release directory with a timeout and `SWITCHBACK_*` variables; its output goes to the log and its last lines
//! into history.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::app::App;
pub use crate::config::{shipped, Hook};
use crate::host::command;

/// Why a hook stopped the operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HookFailure {
    /// Not run: it names a program of the release that is not what was verified.
    #[error("hook {} ({argv}) not run: {why}", hook.name())]
    NotRun { hook: Hook, argv: String, why: String },
    /// It ran and failed (its exit status, a timeout, or the runner's error), with its output's last lines.
    #[error("hook {} ({argv}) failed: {why}", hook.name())]
    Failed { hook: Hook, argv: String, why: String, tail: Vec<String> },
}

impl HookFailure {
    /// The last lines of its output (none when it did not run).
    pub fn take_tail(&mut self) -> Vec<String> {
        match self {
            HookFailure::NotRun { .. } => Vec::new(),
            HookFailure::Failed { tail, .. } => std::mem::take(tail),
        }
    }
}

/// The outcome of a hook that ran.
#[derive(Debug)]
pub struct HookRun {
    pub summary: String,
    pub tail: Vec<String>,
}

/// Runs the hook if one is configured or shipped. `Ok(None)`: there is none. `Err`: it failed (with its output).
pub fn run(
    app: &App,
    hook: Hook,
    version: &str,
    previous: Option<&str>,
    release_dir: &Path,
) -> Result<Option<HookRun>, HookFailure> {
    let configured = match hook {
        Hook::BeforeActivate => &app.cfg.hooks.before_activate,
        Hook::AfterActivate => &app.cfg.hooks.after_activate,
        Hook::AfterRollback => &app.cfg.hooks.after_rollback,
    };
    let argv = match configured {
        Some(argv) => argv.clone(),
        None if !app.cfg.hooks.from_archive => return Ok(None),
        None => {
            let shipped = release_dir.join(shipped(hook));
            match std::fs::symlink_metadata(&shipped) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => vec![shipped.display().to_string()],
                _ => return Ok(None),
            }
        }
    };
    if let Err(e) = crate::app::verify::check_exec(app, version, &argv, release_dir) {
        return Err(HookFailure::NotRun { hook, argv: argv.join(" "), why: format!("{e:#}") });
    }
    let mut env = app.hook_env(version, previous, release_dir);
    env.push(("SWITCHBACK_HOOK".to_owned(), hook.name().to_owned()));
    match command::run(&argv, release_dir, &env, app.cfg.hooks.timeout, &app.state_dir, app.run_as) {
        Ok(done) if done.success => {
            Ok(Some(HookRun { summary: format!("{} {}", hook.name(), done.status), tail: done.tail }))
        }
        Ok(done) => Err(HookFailure::Failed { hook, argv: argv.join(" "), why: done.status, tail: done.tail }),
        Err(e) => Err(HookFailure::Failed { hook, argv: argv.join(" "), why: format!("{e:#}"), tail: Vec::new() }),
    }
}

/// Runs a hook inside an operation: its summary goes to the timeline and its output's last lines into the history
/// event (taken out of the failure).
pub fn run_in(
    app: &App,
    hook: Hook,
    version: &str,
    previous: Option<&str>,
    release_dir: &Path,
    tl: &mut crate::base::timeline::Timeline,
    ev: &mut crate::statedir::history::Event,
) -> Result<(), HookFailure> {
    match run(app, hook, version, previous, release_dir) {
        Ok(Some(done)) => {
            tl.record("hook", 0, Some(done.summary));
            ev.output.extend(done.tail);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(mut failure) => {
            ev.output.extend(failure.take_tail());
            Err(failure)
        }
    }
}
