//! One managed app: its configuration, release store and state directory. Everything that changes an app goes
//! through [`App::lock`] first, then [`crate::reconcile::reconcile`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::config::{AppConfig, Config};
use crate::history::{self, Event};
use crate::lock::AppLock;
use crate::owner::Owner;
use crate::state::AppState;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub cfg: AppConfig,
    pub store: Store,
    pub state_dir: PathBuf,
}

impl App {
    pub fn from_config(config: &Config, name: &str) -> anyhow::Result<App> {
        let cfg = config.app(name)?.clone();
        Ok(App {
            name: name.to_owned(),
            store: Store::new(&cfg.root),
            cfg,
            state_dir: config.agent.state_dir.join(name),
        })
    }

    pub fn state_path(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    pub fn history_path(&self) -> PathBuf {
        self.state_dir.join("history.jsonl")
    }

    pub fn owner(&self) -> Option<Owner> {
        // Validated when the configuration was loaded.
        self.cfg.owner.as_deref().and_then(|o| Owner::parse(o).ok())
    }

    /// Creates the state directory and takes the app's lock.
    pub fn lock(&self, wait: Duration) -> anyhow::Result<AppLock> {
        std::fs::create_dir_all(&self.state_dir).with_context(|| format!("creating {}", self.state_dir.display()))?;
        AppLock::acquire(&self.name, &self.state_dir.join("lock"), wait)
    }

    pub fn load_state(&self) -> anyhow::Result<AppState> {
        AppState::load(&self.state_path())
    }

    pub fn save_state(&self, state: &AppState) -> anyhow::Result<()> {
        state.save(&self.state_path())
    }

    pub fn record(&self, event: &Event) -> anyhow::Result<()> {
        history::append(&self.history_path(), event)
    }

    pub fn event(&self, op: &str) -> Event {
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
        tl: &mut crate::timeline::Timeline,
        f: impl FnOnce(&mut Event, &mut crate::timeline::Timeline) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let result = f(&mut ev, tl);
        ev.duration_ms = tl.elapsed_ms();
        ev.steps = tl.steps.clone();
        if let Err(e) = &result {
            ev.outcome = match crate::exit::code_for(e) {
                crate::exit::ROLLED_BACK => "rolled-back",
                crate::exit::ROLLBACK_FAILED => "rollback-failed",
                _ => "failed",
            }
            .to_owned();
            let why = format!("{e:#}");
            ev.reason = Some(match ev.reason.take() {
                Some(r) => format!("{r}; {why}"),
                None => why,
            });
        }
        if let Err(e) = self.record(&ev) {
            // History must not hide the operation's own result; the failure is still loud.
            tracing::error!("{}: cannot append to history: {e:#}", self.name);
            if result.is_ok() {
                return Err(e);
            }
        }
        result
    }
}
