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

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::{mpsc, watch};

use crate::app::App;
use crate::base::fsutil;
use crate::base::progress::{self, Worker};
use crate::base::timeline::Timeline;
use crate::config::Config;
use crate::engine::deploy::{self, DeployRequest};
use crate::engine::pull::{self, Polled};
use crate::engine::reconcile;
use crate::error::Error;
use crate::source::bucket::{Options, Source};
use crate::statedir::info::{DaemonInfo, INFO_FILE};

struct Handle {
    cfg: watch::Sender<(App, Duration)>,
    worker: Arc<Worker>,
    join: tokio::task::JoinHandle<()>,
    /// What was last written to `daemon.json` (written again only when it changes).
    written: Option<DaemonInfo>,
}

pub fn run(config_path: &Path) -> anyhow::Result<u8> {
    let config = Config::load(config_path)?;
    let group = config.agent.read_group.as_deref().map(crate::base::trust::group).transpose().map_err(Error::Usage)?;
    let _one = crate::statedir::lock::daemon_lock(&config.agent.state_dir, group)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let code = rt.block_on(serve(config_path.to_owned(), config));
    // A worker given up on at shutdown (stuck) must not keep the process alive.
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
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
    notify(&[NotifyState::Status("reconciling")]);

    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(64);
    let mut handles: BTreeMap<String, Handle> = BTreeMap::new();
    for name in config.apps.keys() {
        let app = App::from_config(&config, name)?;
        handles.insert(name.clone(), spawn(app, config.agent.poll_interval, stop_rx.clone(), ready_tx.clone()));
    }
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
            tracing::error!("configuration not reloaded, keeping the old one: {e}");
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
            tracing::info!("configuration reloaded: {} app(s)", config.apps.len());
        }
    }
    notify(&[NotifyState::Ready]);
}

fn status_line(handles: &BTreeMap<String, Handle>) -> String {
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

/// Runs blocking app work on the blocking pool, on behalf of `worker`.
async fn blocking<T: Send + 'static>(
    worker: &Arc<Worker>,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let w = worker.clone();
    tokio::task::spawn_blocking(move || progress::enter(&w, f))
        .await
        .map_err(|e| anyhow::anyhow!("worker task: {e}"))?
}

/// Per-worker memory: the ETag of the last manifest fetched, and the artifacts refused for good.
#[derive(Default)]
struct Memory {
    etag: Option<String>,
    /// (version, sha256) whose artifact failed verification or unpacking: not fetched again until the channel
    /// names something else.
    refused: HashSet<(String, String)>,
    /// The last reason logged for not deploying what the channel wants (logged once).
    held: String,
    /// A poll failure that repeats: logged once, then summarised.
    trouble: Trouble,
}

/// A condition that may repeat at every poll (the bucket away, no manifest published): said when it starts, then
/// summarised now and then (after 10 and 100 repeats, then every hour), and once more when it ends.
#[derive(Default)]
struct Trouble {
    current: Option<(String, u64, std::time::Instant, String)>,
    last_summary: Option<std::time::Instant>,
}

impl Trouble {
    fn report(&mut self, app: &str, now: Option<String>) {
        match (now, self.current.take()) {
            (None, None) => {}
            (None, Some((what, n, _, since))) => {
                tracing::info!("{app}: resolved after {n} poll(s) since {since}: {what}");
                self.last_summary = None;
            }
            (Some(what), Some((same, n, started, since))) if same == what => {
                let n = n + 1;
                let hourly = self.last_summary.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600));
                if n == 10 || n == 100 || (n > 100 && hourly) {
                    tracing::warn!("{app}: still ({n} polls since {since}): {what}");
                    self.last_summary = Some(std::time::Instant::now());
                }
                self.current = Some((what, n, started, since));
            }
            (Some(what), _) => {
                tracing::warn!("{app}: {what}");
                self.current = Some((what, 1, std::time::Instant::now(), fsutil::now_rfc3339()));
                self.last_summary = None;
            }
        }
    }
}

async fn worker_loop(
    mut cfg_rx: watch::Receiver<(App, Duration)>,
    mut stop: watch::Receiver<bool>,
    worker: Arc<Worker>,
    ready: mpsc::Sender<()>,
) {
    let (mut app, mut poll) = cfg_rx.borrow_and_update().clone();
    {
        let a = app.clone();
        if let Err(e) = blocking(&worker, move || {
            let _lock = a.lock(Duration::from_secs(60), "reconcile")?;
            reconcile::reconcile(&a, &mut Timeline::new(false)).map(|_| ())
        })
        .await
        {
            tracing::error!("{}: reconcile on start failed: {e:#}", app.name);
        }
        let _ = ready.send(()).await;
    }
    let mut mem = Memory::default();
    loop {
        let src = open_source(&app);
        let (inbox_tx, mut inbox_rx) = mpsc::channel::<()>(1);
        let _watcher = app.cfg.inbox.as_deref().and_then(|dir| watch_inbox(&app.name, dir, inbox_tx));
        mem.etag = None;
        // Work until the configuration changes or the daemon stops.
        loop {
            if *stop.borrow() {
                return;
            }
            if let Some(dir) = app.cfg.inbox.clone() {
                scan_inbox(&app, &dir, src.as_ref(), &worker, &mut mem).await;
            }
            if let Some(src) = &src {
                let polled = pull::poll_channel(&app, src, &mut mem.etag).await;
                let now = fsutil::now_rfc3339();
                let url = pull::channel_url(&app);
                let (text, trouble) = match &polled {
                    Ok(Polled::Unchanged) => ("unchanged".to_owned(), None),
                    Ok(Polled::Missing) => {
                        let t = format!("no manifest is published at {url}");
                        (t.clone(), Some(t))
                    }
                    Ok(Polled::Accepted { version, new: true }) => {
                        worker.set_refusal(None);
                        (format!("accepted a new manifest: {version}"), None)
                    }
                    Ok(Polled::Accepted { version, new: false }) => (format!("manifest names {version}"), None),
                    Ok(Polled::Refused { reason }) => {
                        worker.set_refusal(Some(format!("{now} refused the manifest {url}: {reason}")));
                        (format!("refused the manifest: {reason}"), None)
                    }
                    Err(e) => {
                        let t = format!("poll failed ({url}): {e}");
                        (t.clone(), Some(t))
                    }
                };
                mem.trouble.report(&app.name, trouble);
                worker.set_poll(format!("{now} {text}"));
            }
            if *stop.borrow() {
                return;
            }
            converge(&app, src.as_ref(), &worker, &mut mem).await;
            if !*stop.borrow() {
                idle_health(&app, &worker).await;
            }
            let delay = poll.mul_f64(0.9 + fastrand::f64() * 0.2);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                Some(()) = inbox_rx.recv() => {
                    // Let a burst of renames settle.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                changed = cfg_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    (app, poll) = cfg_rx.borrow_and_update().clone();
                    break;
                }
                _ = stop.changed() => return,
            }
        }
    }
}

/// Between deploys, the daemon checks the current release once per poll, so `status` says how it is now, not
/// how it was when it went live. Nothing else follows from it: a release that turns unhealthy after its bake is
/// reported, not rolled back (that is a person's call, or the next release's).
async fn idle_health(app: &App, worker: &Arc<Worker>) {
    if app.cfg.checks.is_empty() {
        return;
    }
    let a = app.clone();
    let checked = blocking(worker, move || {
        let Some(current) = a.store.current()? else { return Ok(None) };
        let results = crate::engine::status::check_now(&a)?;
        let failed = results.iter().find(|r| !r.ok);
        Ok(Some(crate::base::verdict::HealthSummary {
            at: fsutil::now_rfc3339(),
            version: Some(current),
            healthy: failed.is_none(),
            detail: match failed {
                Some(r) => format!("{}: {}", r.check, r.detail),
                None => format!("{} check(s) passed", results.len()),
            },
        }))
    })
    .await;
    match checked {
        Ok(h) => {
            if let Some(h) = h.as_ref().filter(|h| !h.healthy) {
                if worker.health().is_none_or(|old| old.healthy) {
                    tracing::warn!(
                        "{}: {} is not healthy now: {}",
                        app.name,
                        h.version.as_ref().map_or("?", |v| v.as_str()),
                        h.detail
                    );
                }
            }
            worker.set_health(h);
        }
        Err(e) => tracing::debug!("{}: idle check: {e:#}", app.name),
    }
}

fn open_source(app: &App) -> Option<Source> {
    let url = app.cfg.source.as_deref()?;
    match Source::open(url, &Options::of(&app.cfg)) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!("{}: {e}", app.name);
            None
        }
    }
}

/// Whether what the accepted manifest asks for is settled (done, or refused for good), or must be tried again
/// later (busy, pinned, the bucket away, a shutdown): an inbox drop stays in the inbox until it is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Converged {
    Settled,
    Later,
}

/// Brings the app to what its accepted manifest names, unless that version is bad, the app is pinned elsewhere,
/// or its artifact was refused.
async fn converge(app: &App, src: Option<&Source>, worker: &Arc<Worker>, mem: &mut Memory) -> Converged {
    let a = app.clone();
    let (state, on_disk) = match blocking(worker, move || Ok((a.load_state()?, a.store.on_disk()?))).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{}: {e:#}", app.name);
            return Converged::Later;
        }
    };
    let current = state.current.as_ref().map_or("nothing".to_owned(), ToString::to_string);
    let Some(want) = state.channel.clone() else {
        worker.set_activity(format!("on {current}; no manifest accepted yet"));
        return Converged::Settled;
    };
    let v = want.version.clone();
    let hold = |mem: &mut Memory, why: String| {
        if mem.held != why {
            tracing::warn!("{}: not deploying {v}: {why}", app.name);
            mem.held = why.clone();
        }
        worker.set_activity(format!("on {current}; holding: {why}"));
    };
    use Converged::{Later, Settled};
    if state.current.as_ref() == Some(&v) && state.in_flight.is_none() {
        // The newest word on the current release: the daemon's idle check, else the deploy's.
        let newest = worker.health().filter(|h| h.version.as_ref() == Some(&v)).or(state.last_health.clone());
        let health = newest.as_ref().filter(|h| h.version.as_ref() == Some(&v)).map_or("", |h| {
            if h.healthy {
                " healthy"
            } else {
                " UNHEALTHY"
            }
        });
        worker.set_activity(format!("on {v}{health}"));
        return Settled;
    }
    if let Some(bad) = state.bad.get(&v) {
        hold(mem, format!("{v} is marked bad ({})", bad.reason));
        return Settled;
    }
    if let Some(pin) = &state.pin {
        if pin.version != v {
            hold(mem, format!("pinned to {}", pin.version));
            return Later;
        }
    }
    if want.expired(std::time::SystemTime::now()) {
        hold(mem, format!("the manifest naming {v} expired at {}; waiting for a newer one", want.expires));
        return Settled;
    }
    let key = (v.to_string(), want.sha256.clone());
    if mem.refused.contains(&key) {
        hold(mem, format!("the artifact of {v} was refused"));
        return Settled;
    }
    mem.held.clear();
    let have = on_disk.contains(&v) && state.releases.get(&v).is_some_and(|r| r.sha256 == want.sha256);
    let mut fetched = None;
    let archive = if have {
        // An artifact left from a deploy a shutdown interrupted is not needed any more.
        let left = app.downloads_dir().join(format!("{}.tar.zst", want.sha256));
        let _ = blocking(worker, move || Ok(std::fs::remove_file(left))).await;
        None
    } else {
        worker.set_activity(format!("on {current}; downloading {v}"));
        let w = worker.clone();
        let (current2, v2) = (current.clone(), v.to_string());
        let show =
            move |n: u64, total: u64| w.set_activity(format!("on {current2}; {}", pull::progress_text(&v2, n, total)));
        match pull::fetch_artifact(app, src, &want, &show).await {
            Ok((p, took)) => {
                crate::base::crashpoint::hit("after-download");
                fetched = took;
                Some(p)
            }
            Err(e) => {
                tracing::warn!("{}: cannot fetch {v}: {e}", app.name);
                worker.set_activity(format!("on {current}; fetching {v} failed: {e}"));
                if matches!(e, Error::ArtifactMismatch { .. }) {
                    worker.set_refusal(Some(format!("{} refused the artifact of {v}: {e}", fsutil::now_rfc3339())));
                    mem.refused.insert(key);
                    return Settled;
                }
                return Later;
            }
        }
    };
    worker.set_activity(format!("deploying {v}"));
    let req = DeployRequest {
        archive: archive.clone(),
        expected: Some(deploy::Promise { sha256: want.sha256.clone(), size: want.size }),
        version: v.clone(),
        force: false,
        reason: Some(format!("{} (sequence {})", want.from, want.sequence)),
        fetched,
    };
    let a = app.clone();
    let result = blocking(worker, move || deploy::deploy(&a, &req, Duration::from_secs(1), false)).await;
    match &result {
        Ok(out) => tracing::info!("{}: {} {} ({})", app.name, out.version, out.outcome, out.health),
        Err(e) => {
            let refused = matches!(
                e.downcast_ref::<Error>(),
                Some(
                    Error::ArchiveRefused { .. }
                        | Error::ArtifactMismatch { .. }
                        | Error::ArtifactRefused { .. }
                        | Error::VersionConflict { .. }
                )
            );
            if refused {
                mem.refused.insert(key);
                worker.set_refusal(Some(format!("{} refused the artifact of {v}: {e:#}", fsutil::now_rfc3339())));
            }
            tracing::warn!("{}: {e:#}", app.name);
        }
    }
    // The download is kept only for a deploy that did not get to use it (busy, or stopped by a shutdown before
    // the release was on disk); a release on disk never needs its artifact again.
    let busy = matches!(result.as_ref().err().and_then(|e| e.downcast_ref::<Error>()), Some(Error::Busy { .. }));
    let (a, w, v2) = (app.clone(), worker.clone(), v.clone());
    let after = blocking(worker, move || {
        w.clear_cancel();
        let unused = busy || (progress::shutting_down() && !a.store.on_disk().unwrap_or_default().contains(&v2));
        if let Some(p) = archive.filter(|p| p.starts_with(a.downloads_dir())) {
            if !unused {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok((unused, a.load_state().unwrap_or_default()))
    })
    .await;
    let (unused, state) = after.unwrap_or_default();
    let now = state.current.as_ref().map_or("nothing".to_owned(), ToString::to_string);
    worker.set_activity(match result {
        Ok(_) => format!("on {now} healthy"),
        Err(e) => format!("on {now}; deploy of {v} failed: {}", first_line(&format!("{e}"))),
    });
    if unused {
        Later
    } else {
        Settled
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Watches `dir` for new files; each event wakes the worker. The watcher stops when dropped.
fn watch_inbox(app: &str, dir: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::error!("{app}: inbox {}: {e}", dir.display());
        return None;
    }
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| e.kind.is_create() || e.kind.is_modify()) {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::error!("{app}: cannot watch inbox {}: {e}", dir.display()))
    .ok()?;
    w.watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| tracing::error!("{app}: cannot watch inbox {}: {e}", dir.display()))
        .ok()?;
    Some(w)
}

/// A complete drop found in the inbox: the manifest and its signature read (nothing of them trusted yet).
struct Drop {
    manifest: PathBuf,
    sig_path: PathBuf,
    bytes: Vec<u8>,
    sig: String,
    artifact: Option<PathBuf>,
}

/// What a look at the inbox found: complete drops, and files that can never be a drop (set aside).
#[derive(Default)]
struct InboxScan {
    drops: Vec<Drop>,
    set_aside: Vec<(PathBuf, String)>,
}

/// Lists the inbox and reads each drop's manifest and signature. Blocking (runs off the async thread); every file
/// is opened without following links and without blocking, regular files only, at most [`fsutil::SMALL_MAX`]
/// bytes: a FIFO, a link to /dev/zero or a huge file in the inbox is set aside, never waited on or read whole.
fn look_at_inbox(dir: &Path) -> InboxScan {
    let mut scan = InboxScan::default();
    let Ok(read) = std::fs::read_dir(dir) else { return scan };
    let mut manifests: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && name.ends_with(".json")
        })
        .collect();
    manifests.sort();
    for m in manifests {
        let mut sig_path = m.clone().into_os_string();
        sig_path.push(".minisig");
        let sig_path = PathBuf::from(sig_path);
        let bytes = match fsutil::read_small(&m) {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(why) => {
                scan.set_aside.push((m, why));
                continue;
            }
        };
        let sig = match fsutil::read_small(&sig_path) {
            Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
            // Not there yet: the drop is incomplete.
            Ok(None) => continue,
            Err(why) => {
                scan.set_aside.push((m, format!("its signature {}: {why}", sig_path.display())));
                continue;
            }
        };
        // Only to see whether the archive has arrived yet; nothing of it is trusted before the signature.
        let artifact = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("artifact").and_then(|a| a.as_str()).map(str::to_owned))
            .and_then(|a| Path::new(&a).file_name().map(|n| dir.join(n)));
        if artifact.as_ref().is_some_and(|a| std::fs::symlink_metadata(a).is_err()) {
            continue;
        }
        scan.drops.push(Drop { manifest: m, sig_path, bytes, sig, artifact });
    }
    scan
}

/// Renames an inbox file `NAME.refused`, for a person to look at; the worker never looks at it again.
fn set_aside(m: &Path) {
    let mut refused = m.to_path_buf().into_os_string();
    refused.push(".refused");
    let _ = std::fs::rename(m, &refused);
}

/// Handles complete drops in the inbox: `NAME.json`, `NAME.json.minisig` and the archive the manifest names.
/// Each is accepted like a channel manifest, deployed, then removed; a refused manifest is renamed
/// `NAME.json.refused` (and stays, for a person to look at). No file of the inbox is touched on the async thread.
async fn scan_inbox(app: &App, dir: &Path, src: Option<&Source>, worker: &Arc<Worker>, mem: &mut Memory) {
    let d = dir.to_owned();
    let Ok(scan) = blocking(worker, move || Ok(look_at_inbox(&d))).await else { return };
    for (m, why) in scan.set_aside {
        tracing::warn!("{}: inbox: {} set aside: {why}", app.name, m.display());
        let m2 = m.clone();
        let _ = blocking(worker, move || {
            set_aside(&m2);
            Ok(())
        })
        .await;
        let text = format!("{} inbox: refused {}: {why}", fsutil::now_rfc3339(), m.display());
        worker.set_refusal(Some(text.clone()));
        worker.set_poll(text);
    }
    for drop in scan.drops {
        let m = drop.manifest.clone();
        let from = format!("{}{}", pull::INBOX_PREFIX, m.display());
        let (a, b, s, f) = (app.clone(), drop.bytes, drop.sig, from.clone());
        let verdict = blocking(worker, move || Ok(pull::accept_under_lock(&a, &b, &s, &f))).await;
        // A drop leaves the inbox once what it asks for is settled: deployed, rolled back, or refused for good; a
        // busy app or a pin keeps it for the next scan.
        let done = match verdict {
            Ok(Ok(Polled::Accepted { .. })) => converge(app, src, worker, mem).await == Converged::Settled,
            Ok(Ok(_)) => true,
            Ok(Err(pull::AcceptError::Refused(r))) => {
                let m2 = m.clone();
                let _ = blocking(worker, move || {
                    set_aside(&m2);
                    Ok(())
                })
                .await;
                let text = format!("{} inbox: refused {}: {}", fsutil::now_rfc3339(), m.display(), r.reason);
                worker.set_refusal(Some(text.clone()));
                worker.set_poll(text);
                false
            }
            Ok(Err(pull::AcceptError::Other(e))) | Err(e) => {
                tracing::warn!("{}: inbox {}: {e:#}; trying again later", app.name, m.display());
                false
            }
        };
        if done {
            let files: Vec<PathBuf> =
                [Some(m.clone()), Some(drop.sig_path), drop.artifact].into_iter().flatten().collect();
            let _ = blocking(worker, move || {
                for p in files {
                    let _ = std::fs::remove_file(p);
                }
                Ok(())
            })
            .await;
            worker.set_poll(format!("{} inbox: took {}", fsutil::now_rfc3339(), m.display()));
        }
    }
}
