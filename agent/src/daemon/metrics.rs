//! `[agent] metrics = "ADDR:PORT"`: the daemon serves Prometheus metrics at `http://ADDR:PORT/metrics`, on its own
//! runtime, with a minimal HTTP/1 handler (GET or HEAD of `/metrics`; anything else is 404 or 405).
//!
//! - What history says (deploys and rollbacks by outcome, deploy durations, the delivery figures of
//!   [`crate::engine::delivery`] over the last 30 days) comes from each app's `history.jsonl`, read incrementally
//!   (only the lines appended since the last scrape) without the app's lock: a scrape never waits for a deploy.
//! - What only the running daemon knows (the last poll of each channel, the health checks it ran) is recorded in
//!   memory as it happens ([`polled`], and the checks through [`progress::checked`]).
//! - The text is Prometheus' 0.0.4 format, or OpenMetrics when the scraper asks for it (`Accept`).
//! - The endpoint is for anyone who can connect: a request head over 8 KiB is refused, a client has 5 s for its
//!   whole exchange, at most 16 are served at once (more are closed at once), and reading history runs on the
//!   blocking pool, so no client can hold up the daemon's work.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::app::App;
use crate::base::progress;
use crate::config::Config;
use crate::engine::delivery::{self, Change};
use crate::engine::pull::Polled;
use crate::error::Error;
use crate::statedir::history::{self, Action, Outcome};

/// The window of the delivery figures.
pub const WINDOW: Duration = Duration::from_secs(30 * 86_400);
/// Upper bounds (seconds) of the deploy duration histogram's buckets.
const BUCKETS: [f64; 10] = [1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];
const MAX_REQUEST: usize = 8 << 10;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CLIENTS: usize = 16;

const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the running daemon saw, per app.
#[derive(Default)]
struct Live {
    /// The last poll: when (unix seconds) and its result.
    poll: Option<(f64, &'static str)>,
    polls: BTreeMap<&'static str, u64>,
    /// Check runs by (check, passed), and each check's last result.
    checks: BTreeMap<(String, bool), u64>,
    last_check: BTreeMap<String, bool>,
}

/// What an app's history says so far, and where its reading stopped.
#[derive(Default)]
struct FromHistory {
    tail: history::Tail,
    deploys: BTreeMap<&'static str, u64>,
    rollbacks: BTreeMap<&'static str, u64>,
    /// Deploys per bucket of [`BUCKETS`] (the last one is +Inf), their sum in seconds and count.
    durations: [u64; BUCKETS.len() + 1],
    duration_sum: f64,
    duration_count: u64,
    /// The changes the delivery figures need, back to the start of the window.
    changes: Vec<Change>,
}

impl FromHistory {
    fn refresh(&mut self, app: &App, now: SystemTime) {
        let got = match self.tail.read_new(&app.history_path()) {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!("{}: metrics: {e:#}", app.name);
                return;
            }
        };
        if got.restarted {
            tracing::warn!("{}: history was replaced or cut; its metrics start over", app.name);
            let tail = std::mem::take(&mut self.tail);
            *self = FromHistory { tail, ..FromHistory::default() };
        }
        for e in &got.events {
            match e.op {
                Action::Deploy => {
                    *self.deploys.entry(e.outcome.as_str()).or_default() += 1;
                    if e.outcome != Outcome::Busy {
                        let secs = e.duration_ms as f64 / 1000.0;
                        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
                        self.durations[i] += 1;
                        self.duration_sum += secs;
                        self.duration_count += 1;
                    }
                }
                Action::Rollback => *self.rollbacks.entry(e.outcome.as_str()).or_default() += 1,
                _ => {}
            }
            self.changes.extend(Change::of(e));
        }
        // A change that ended before the window cannot start or restore a failure in it.
        let from = now.checked_sub(WINDOW).unwrap_or(SystemTime::UNIX_EPOCH);
        let old = self.changes.iter().take_while(|c| c.end < from).count();
        self.changes.drain(..old);
    }
}

struct Shared {
    live: Mutex<BTreeMap<String, Live>>,
    /// The configured apps and what their history says; held by one scrape at a time.
    read: Mutex<(Vec<App>, BTreeMap<String, FromHistory>)>,
    bound: OnceLock<SocketAddr>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared {
        live: Mutex::new(BTreeMap::new()),
        read: Mutex::new((Vec::new(), BTreeMap::new())),
        bound: OnceLock::new(),
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Listens on `agent.metrics`, if set. A port that cannot be had is a configuration error: the daemon does not
/// start without the metrics it was told to serve.
pub(super) fn bind(config: &Config) -> Result<Option<std::net::TcpListener>, Error> {
    let Some(addr) = config.agent.metrics_addr() else { return Ok(None) };
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| Error::Usage(format!("cannot serve metrics on {addr} (agent.metrics): {e}")))?;
    let _ = shared().bound.set(addr);
    if !addr.ip().is_loopback() {
        tracing::warn!("metrics on {addr}: anyone who can reach it can read the apps' names, versions and checks");
    }
    Ok(Some(listener))
}

/// Serves `listener` on the current runtime, and starts counting the daemon's checks.
pub(super) fn start(listener: std::net::TcpListener) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tracing::info!("metrics at http://{}/metrics", listener.local_addr()?);
    progress::set_check_sink(checked);
    tokio::spawn(accept(listener));
    Ok(())
}

/// The apps to report on (at start and at each reload); their history is read ahead on the blocking pool.
pub(super) fn set_apps(config: &Config) {
    let Some(bound) = shared().bound.get() else { return };
    if config.agent.metrics_addr() != Some(*bound) {
        tracing::warn!("agent.metrics changed: the daemon keeps serving metrics on {bound} until it restarts");
    }
    let apps: Vec<App> = config.apps.keys().filter_map(|n| App::from_config(config, n).ok()).collect();
    {
        let mut read = lock(&shared().read);
        read.1.retain(|name, _| config.apps.contains_key(name));
        read.0 = apps;
    }
    lock(&shared().live).retain(|name, _| config.apps.contains_key(name));
    tokio::task::spawn_blocking(|| render(false));
}

/// Records a poll of `app`'s channel.
pub(super) fn polled(app: &str, polled: &Result<Polled, Error>) {
    if shared().bound.get().is_none() {
        return;
    }
    let result = match polled {
        Ok(Polled::Unchanged | Polled::Accepted { new: false, .. }) => "unchanged",
        Ok(Polled::Accepted { new: true, .. }) => "accepted",
        Ok(Polled::Missing) => "missing",
        Ok(Polled::Refused { .. }) => "refused",
        Err(_) => "error",
    };
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let mut live = lock(&shared().live);
    let a = live.entry(app.to_owned()).or_default();
    a.poll = Some((now, result));
    *a.polls.entry(result).or_default() += 1;
}

fn checked(app: &str, check: &str, ok: bool) {
    let check = crate::base::redact::text(check);
    let mut live = lock(&shared().live);
    let a = live.entry(app.to_owned()).or_default();
    *a.checks.entry((check.clone(), ok)).or_default() += 1;
    a.last_check.insert(check, ok);
}

async fn accept(listener: tokio::net::TcpListener) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                // Out of descriptors, most likely: try again soon rather than spin.
                tracing::debug!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        tokio::spawn(async move {
            let _slot = slot;
            if let Ok(Err(e)) = tokio::time::timeout(CLIENT_TIMEOUT, answer(sock)).await {
                tracing::debug!("metrics: {e}");
            }
        });
    }
}

/// Reads one request head and answers it; the connection is closed after.
async fn answer(mut sock: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if head.len() > MAX_REQUEST {
            return respond(&mut sock, "431 Request Header Fields Too Large", "text/plain", b"request too large\n")
                .await;
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&head[..end]);
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or("").split(' ');
    let (method, target) = (request.next().unwrap_or(""), request.next().unwrap_or(""));
    if !request.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return respond(&mut sock, "400 Bad Request", "text/plain", b"bad request\n").await;
    }
    if target.split('?').next() != Some("/metrics") {
        return respond(&mut sock, "404 Not Found", "text/plain", b"not found: try /metrics\n").await;
    }
    if method != "GET" && method != "HEAD" {
        return respond(&mut sock, "405 Method Not Allowed", "text/plain", b"GET /metrics\n").await;
    }
    let openmetrics = lines.any(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text"))
    });
    let text = match tokio::task::spawn_blocking(move || render(openmetrics)).await {
        Ok(Ok(text)) => text,
        _ => return respond(&mut sock, "500 Internal Server Error", "text/plain", b"cannot encode metrics\n").await,
    };
    let body = if method == "HEAD" { &[][..] } else { text.as_bytes() };
    let kind = if openmetrics { OPENMETRICS_TEXT } else { PROMETHEUS_TEXT };
    respond_len(&mut sock, "200 OK", kind, body, text.len()).await
}

async fn respond(sock: &mut tokio::net::TcpStream, status: &str, kind: &str, body: &[u8]) -> std::io::Result<()> {
    respond_len(sock, status, kind, body, body.len()).await
}

async fn respond_len(
    sock: &mut tokio::net::TcpStream,
    status: &str,
    kind: &str,
    body: &[u8],
    len: usize,
) -> std::io::Result<()> {
    let head =
        format!("HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body).await?;
    sock.shutdown().await
}

/// Reads what is new in each app's history and encodes every metric (on the blocking pool).
fn render(openmetrics: bool) -> Result<String, std::fmt::Error> {
    let now = SystemTime::now();
    let mut m = Families::default();
    {
        let mut read = lock(&shared().read);
        let (apps, histories) = &mut *read;
        for app in apps.iter() {
            let h = histories.entry(app.name.clone()).or_default();
            h.refresh(app, now);
            m.history(&app.name, h, now);
            if let Ok(Some(v)) = app.store.current() {
                m.series(
                    "release",
                    "The release ROOT/current points to",
                    MetricType::Info,
                    &app.name,
                    &[("version", v.to_string())],
                    Value::Info,
                );
            }
        }
    }
    for (app, live) in lock(&shared().live).iter() {
        m.live(app, live);
    }
    let mut registry = Registry::with_prefix("switchback");
    registry.register_collector(Box::new(m));
    let mut out = String::new();
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    }
    Ok(out)
}

#[derive(Debug)]
enum Value {
    Counter(u64),
    Gauge(f64),
    /// A gauge that counts.
    Count(u64),
    Info,
    Histogram {
        sum: f64,
        count: u64,
        buckets: Vec<(f64, u64)>,
    },
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    series: Vec<(Labels, Value)>,
}

/// One scrape's metrics, in the order they were first named.
#[derive(Debug, Default)]
struct Families(Vec<Family>);

impl Families {
    fn series(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: MetricType,
        app: &str,
        labels: &[(&'static str, String)],
        value: Value,
    ) {
        let i = match self.0.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.0.push(Family { name, help, kind, series: Vec::new() });
                self.0.len() - 1
            }
        };
        let mut all = vec![("app", app.to_owned())];
        all.extend_from_slice(labels);
        self.0[i].series.push((all, value));
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, app: &str, value: Option<Value>) {
        if let Some(v) = value {
            self.series(name, help, MetricType::Gauge, app, &[], v);
        }
    }

    fn history(&mut self, app: &str, h: &FromHistory, now: SystemTime) {
        // The usual outcomes from zero, so that rates and alerts have a series before the first of each.
        let zeros = || ["ok", "rolled-back", "rollback-failed", "failed"].map(|o| (o, 0u64));
        let deploys = zeros().into_iter().chain(h.deploys.iter().map(|(o, n)| (*o, *n))).collect::<BTreeMap<_, _>>();
        let rollbacks =
            zeros().into_iter().chain(h.rollbacks.iter().map(|(o, n)| (*o, *n))).collect::<BTreeMap<_, _>>();
        for (outcome, n) in &deploys {
            let help = "Deploys recorded in history, by outcome (a deploy's own rollback is outcome rolled-back)";
            self.series(
                "deploys",
                help,
                MetricType::Counter,
                app,
                &[("outcome", outcome.to_string())],
                Value::Counter(*n),
            );
        }
        for (outcome, n) in &rollbacks {
            let help = "Rollbacks a command ran, recorded in history, by outcome";
            self.series(
                "rollbacks",
                help,
                MetricType::Counter,
                app,
                &[("outcome", outcome.to_string())],
                Value::Counter(*n),
            );
        }
        let mut buckets: Vec<(f64, u64)> = BUCKETS.iter().copied().zip(h.durations).collect();
        buckets.push((f64::INFINITY, h.durations[BUCKETS.len()]));
        self.series(
            "deploy_duration_seconds",
            "How long deploys took, from history (busy ones left out)",
            MetricType::Histogram,
            app,
            &[],
            Value::Histogram { sum: h.duration_sum, count: h.duration_count, buckets },
        );
        let f = delivery::figures(&h.changes, now, WINDOW);
        let n = |v: u64| Some(Value::Count(v));
        let x = |v: Option<f64>| v.map(Value::Gauge);
        self.gauge("delivery_window_seconds", "The window of the delivery figures", app, n(f.window_seconds));
        self.gauge("delivery_deploys", "Deploys that reached production in the window", app, n(f.deploys));
        self.gauge("delivery_successful_deploys", "Deploys in the window that ended ok", app, n(f.successful));
        self.gauge(
            "delivery_failed_deploys",
            "Change failures in the window: deploys that ended rolled-back or rollback-failed",
            app,
            n(f.failed),
        );
        self.gauge(
            "delivery_not_deployed",
            "Deploys in the window that changed nothing or did not finish (failed, busy, interrupted)",
            app,
            n(f.not_deployed),
        );
        self.gauge(
            "deployment_frequency_per_day",
            "Successful deploys per day over the window",
            app,
            x(Some(f.deployment_frequency_per_day)),
        );
        self.gauge(
            "change_failure_rate",
            "Change failures / deploys over the window (absent without deploys)",
            app,
            x(f.change_failure_rate),
        );
        self.gauge("delivery_restored_failures", "Change failures in the window restored", app, n(f.restored));
        self.gauge(
            "delivery_unrestored_failures",
            "Change failures in the window not restored yet",
            app,
            n(f.unrestored),
        );
        self.gauge(
            "time_to_restore_median_seconds",
            "Median time from a failed deploy's start to the app healthy on a good release (absent without one)",
            app,
            x(f.time_to_restore_median_seconds),
        );
        self.gauge(
            "time_to_restore_mean_seconds",
            "Mean time from a failed deploy's start to the app healthy on a good release (absent without one)",
            app,
            x(f.time_to_restore_mean_seconds),
        );
    }

    fn live(&mut self, app: &str, live: &Live) {
        if let Some((at, result)) = live.poll {
            self.gauge(
                "last_poll_timestamp_seconds",
                "When the daemon last polled the app's channel",
                app,
                Some(Value::Gauge(at)),
            );
            let help = "The result of the last poll (unchanged, accepted, missing, refused, error)";
            self.series(
                "last_poll_result",
                help,
                MetricType::Gauge,
                app,
                &[("result", result.to_owned())],
                Value::Count(1),
            );
        }
        for (result, n) in &live.polls {
            let help = "Polls of the app's channel since the daemon started, by result";
            self.series("polls", help, MetricType::Counter, app, &[("result", result.to_string())], Value::Counter(*n));
        }
        for ((check, ok), n) in &live.checks {
            let result = if *ok { "pass" } else { "fail" };
            let help = "Health checks the daemon ran since it started (deploys, rollbacks, idle checks), by result";
            let labels = [("check", check.clone()), ("result", result.to_owned())];
            self.series("checks", help, MetricType::Counter, app, &labels, Value::Counter(*n));
        }
        for (check, ok) in &live.last_check {
            let help = "Whether the check passed the last time the daemon ran it";
            let v = Value::Count(u64::from(*ok));
            self.series("check_success", help, MetricType::Gauge, app, &[("check", check.clone())], v);
        }
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let mut family = encoder.encode_descriptor(f.name, f.help, None, f.kind)?;
            for (labels, value) in &f.series {
                match value {
                    // An info's labels are its value.
                    Value::Info => family.encode_info(labels)?,
                    Value::Counter(n) => family.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(n, None)?,
                    Value::Gauge(v) => family.encode_family(labels)?.encode_gauge(v)?,
                    Value::Count(n) => family.encode_family(labels)?.encode_gauge(n)?,
                    Value::Histogram { sum, count, buckets } => {
                        family.encode_family(labels)?.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)?
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Families {
        let mut m = Families::default();
        let mut h = FromHistory::default();
        h.deploys.insert("ok", 2);
        h.deploys.insert("rolled-back", 1);
        h.durations[1] = 3;
        h.duration_sum = 6.0;
        h.duration_count = 3;
        m.history("web", &h, SystemTime::now());
        m.series(
            "release",
            "The release ROOT/current points to",
            MetricType::Info,
            "web",
            &[("version", "1.0.0".into())],
            Value::Info,
        );
        let mut live = Live { poll: Some((1.7e9, "unchanged")), ..Live::default() };
        live.checks.insert(("http \"x\"".into(), true), 4);
        m.live("web", &live);
        m
    }

    fn encoded(openmetrics: bool) -> String {
        let mut registry = Registry::with_prefix("switchback");
        registry.register_collector(Box::new(sample()));
        let mut out = String::new();
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        }
        out
    }

    #[test]
    fn the_text_formats_name_the_same_series() {
        let text = encoded(false);
        for line in [
            "# TYPE switchback_deploys_total counter",
            "switchback_deploys_total{app=\"web\",outcome=\"rolled-back\"} 1",
            "switchback_deploys_total{app=\"web\",outcome=\"rollback-failed\"} 0",
            "switchback_rollbacks_total{app=\"web\",outcome=\"ok\"} 0",
            "switchback_release_info{app=\"web\",version=\"1.0.0\"} 1",
            "switchback_deploy_duration_seconds_bucket{app=\"web\",le=\"2.5\"} 3",
            "switchback_deploy_duration_seconds_bucket{app=\"web\",le=\"+Inf\"} 3",
            "switchback_deploy_duration_seconds_count{app=\"web\"} 3",
            "switchback_checks_total{app=\"web\",check=\"http \\\"x\\\"\",result=\"pass\"} 4",
            "switchback_last_poll_timestamp_seconds{app=\"web\"} 1700000000.0",
            "switchback_last_poll_result{app=\"web\",result=\"unchanged\"} 1",
            "switchback_delivery_window_seconds{app=\"web\"} 2592000",
            "switchback_delivery_deploys{app=\"web\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        // No change failure rate without deploys in the window (the sample's figures have none).
        assert!(!text.contains("switchback_change_failure_rate{"), "{text}");
        let om = encoded(true);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.lines().any(|l| l == "# TYPE switchback_deploys counter"), "{om}");
        assert!(om.lines().any(|l| l == "switchback_deploys_total{app=\"web\",outcome=\"ok\"} 2"), "{om}");
        assert!(om.lines().any(|l| l == "switchback_release_info{app=\"web\",version=\"1.0.0\"} 1"), "{om}");
    }
}
