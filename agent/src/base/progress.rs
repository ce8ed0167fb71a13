//! What long-running work tells the daemon while it runs, without knowing about the daemon: a heartbeat (for the
//! systemd watchdog), a one-line activity (for `STATUS=` and `status`), and whether it should stop (shutdown, or an
//! operator's command asked to cancel). Outside the daemon the beats and activities go nowhere and nothing asks to
//! stop, so the CLI's behaviour is unchanged.
//!
//! Work running on behalf of an app calls [`enter`] on its thread; deep code calls [`beat`], [`set_activity`] and
//! [`interrupted`] without being passed anything.

use crate::base::activity::Activity;
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Why work should stop now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interrupt {
    /// The daemon is shutting down: abandon at a safe point; the journal says what the next start finishes.
    Shutdown,
    /// An operator's command wants the app: the text names who and what.
    Cancel(String),
}

/// One app's worker as the daemon sees it.
#[derive(Debug)]
pub struct Worker {
    pub app: String,
    /// Milliseconds since [`epoch`] of the last sign of life.
    last_beat: AtomicU64,
    busy: AtomicBool,
    activity: Mutex<Activity>,
    /// When the channel was last polled and what it said.
    poll: Mutex<String>,
    /// The last refusal (a manifest, an inbox drop, an artifact) and when, until a newer manifest is accepted.
    refusal: Mutex<Option<String>>,
    /// The daemon's own last check of the current release while idle.
    health: Mutex<Option<crate::base::verdict::HealthSummary>>,
    /// `STATE_DIR/APP/cancel`: an operator's request to cancel the daemon's step.
    cancel_file: PathBuf,
}

impl Worker {
    pub fn new(app: &str, state_dir: PathBuf) -> Arc<Worker> {
        Arc::new(Worker {
            app: app.to_owned(),
            last_beat: AtomicU64::new(now_ms()),
            busy: AtomicBool::new(false),
            activity: Mutex::new(Activity::Starting),
            poll: Mutex::new(String::new()),
            refusal: Mutex::new(None),
            health: Mutex::new(None),
            cancel_file: state_dir.join(CANCEL_FILE),
        })
    }

    pub fn beat(&self) {
        self.last_beat.store(now_ms(), Ordering::Relaxed);
    }

    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
        self.beat();
    }

    pub fn set_activity(&self, activity: Activity) {
        *self.activity.lock().unwrap_or_else(|e| e.into_inner()) = activity;
    }

    /// The activity, in words.
    pub fn activity(&self) -> String {
        self.activity.lock().unwrap_or_else(|e| e.into_inner()).to_string()
    }

    pub fn set_poll(&self, text: impl Into<String>) {
        *self.poll.lock().unwrap_or_else(|e| e.into_inner()) = text.into();
    }

    pub fn poll(&self) -> String {
        self.poll.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_refusal(&self, text: Option<String>) {
        *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = text;
    }

    pub fn refusal(&self) -> Option<String> {
        self.refusal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_health(&self, h: Option<crate::base::verdict::HealthSummary>) {
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = h;
    }

    pub fn health(&self) -> Option<crate::base::verdict::HealthSummary> {
        self.health.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Busy and silent for longer than `limit`: the work is hung.
    pub fn stalled(&self, limit: Duration) -> bool {
        self.busy.load(Ordering::Relaxed)
            && now_ms().saturating_sub(self.last_beat.load(Ordering::Relaxed)) > limit.as_millis() as u64
    }

    /// Checks for a shutdown or an operator's cancel request.
    pub fn interrupted(&self) -> Option<Interrupt> {
        if SHUTDOWN.load(Ordering::Relaxed) {
            return Some(Interrupt::Shutdown);
        }
        let text = std::fs::read_to_string(&self.cancel_file).ok()?;
        Some(Interrupt::Cancel(text.trim().to_owned()))
    }

    /// Removes a cancel request once it has been acted on (or before new work starts).
    pub fn clear_cancel(&self) {
        let _ = std::fs::remove_file(&self.cancel_file);
    }
}

/// The file an operator's command writes to ask the daemon to cancel its step for an app.
pub const CANCEL_FILE: &str = "cancel";

static SHUTDOWN: AtomicBool = AtomicBool::new(false);
/// Set once by the daemon: everything this process does, it does as the daemon.
static DAEMON: AtomicBool = AtomicBool::new(false);

/// This process is the daemon (its history events say so, from whichever thread they are recorded).
pub fn mark_daemon() {
    DAEMON.store(true, Ordering::Relaxed);
}

/// Whether this is the daemon's work: the daemon process, or work entered on behalf of one of its workers.
pub fn is_daemon() -> bool {
    DAEMON.load(Ordering::Relaxed) || in_worker()
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Worker>>> = const { RefCell::new(None) };
    /// Whether an operator's cancel request applies to the work on this thread now.
    static CANCELLABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

thread_local! {
    /// What long work on this thread is (e.g. "deploying 1.4.2"), and whether to show it on the terminal.
    static LONG_WORK: RefCell<Option<(String, bool, Instant)>> = const { RefCell::new(None) };
}

/// Runs `f` as long work named `label` (e.g. "deploying 1.4.2"): [`step_progress`] calls inside show how far it
/// got, in the daemon's activity and, with `print` on a terminal, on stderr.
pub fn long_work<T>(label: String, print: bool, f: impl FnOnce() -> T) -> T {
    let tty = print && std::io::IsTerminal::is_terminal(&std::io::stderr());
    LONG_WORK.with(|w| *w.borrow_mut() = Some((label, tty, Instant::now())));
    let out = f();
    let shown = LONG_WORK.with(|w| w.borrow_mut().take()).is_some_and(|(_, tty, _)| tty);
    if shown {
        note_inline!("\r\x1b[K");
    }
    out
}

/// How far long work got (`text`, e.g. "unpacking: 1200 entries, 40 MiB"); shown at most 4 times a second.
pub fn step_progress(text: impl FnOnce() -> String) {
    let Some((label, tty)) = LONG_WORK.with(|w| {
        let mut w = w.borrow_mut();
        let (label, tty, last) = w.as_mut()?;
        if last.elapsed() < Duration::from_millis(250) {
            return None;
        }
        *last = Instant::now();
        Some((label.clone(), *tty))
    }) else {
        return;
    };
    let text = text();
    set_activity(Activity::Working { label, progress: text.clone() });
    if tty {
        note_inline!("\r\x1b[K  {text}");
    }
}

/// Runs `f` with operators' cancel requests ignored (a shutdown still interrupts it): the way back to the last
/// good release is what a cancel asks for, so it is never itself cancelled.
pub fn uncancellable<T>(f: impl FnOnce() -> T) -> T {
    let before = CANCELLABLE.with(|c| c.replace(false));
    let out = f();
    CANCELLABLE.with(|c| c.set(before));
    out
}

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

pub fn request_shutdown() {
    SHUTDOWN.store(true, Ordering::Relaxed);
}

pub fn shutting_down() -> bool {
    SHUTDOWN.load(Ordering::Relaxed)
}

/// Runs `f` on this thread on behalf of `worker`: the calls below reach it.
pub fn enter<T>(worker: &Arc<Worker>, f: impl FnOnce() -> T) -> T {
    CURRENT.with(|c| *c.borrow_mut() = Some(worker.clone()));
    worker.set_busy(true);
    let out = f();
    worker.set_busy(false);
    CURRENT.with(|c| *c.borrow_mut() = None);
    out
}

fn with_current<T>(f: impl FnOnce(&Worker) -> T) -> Option<T> {
    CURRENT.with(|c| c.borrow().as_deref().map(f))
}

/// Whether this thread works for the daemon.
pub fn in_worker() -> bool {
    with_current(|_| ()).is_some()
}

pub fn beat() {
    with_current(Worker::beat);
}

pub fn set_activity(activity: Activity) {
    with_current(|w| w.set_activity(activity));
}

/// Where the daemon counts the checks its workers run (its metrics): set once, by the daemon alone.
static CHECK_SINK: OnceLock<fn(app: &str, check: &str, ok: bool)> = OnceLock::new();

pub fn set_check_sink(sink: fn(&str, &str, bool)) {
    let _ = CHECK_SINK.set(sink);
}

/// A check ran with this result: counted for the worker this thread works for, if the daemon counts them.
pub fn checked(check: &str, ok: bool) {
    if let Some(sink) = CHECK_SINK.get() {
        with_current(|w| sink(&w.app, check, ok));
    }
}

/// Whether the work on this thread should stop. Always `None` outside the daemon.
pub fn interrupted() -> Option<Interrupt> {
    match with_current(Worker::interrupted).flatten() {
        Some(Interrupt::Cancel(_)) if !CANCELLABLE.with(|c| c.get()) => None,
        other => other,
    }
}

/// Sleeps for `d` in short slices, beating, and returns early when interrupted.
pub fn sleep(d: Duration) -> Result<(), Interrupt> {
    let end = Instant::now() + d;
    loop {
        if let Some(i) = interrupted() {
            return Err(i);
        }
        beat();
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// A line for people on stderr (progress, notes), written without panicking when stderr is closed.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use note;

/// Like [`note!`], without a newline (a progress line rewritten in place).
macro_rules! note_inline {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut e = std::io::stderr();
        let _ = write!(e, $($arg)*);
        let _ = e.flush();
    }};
}
pub(crate) use note_inline;
