//! `switchback daemon`: the agent as a systemd `Type=notify` service. One task per app follows its channel (and
//! its inbox) and deploys what the channel names through the same store, health and rollback path as the CLI.
//!
//! - Start: every app is reconciled from its journal, then `READY=1`.
//! - Work: each app's worker polls its channel manifest every `poll_interval` (±10% jitter) with a conditional
//!   GET; a new, verified manifest is saved as accepted; the artifact is downloaded and verified; the deploy runs
//!   on a blocking thread. A failure of any kind is logged and the worker goes on.
//! - `STATUS=` carries one line per app; `WATCHDOG=1` is sent at half of `WATCHDOG_USEC`, only while no worker is
//!   stuck (busy without a sign of life for longer than the watchdog interval): a hung agent is killed.
//! - SIGHUP reloads the configuration (a bad file is logged and the old one kept). SIGTERM/SIGINT: `STOPPING=1`,
//!   the work in flight is abandoned at its next safe point (the journal lets the next start finish it), with
//!   `EXTEND_TIMEOUT_USEC` while that takes; exit 0.
//! - An operator's command on a busy app writes `STATE_DIR/APP/cancel`; the worker's deploy stops at its next
//!   check (before the switch: nothing changes; after it: back to the last good release).
//!
//! Modules, each using only those after it: `app_loop` (one app's loop), `inbox` (drops), `worker` (converge,
//! idle checks, the repeating-trouble summary), `fleet` (the rollout's gate, and this host's report), `metrics`
//! (the `/metrics` endpoint of `[agent] metrics`); all of them run blocking work through [`blocking`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::{mpsc, watch};

use crate::app::App;
use crate::base::fsutil;
use crate::base::progress::{self, Worker};
use crate::config::Config;
use crate::engine::pull::{self};
use crate::error::Error;
use crate::statedir::info::{DaemonInfo, INFO_FILE};

mod app_loop;
mod fleet;
mod inbox;
mod metrics;
mod worker;

use app_loop::worker_loop;

/// Runs blocking app work on the blocking pool, on behalf of `worker`.
pub(super) async fn blocking<T: Send + 'static>(
    worker: &Arc<Worker>,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let w = worker.clone();
    tokio::task::spawn_blocking(move || progress::enter(&w, f))
        .await
        .map_err(|e| anyhow::anyhow!("worker task: {e}"))?
}

struct Handle {
    cfg: watch::Sender<(App, Duration)>,
    worker: Arc<Worker>,
    join: tokio::task::JoinHandle<()>,
    /// What was last written to `daemon.json` (written again only when it changes).
    written: Option<DaemonInfo>,
}

/// Runs the daemon on `rt` (the process's one runtime, built by `main`) until SIGTERM or SIGINT.
pub fn run(config_path: &Path, rt: &tokio::runtime::Runtime) -> anyhow::Result<u8> {
    crate::base::progress::mark_daemon();
    let config = Config::load(config_path)?;
    let group = config.agent.read_group.as_deref().map(crate::base::trust::group).transpose().map_err(Error::Usage)?;
    let _one = crate::statedir::lock::daemon_lock(&config.agent.state_dir, group)?;
    let metrics = metrics::bind(&config)?;
    rt.block_on(async {
        metrics.map(metrics::start).transpose()?;
        serve(config_path.to_owned(), config).await
    })
}

/// Tells the service manager (`NOTIFY_SOCKET`) about `states`, without ever waiting: this runs on the async
/// thread, and a datagram socket whose reader is behind (a busy manager, a test that stopped reading) would block
/// the sender for as long, SIGTERM included. A message that does not fit now is dropped and said at debug level.
fn notify(states: &[NotifyState]) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|sock| {
        sock.set_nonblocking(true)?;
        sock.connect(&path)?;
        sock.send(msg.as_bytes())
    });
    match sent {
        Ok(n) if n == msg.len() => {}
        Ok(n) => tracing::debug!("sd_notify: sent {n} of {} bytes", msg.len()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            tracing::debug!("sd_notify: the service manager is not reading its socket; dropped {}", msg.trim_end())
        }
        Err(e) => tracing::debug!("sd_notify: {e}"),
    }
}

async fn serve(config_path: PathBuf, config: Config) -> anyhow::Result<u8> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let watchdog = sd_notify::watchdog_enabled();
    tracing::info!(
        "daemon starting: {} app(s), poll every {}, watchdog {}",
        config.apps.len(),
        humantime::format_duration(config.agent.poll_interval),
        watchdog.map_or("off".to_owned(), |d| humantime::format_duration(d).to_string())
    );
    if config.apps.is_empty() {
        tracing::warn!("{}", idle_line(&config_path));
    }
    notify(&[NotifyState::Status("reconciling")]);

    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(64);
    let mut handles: BTreeMap<String, Handle> = BTreeMap::new();
    for name in config.apps.keys() {
        let app = App::from_config(&config, name)?;
        handles.insert(name.clone(), spawn(app, config.agent.poll_interval, stop_rx.clone(), ready_tx.clone()));
    }
    metrics::set_apps(&config);
    // READY=1 once every app has been reconciled (each worker's first step). Reconciling may restart and verify
    // a release, which can outlast systemd's start timeout: extend it while the work shows signs of life.
    let mut pending = handles.len();
    let mut extend = tokio::time::interval(Duration::from_secs(5));
    while pending > 0 {
        tokio::select! {
            _ = ready_rx.recv() => pending -= 1,
            _ = term.recv() => return shutdown(handles, stop_tx).await,
            _ = int.recv() => return shutdown(handles, stop_tx).await,
            _ = extend.tick() => {
                if !handles.values().any(|h| h.worker.stalled(STOP_STALL)) {
                    notify(&[NotifyState::ExtendTimeoutUsec(30_000_000)]);
                }
            }
        }
    }
    notify(&[NotifyState::Ready, NotifyState::Status(&status_line(&handles))]);
    tracing::info!("daemon ready");

    let tick = watchdog.map_or(Duration::from_secs(1), |w| (w / 2).min(Duration::from_secs(1)));
    let mut ticker = tokio::time::interval(tick);
    let mut last_status = String::new();
    let mut last_ping = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&config_path, &mut handles, &stop_rx, &ready_tx),
            _ = ticker.tick() => {
                let line = status_line(&handles);
                if line != last_status {
                    notify(&[NotifyState::Status(&line)]);
                    last_status = line;
                }
                write_infos(&mut handles);
                if let Some(wd) = watchdog {
                    if last_ping.elapsed() >= wd / 2 {
                        let stuck: Vec<String> =
                            handles.values().filter(|h| h.worker.stalled(wd)).map(|h| h.worker.app.clone()).collect();
                        if stuck.is_empty() {
                            notify(&[NotifyState::Watchdog]);
                            last_ping = tokio::time::Instant::now();
                        } else {
                            tracing::error!("no sign of life from {} for {}: withholding the watchdog ping", stuck.join(", "), humantime::format_duration(wd));
                        }
                    }
                }
            }
        }
    }
    shutdown(handles, stop_tx).await
}

async fn shutdown(handles: BTreeMap<String, Handle>, stop_tx: watch::Sender<bool>) -> anyhow::Result<u8> {
    tracing::info!("daemon stopping");
    progress::request_shutdown();
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    let _ = stop_tx.send(true);
    let mut code = crate::base::exit::SUCCESS;
    for (name, h) in handles {
        let info_path = h.worker_info_path();
        let mut join = h.join;
        loop {
            tokio::select! {
                _ = &mut join => break,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {
                    // Extend systemd's stop timeout only while the step shows signs of life.
                    if h.worker.stalled(STOP_STALL) {
                        tracing::error!("{name}: the step in flight ({}) shows no sign of life; exiting without it (the journal lets the next start finish it)", h.worker.activity());
                        code = crate::base::exit::FAILED;
                        break;
                    }
                    tracing::info!("{name}: waiting for the step in flight to reach a safe point ({})", h.worker.activity());
                    notify(&[NotifyState::ExtendTimeoutUsec(15_000_000)]);
                }
            }
        }
        let _ = std::fs::remove_file(info_path);
    }
    tracing::info!("daemon stopped");
    Ok(code)
}

/// At shutdown, a step silent for this long is given up on.
const STOP_STALL: Duration = Duration::from_secs(10);

impl Handle {
    fn worker_info_path(&self) -> PathBuf {
        self.cfg.borrow().0.state_dir.join(INFO_FILE)
    }
}

fn reload(
    path: &Path,
    handles: &mut BTreeMap<String, Handle>,
    stop_rx: &watch::Receiver<bool>,
    ready_tx: &mpsc::Sender<()>,
) {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
    match Config::load(path) {
        Err(e) => {
            tracing::error!("configuration not reloaded, keeping the old one: {}", crate::base::chain::text(&e));
        }
        Ok(config) => {
            handles.retain(|name, _| {
                let keep = config.apps.contains_key(name);
                if !keep {
                    // Dropping its configuration sender ends the worker at its next wake-up.
                    tracing::info!("{name}: no longer configured; its worker stops");
                }
                keep
            });
            for name in config.apps.keys() {
                let Ok(app) = App::from_config(&config, name) else { continue };
                match handles.get(name) {
                    Some(h) => {
                        let _ = h.cfg.send((app, config.agent.poll_interval));
                    }
                    None => {
                        tracing::info!("{name}: newly configured; starting its worker");
                        handles.insert(
                            name.clone(),
                            spawn(app, config.agent.poll_interval, stop_rx.clone(), ready_tx.clone()),
                        );
                    }
                }
            }
            metrics::set_apps(&config);
            tracing::info!("configuration reloaded: {} app(s)", config.apps.len());
            if config.apps.is_empty() {
                tracing::warn!("{}", idle_line(path));
            }
        }
    }
    notify(&[NotifyState::Ready]);
}

/// What an agent with no app says (the packaged configuration has none): it runs, and does nothing until apps
/// are configured and the configuration reloaded.
fn idle_line(config_path: &Path) -> String {
    format!(
        "no apps configured in {}: idle until one is added and the configuration reloaded (systemctl reload switchback)",
        config_path.display()
    )
}

fn status_line(handles: &BTreeMap<String, Handle>) -> String {
    if handles.is_empty() {
        return "idle: no apps configured".to_owned();
    }
    handles.values().map(|h| format!("{} {}", h.worker.app, h.worker.activity())).collect::<Vec<_>>().join("; ")
}

/// Writes each app's `daemon.json` that changed, on the blocking pool (the async thread never waits on a disk).
fn write_infos(handles: &mut BTreeMap<String, Handle>) {
    for h in handles.values_mut() {
        let app = h.cfg.borrow().0.clone();
        let mut info = DaemonInfo {
            pid: std::process::id(),
            activity: h.worker.activity(),
            last_poll: h.worker.poll(),
            updated_at: String::new(),
            source: app.cfg.source.as_ref().map(|_| pull::channel_url(&app)),
            last_refusal: h.worker.refusal(),
            health: h.worker.health(),
        };
        if h.written.as_ref() == Some(&info) {
            continue;
        }
        h.written = Some(info.clone());
        info.updated_at = fsutil::now_rfc3339();
        let path = h.worker_info_path();
        let group = app.read_group;
        tokio::task::spawn_blocking(move || {
            let written = serde_json::to_vec_pretty(&info)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| fsutil::write_atomic_shared(&path, &bytes, group));
            if let Err(e) = written {
                tracing::debug!("{}: {e:#}", path.display());
            }
        });
    }
}

fn spawn(app: App, poll: Duration, stop: watch::Receiver<bool>, ready: mpsc::Sender<()>) -> Handle {
    let worker = Worker::new(&app.name, app.state_dir.clone());
    let (cfg_tx, cfg_rx) = watch::channel((app, poll));
    let join = tokio::spawn(worker_loop(cfg_rx, stop, worker.clone(), ready));
    Handle { cfg: cfg_tx, worker, join, written: None }
}
