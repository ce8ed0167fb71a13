//! One managed app: its configuration, release store and state directory. Everything that changes an app goes
//! through [`App::lock`] first, then the engine's reconcile.

pub mod verify;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::base::owner::Owner;
use crate::base::version::Version;
use crate::config::{AppConfig, Config};
use crate::statedir::history::{self, Event};
use crate::statedir::lock::AppLock;
use crate::statedir::state::AppState;
use crate::store::layout::Store;

#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub cfg: AppConfig,
    pub store: Store,
    pub state_dir: PathBuf,
    /// Whom hooks and exec checks run as; `None` is this process's own user (root on a server).
    pub run_as: Option<Owner>,
    /// The group that may read `status` and `history` (the state files); `None`: root's alone.
    pub read_group: Option<rustix::fs::Gid>,
    /// `trusted_keys`, parsed once: the keys a channel manifest must be signed with.
    pub trusted_keys: Vec<minisign_verify::PublicKey>,
    /// This host's id in a fleet (`[agent] host_id`, else the machine id).
    pub host_id: Option<String>,
}

impl App {
    pub fn from_config(config: &Config, name: &str) -> anyhow::Result<App> {
        let cfg = config.app(name)?.clone();
        // Validated when the configuration was loaded; a user removed since then is still an error, not ignored.
        let invalid = |key: &str, message: String| crate::error::Error::Usage(format!("apps.{name}.{key}: {message}"));
        let owner = cfg.owner.as_deref().map(Owner::parse).transpose().map_err(|e| invalid("owner", e))?;
        let run_as = match cfg.run_as.as_deref() {
            Some(spec) => Some(Owner::parse(spec).map_err(|e| invalid("run_as", e))?),
            None => owner,
        }
        .filter(|o| o.uid != rustix::process::geteuid());
        let read_group = config
            .agent
            .read_group
            .as_deref()
            .map(crate::base::trust::group)
            .transpose()
            .map_err(|e| invalid("read_group", e))?;
        let trusted_keys =
            crate::config::parse_keys(&cfg.trusted_keys).map_err(|e| invalid("trusted_keys", e.to_string()))?;
        Ok(App {
            trusted_keys,
            name: name.to_owned(),
            store: Store::new(&cfg.root, owner),
            run_as,
            read_group,
            cfg,
            state_dir: config.agent.state_dir.join(name),
            host_id: config.agent.host_id(),
        })
    }

    pub fn state_path(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    /// Where artifacts are downloaded to, and where an artifact others could write is copied before it is read.
    pub fn downloads_dir(&self) -> PathBuf {
        self.state_dir.join("downloads")
    }

    pub fn history_path(&self) -> PathBuf {
        self.state_dir.join("history.jsonl")
    }

    /// Creates `STATE_DIR` and `STATE_DIR/APP` where missing and gives them their modes: root's alone, or also
    /// readable by the read group. As root, the directories above must be root's alone too.
    pub fn prepare_state_dir(&self) -> anyhow::Result<()> {
        let top = self.state_dir.parent().context("the state directory has a parent")?;
        if crate::base::trust::running_as_root() {
            if let Some(above) = top.parent() {
                std::fs::create_dir_all(above).with_context(|| format!("creating {}", above.display()))?;
                crate::base::trust::only_root_can_change(above, "state directory").map_err(anyhow::Error::msg)?;
            }
        }
        crate::base::trust::private_dir(top, self.read_group)?;
        crate::base::trust::private_dir(&self.state_dir, self.read_group)
    }

    /// Creates the state directory and takes the app's lock for `what` (named to whoever finds it busy).
    pub fn lock(&self, wait: Duration, what: &str) -> anyhow::Result<AppLock> {
        self.prepare_state_dir()?;
        AppLock::acquire(&self.name, &self.state_dir.join("lock"), wait, what, None)
    }

    /// Like [`App::lock`], for an operator's command that must take effect promptly: when the daemon holds the
    /// lock, it is asked to cancel its step (`STATE_DIR/APP/cancel`), and the command waits long enough for the
    /// daemon to reach safety (back on the last good release, if it had switched: that way back is never
    /// cancelled). Who holds the lock is read from the lock file itself, which its holder writes the moment it
    /// takes it, so a command issued right after the daemon's switch still cancels it.
    ///
    /// `wants` is the version the command brings the app to, if it names one: a daemon deploying exactly that
    /// version is not cancelled, only waited for.
    pub fn lock_preempting(&self, wait: Duration, command: &str, wants: Option<&Version>) -> anyhow::Result<AppLock> {
        let path = self.state_dir.join("lock");
        let version = wants.map(Version::as_str);
        if crate::base::progress::in_worker() {
            self.prepare_state_dir()?;
            return AppLock::acquire(&self.name, &path, wait, command, version);
        }
        self.prepare_state_dir()?;
        if let Ok(lock) = AppLock::acquire(&self.name, &path, Duration::ZERO, command, version) {
            return Ok(lock);
        }
        let Some(daemon) = crate::statedir::lock::holder(&path).filter(|h| h.daemon) else {
            return AppLock::acquire(&self.name, &path, wait, command, version);
        };
        let h = &self.cfg.health;
        let restart = self.cfg.service.as_ref().map_or(Duration::from_secs(90), |s| s.timeout);
        let enough = restart + h.start_period + h.deadline + h.bake + Duration::from_secs(30);
        if wants.is_some() && daemon.version.as_deref() == version {
            crate::base::progress::note!(
                "{}: the daemon (pid {}) is already bringing it to {}; waiting for it",
                self.name,
                daemon.pid,
                version.unwrap_or("")
            );
            return AppLock::acquire(&self.name, &path, wait.max(enough), command, version);
        }
        let cancel = self.state_dir.join(crate::base::progress::CANCEL_FILE);
        let who = crate::statedir::history::Who::me();
        crate::base::fsutil::write_atomic(
            &cancel,
            format!("`switchback {command}` by {} (pid {})\n", who.describe(), who.pid).as_bytes(),
        )
        .with_context(|| format!("writing {}", cancel.display()))?;
        crate::base::progress::note!(
            "{}: the daemon (pid {}) is busy ({}{}); asked it to cancel that, waiting for it",
            self.name,
            daemon.pid,
            daemon.what,
            daemon.version.as_ref().map(|v| format!(" {v}")).unwrap_or_default()
        );
        let lock = AppLock::acquire(&self.name, &path, wait.max(enough), command, version);
        let _ = std::fs::remove_file(&cancel);
        lock
    }

    pub fn load_state(&self) -> anyhow::Result<AppState> {
        AppState::load(&self.state_path())
    }

    /// The state as the one writer of it holds it (under the app's lock).
    pub fn journal(&self) -> anyhow::Result<crate::statedir::journal::Journal> {
        crate::statedir::journal::Journal::load(self.state_path(), self.read_group)
    }

    pub fn record(&self, event: &Event) -> anyhow::Result<()> {
        history::append(&self.history_path(), event, self.read_group)
    }

    /// The event of the command in progress, written before it changes anything and removed once its outcome is
    /// in history: a command killed in between (even right after its final state write) leaves it behind.
    pub fn pending_event_path(&self) -> PathBuf {
        self.state_dir.join("pending-event.json")
    }

    /// Appends the event a killed command left pending, unless it made it into history before the kill, then
    /// removes it. Runs under the lock (reconcile, and before each recorded command). Returns what was recovered.
    pub fn recover_pending_event(&self) -> anyhow::Result<Option<Event>> {
        let path = self.pending_event_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut recovered = None;
        // A file that does not parse was never a complete write (write_atomic renames whole files): nothing to keep.
        if let Ok(mut ev) = serde_json::from_slice::<Event>(&bytes) {
            if !history::recently_recorded(&self.history_path(), &ev)? {
                ev.outcome = history::Outcome::Interrupted;
                let note = format!(
                    "pid {} did not record its outcome (killed, or history could not be written); the state tells where \
                     it left the app",
                    ev.who.pid
                );
                ev.reason = Some(match ev.reason.take() {
                    Some(r) => format!("{r}; {note}"),
                    None => note,
                });
                self.record(&ev)?;
                recovered = Some(ev);
            }
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        crate::base::fsutil::fsync_dir(&self.state_dir)?;
        Ok(recovered)
    }

    pub fn event(&self, op: history::Action) -> Event {
        Event::new(&self.name, op)
    }

    /// Environment given to hooks and exec checks.
    pub fn hook_env(
        &self,
        version: &str,
        previous: Option<&str>,
        release_dir: &std::path::Path,
    ) -> Vec<(String, String)> {
        vec![
            ("SWITCHBACK_APP".to_owned(), self.name.clone()),
            ("SWITCHBACK_VERSION".to_owned(), version.to_owned()),
            ("SWITCHBACK_PREVIOUS_VERSION".to_owned(), previous.unwrap_or("").to_owned()),
            ("SWITCHBACK_RELEASE_DIR".to_owned(), release_dir.display().to_string()),
            ("SWITCHBACK_ROOT".to_owned(), self.store.root().display().to_string()),
        ]
    }
}

impl App {
    /// Runs an operation and appends its history event whatever the result: outcome from the exit code, the
    /// error chain as the reason, the timeline's steps.
    pub fn recorded<T>(
        &self,
        mut ev: Event,
        tl: &mut crate::base::timeline::Timeline,
        f: impl FnOnce(&mut Event, &mut crate::base::timeline::Timeline) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        self.recover_pending_event()?;
        let pending = self.pending_event_path();
        crate::base::fsutil::write_atomic(&pending, &serde_json::to_vec(&ev).context("serializing a history event")?)
            .with_context(|| {
                format!("saving this command's event to {} before it changes anything", pending.display())
            })?;
        crate::base::crashpoint::hit(crate::base::crashpoint::Point::AfterPendingEvent);
        let result = f(&mut ev, tl);
        ev.duration_ms = tl.elapsed_ms();
        ev.steps = tl.steps.clone();
        if let Err(e) = &result {
            let interrupted = e.chain().any(|c| {
                matches!(c.downcast_ref::<crate::error::Error>(), Some(crate::error::Error::Interrupted { .. }))
            });
            let held = e.chain().any(|c| {
                matches!(c.downcast_ref::<crate::error::Error>(), Some(crate::error::Error::EpochHeld { .. }))
            });
            ev.outcome = match crate::error::code_for(e) {
                // Stopped by the daemon's shutdown at a safe point: the journal finishes it at the next start.
                _ if interrupted => history::Outcome::Interrupted,
                _ if held => history::Outcome::Degraded,
                crate::base::exit::ROLLED_BACK => history::Outcome::RolledBack,
                crate::base::exit::ROLLBACK_FAILED => history::Outcome::RollbackFailed,
                crate::base::exit::BUSY => history::Outcome::Busy,
                _ => history::Outcome::Failed,
            };
            let why = format!("{e:#}");
            ev.reason = Some(match ev.reason.take() {
                Some(r) => format!("{r}; {why}"),
                None => why,
            });
        }
        match self.record(&ev) {
            // The pending copy is only removed once the event is in history; left behind, the next command
            // records it (as interrupted) and checks that it is not there twice.
            Ok(()) => {
                crate::base::crashpoint::hit(crate::base::crashpoint::Point::AfterRecord);
                if let Err(e) = std::fs::remove_file(&pending) {
                    tracing::warn!("{}: cannot remove {}: {e}", self.name, pending.display());
                }
            }
            Err(e) => {
                // History must not hide the operation's own result; the failure is still loud.
                tracing::error!("{}: cannot append to history: {e:#}", self.name);
                if result.is_ok() {
                    return Err(e);
                }
            }
        }
        result
    }
}
