//! Restarts that drop nothing: the shipped example units of `systemd/examples/` under a real systemd (a
//! `systemd-nspawn` container, see `nspawn.rs`), with the shipped agent unit deploying the demo service through
//! them, while the host keeps a steady load on the app (some of its requests taking 200 ms, so that restarts find
//! requests in flight): a healthy deploy, an unhealthy deploy rolled back on its own, and a manual rollback. Not
//! one request may fail. Two patterns: `web.socket` + `web.service` (systemd holds the socket, each deploy or
//! rollback restarts the service) and `web-reload.service` with `reload = true` (the app re-executes itself in
//! place, keeping its socket).
//!
//! The example files are bound in as they are; the test changes only what must differ, the way the examples say
//! to: a drop-in moves the socket to a free port. The releases ship `bin/web` (the units' `ExecStart=`), a script
//! that executes the demo service (`switchback demo-service serve`) in its place.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{free_port, Out, BIN};
use crate::nspawn::{get, rootfs, signing_key, Bind, Container};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// Concurrent clients, each making one request per connection, one after another with a short pause.
const CLIENTS: usize = 6;
const PAUSE: Duration = Duration::from_millis(10);
/// Of those, clients whose requests take SLOW_MS each (`/sleep/MS`), so that restarts find requests in flight.
const SLOW_CLIENTS: usize = 2;
const SLOW_MS: u64 = 200;
/// A request that has no answer within this is a failure (a timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds of the load, whatever happens: requests per client and the time it may run.
const MAX_PER_CLIENT: usize = 20_000;
const MAX_LOAD: Duration = Duration::from_secs(150);
/// Requests each phase must have had answered, so that a phase without load cannot pass.
const MIN_PER_PHASE: usize = 100;

/// One request of the load: slow or not, when it started and ended, and the version that answered or what went
/// wrong.
struct Sample {
    client: usize,
    slow: bool,
    start: Instant,
    end: Instant,
    result: Result<String, String>,
}

/// `GET PATH` on a new connection: the version in `hello from VERSION`, or why it failed (connection refused or
/// reset, a timeout, a status other than 200, an answer cut short).
fn request(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(REQUEST_TIMEOUT)).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| format!("read: {e}"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no complete answer: {text:?}"))?;
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(format!("not 200: {head:?}"));
    }
    body.trim().strip_prefix("hello from ").map(str::to_owned).ok_or_else(|| format!("unexpected body: {body:?}"))
}

/// The steady load: CLIENTS threads until `stop` (or the bounds above).
fn load(port: u16, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Vec<Sample>>> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let began = Instant::now();
    (0..CLIENTS)
        .map(|i| {
            let stop = stop.clone();
            let slow = i < SLOW_CLIENTS;
            let path = if slow { format!("/sleep/{SLOW_MS}") } else { "/".to_owned() };
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) && samples.len() < MAX_PER_CLIENT && began.elapsed() < MAX_LOAD {
                    let start = Instant::now();
                    let result = request(addr, &path);
                    samples.push(Sample { client: i, slow, start, end: Instant::now(), result });
                    std::thread::sleep(PAUSE);
                }
                samples
            })
        })
        .collect()
}

/// A phase of the run: its name, when it started and ended, and the versions that must answer in it, in order
/// (one process stops serving before the next starts, so no client gets an answer from a version after one from
/// a later version).
struct Phase {
    name: &'static str,
    from: Instant,
    to: Instant,
    versions: &'static [&'static str],
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `switchback status web --json` inside the container: the app's entry.
fn status(c: &Container) -> serde_json::Value {
    let o = c.exec(&["switchback", "status", "web", "--json"]);
    assert_eq!(o.code, 0, "switchback status failed inside the container: {o:#?}");
    o.json()["apps"][0].clone()
}

/// Polls the status until `done` holds (the panic shows the last one).
#[track_caller]
fn wait_status(c: &Container, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let timeout = Duration::from_secs(40);
    let start = Instant::now();
    loop {
        let s = status(c);
        if done(&s) {
            return;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}; last status: {s:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// On `version`, checked healthy, nothing in flight.
fn settled_on(s: &serde_json::Value, version: &str) -> bool {
    s["current"] == version
        && s["in_flight"].is_null()
        && s["last_health"]["version"] == version
        && s["last_health"]["healthy"] == true
}

/// Publishes a release to the channel the agent follows: the demo service as `bin/web`, `health` what /healthz
/// answers.
fn publish(dir: &Path, port: u16, version: &str, health: u16) {
    let release = dir.join(format!("release-{version}"));
    std::fs::create_dir_all(release.join("bin")).unwrap();
    std::fs::write(release.join("version.txt"), version).unwrap();
    std::fs::write(release.join("health"), health.to_string()).unwrap();
    // `--port` is for a start without a socket from systemd; under web.socket the demo takes fd 3.
    let script = format!(
        "#!/bin/sh\n# The app of this release: the demo service, in this process (exec keeps the pid systemd \
         passed the socket to).\nexec /usr/bin/switchback demo-service serve --dir /srv/web/current --port {port}\n"
    );
    std::fs::write(release.join("bin/web"), script).unwrap();
    std::fs::set_permissions(release.join("bin/web"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = Command::new(BIN)
        .args(["publish", "--app", "web", "--channel", "production", "--version", version])
        .arg("--to")
        .arg(format!("file://{}", dir.join("bucket").display()))
        .arg("--key")
        .arg(dir.join("signing.key"))
        .arg(&release)
        .env_remove("SWITCHBACK_CONFIG")
        .output()
        .map(Out::from)
        .unwrap();
    assert_eq!(o.code, 0, "publish {version}: {o:#?}");
}

/// `systemd-analyze verify` accepts the example units as shipped, but for the app's program, which must exist for
/// verify: `/bin/true` stands in for it. It exits 0 on mere warnings, so any output on stderr fails the test too.
#[test]
fn the_example_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["web.socket", "web.service", "web-reload.service"];
    for name in names {
        let unit = std::fs::read_to_string(Path::new(REPO).join("systemd/examples").join(name)).unwrap();
        assert!(unit.contains("/srv/web/current/bin/web") || name == "web.socket", "{name} runs the app");
        std::fs::write(dir.path().join(name), unit.replace("/srv/web/current/bin/web", "/bin/true")).unwrap();
    }
    let out = Command::new("systemd-analyze").arg("verify").args(names).current_dir(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

/// Which of the shipped patterns a run boots.
#[derive(Clone, Copy, PartialEq)]
enum Pattern {
    /// `web.socket` + `web.service`: systemd holds the socket, each deploy or rollback restarts the service.
    Socket,
    /// `web-reload.service` with `reload = true`: the app holds its socket and re-executes itself on SIGHUP.
    Reload,
}

#[test]
fn socket_activated_app_drops_no_request_through_deploys_and_rollbacks() {
    let Run { c, first, .. } = &under_load(Pattern::Socket);
    // Each deploy and rollback restarted the service (a new process from the new release) and the socket stayed.
    let journal = c.journal(&["web.service"]);
    assert_eq!(journal.matches("Started web.service").count(), 5, "v1, v2, v3, v2 again, v1 again: {journal}");
    let socket = c.journal(&["web.socket"]);
    assert_eq!(socket.matches("Listening on").count(), 1, "web.socket was never restarted: {socket}");
    assert_eq!(c.prop("web.service", "NRestarts"), "0");
    assert_ne!(&c.prop("web.service", "MainPID"), first, "a new process");
}

#[test]
fn reloaded_app_drops_no_request_through_deploys_and_rollbacks() {
    let Run { c, first, .. } = &under_load(Pattern::Reload);
    // Started once (by the first deploy), then each deploy and rollback reloaded it: the same process all along.
    let journal = c.journal(&["web-reload.service"]);
    assert_eq!(journal.matches("Started web-reload.service").count(), 1, "{journal}");
    assert_eq!(journal.matches("Reloaded web-reload.service").count(), 4, "v2, v3, v2 again, v1 again: {journal}");
    assert_eq!(c.prop("web-reload.service", "NRestarts"), "0");
    assert_eq!(&c.prop("web-reload.service", "MainPID"), first, "the same process");
}

/// Boots the pattern's units, deploys v1, then keeps the load on through a healthy deploy (v2), an unhealthy one
/// (v3, rolled back to v2) and a manual rollback (to v1); asserts that no request failed, prints the figures.
fn under_load(pattern: Pattern) -> Run {
    let started = Instant::now();
    let rootfs = rootfs();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let port = free_port();
    let public = signing_key(p);
    std::fs::create_dir(p.join("bucket")).unwrap();
    let service = match pattern {
        Pattern::Socket => "unit = \"web.service\"",
        Pattern::Reload => "unit = \"web-reload.service\"\nreload = true",
    };
    std::fs::write(
        p.join("switchback.toml"),
        format!(
            r#"[agent]
state_dir = "/var/lib/switchback"
poll_interval = "500ms"

[apps.web]
root = "/srv/web"
owner = "www-data"
source = "file:///srv/bucket/web"
trusted_keys = ["{public}"]

[apps.web.service]
{service}
timeout = "30s"

[[apps.web.checks]]
http = "http://127.0.0.1:{port}/healthz"
expect_status = 200
timeout = "1s"

[apps.web.health]
interval = "200ms"
healthy_after = 2
deadline = "3s"
"#
        ),
    )
    .unwrap();
    let examples = Path::new(REPO).join("systemd/examples");
    let mut binds = vec![
        Bind::ro(BIN, "/usr/bin/switchback"),
        Bind::ro(Path::new(REPO).join("systemd/switchback.service"), "/etc/systemd/system/switchback.service"),
        Bind::ro(p.join("switchback.toml"), "/etc/switchback/switchback.toml"),
        Bind::ro(p.join("bucket"), "/srv/bucket"),
    ];
    let unit = match pattern {
        Pattern::Socket => {
            // The one change to the shipped units, as web.socket says to make it: the socket on a free port.
            std::fs::create_dir(p.join("web.socket.d")).unwrap();
            std::fs::write(
                p.join("web.socket.d/10-test.conf"),
                format!("[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n"),
            )
            .unwrap();
            binds.extend([
                Bind::ro(examples.join("web.socket"), "/etc/systemd/system/web.socket"),
                Bind::ro(examples.join("web.service"), "/etc/systemd/system/web.service"),
                Bind::ro(p.join("web.socket.d"), "/etc/systemd/system/web.socket.d"),
            ]);
            "web.service"
        }
        // The app binds the port it is given (`bin/web` passes it) and keeps it across its re-executions.
        Pattern::Reload => {
            binds.push(Bind::ro(examples.join("web-reload.service"), "/etc/systemd/system/web-reload.service"));
            "web-reload.service"
        }
    };
    let c = Container::boot(&rootfs, &p.join("nspawn.log"), &binds);
    if pattern == Pattern::Socket {
        c.ok(&["systemctl", "start", "web.socket"]);
        assert_eq!(c.prop("web.socket", "Listen"), format!("127.0.0.1:{port} (Stream)"));
    }
    c.ok(&["systemctl", "start", "switchback.service"]);
    assert_eq!(c.prop(unit, "KillMode"), "mixed");

    publish(p, port, "v1", 200);
    wait_status(&c, "v1 to be deployed", |s| settled_on(s, "v1"));
    assert_eq!(get(port, "/"), Some((200, "hello from v1".into())));
    let first = c.prop(unit, "MainPID");
    assert_eq!(c.ok(&["readlink", &format!("/proc/{first}/cwd")]).trim(), "/srv/web/releases/v1");
    assert_eq!(c.ok(&["stat", "-c", "%U", &format!("/proc/{first}")]).trim(), "www-data");

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(port, stop.clone());
    let mut phases = Vec::new();
    let mut phase = |name: &'static str, versions: &'static [&'static str], run: &dyn Fn()| {
        let from = Instant::now();
        // A moment of load on the release before the change opens each phase, one on the settled release closes it.
        std::thread::sleep(Duration::from_millis(300));
        run();
        std::thread::sleep(Duration::from_millis(500));
        phases.push(Phase { name, from, to: Instant::now(), versions });
    };
    phase("warm-up on v1", &["v1"], &|| {});
    phase("deploy v2 (healthy)", &["v1", "v2"], &|| {
        publish(p, port, "v2", 200);
        wait_status(&c, "v2 to be deployed", |s| settled_on(s, "v2"));
    });
    phase("deploy v3 (unhealthy, rolled back to v2)", &["v2", "v3", "v2"], &|| {
        publish(p, port, "v3", 500);
        wait_status(&c, "v3 to be rolled back", |s| {
            settled_on(s, "v2") && s["bad"].as_array().is_some_and(|b| b.iter().any(|b| b["version"] == "v3"))
        });
    });
    phase("manual rollback to v1", &["v2", "v1"], &|| {
        let o = c.exec(&["switchback", "rollback", "web", "--reason", "zero-downtime test"]);
        assert_eq!(o.code, 0, "switchback rollback: {o:#?}");
        wait_status(&c, "the rollback to v1", |s| settled_on(s, "v1"));
    });
    stop.store(true, Ordering::Relaxed);
    let samples: Vec<Sample> = clients.into_iter().flat_map(|h| h.join().unwrap()).collect();

    // The figures, then the verdicts.
    let mut report = String::new();
    let mut failures = Vec::new();
    let mut verdicts = Vec::new();
    for ph in &phases {
        let in_phase: Vec<&Sample> = samples.iter().filter(|s| s.start >= ph.from && s.start < ph.to).collect();
        let failed: Vec<&&Sample> = in_phase.iter().filter(|s| s.result.is_err()).collect();
        let mut latencies: Vec<Duration> = in_phase.iter().filter(|s| !s.slow).map(|s| s.end - s.start).collect();
        latencies.sort();
        let slow: Vec<Duration> = in_phase.iter().filter(|s| s.slow).map(|s| s.end - s.start).collect();
        // Each client's answers in its own order (it makes one request after another), each run of answers from
        // one version counted once. (Answers of different clients are not ordered by when the test saw them: a
        // client thread may run late.)
        let mut sequences: Vec<Vec<&str>> = vec![Vec::new(); CLIENTS];
        for s in &in_phase {
            if let Ok(v) = s.result.as_deref() {
                if sequences[s.client].last() != Some(&v) {
                    sequences[s.client].push(v);
                }
            }
        }
        let answered: Vec<String> = ph
            .versions
            .iter()
            .enumerate()
            .filter(|(i, v)| !ph.versions[..*i].contains(v))
            .map(|(_, v)| format!("{v} {}", in_phase.iter().filter(|s| s.result.as_deref() == Ok(*v)).count()))
            .collect();
        report.push_str(&format!(
            "  {:<42} {:>5} requests ({:>2} slow) in {:>4.1}s, {} failed; GET / p50 {:>6.1?}, p99 {:>6.1?}, max \
             {:>6.1?}; slow max {:>6.1?}; answers {}\n",
            ph.name,
            in_phase.len(),
            slow.len(),
            (ph.to - ph.from).as_secs_f64(),
            failed.len(),
            latencies.first().map_or(Duration::ZERO, |_| percentile(&latencies, 0.5)),
            latencies.first().map_or(Duration::ZERO, |_| percentile(&latencies, 0.99)),
            latencies.last().copied().unwrap_or_default(),
            slow.iter().max().copied().unwrap_or_default(),
            answered.join(", "),
        ));
        for f in failed {
            failures.push(format!(
                "{} at +{:.3}s: {}",
                ph.name,
                (f.start - ph.from).as_secs_f64(),
                f.result.as_ref().unwrap_err()
            ));
        }
        verdicts.push((ph, in_phase.len(), slow.len(), sequences));
    }
    let mut latencies: Vec<Duration> = samples.iter().filter(|s| !s.slow).map(|s| s.end - s.start).collect();
    latencies.sort();
    eprintln!(
        "zero-downtime load on {unit} ({CLIENTS} clients, {SLOW_CLIENTS} of them on /sleep/{SLOW_MS}, a new connection \
         per request): {} requests, {} failed; GET / p50 {:.1?}, max {:.1?}\n{report}",
        samples.len(),
        failures.len(),
        percentile(&latencies, 0.5),
        latencies.last().unwrap(),
    );
    for (ph, n, slow, sequences) in verdicts {
        assert!(n >= MIN_PER_PHASE && slow >= 2, "only {n} requests ({slow} slow) during {}", ph.name);
        // Every version of the phase answered someone; each client saw them in the phase's order, and the last.
        for v in ph.versions {
            assert!(sequences.iter().any(|seq| seq.contains(v)), "{v} never answered during {}", ph.name);
        }
        for seq in &sequences {
            let mut expected = ph.versions.iter();
            let in_order = seq.iter().all(|v| expected.any(|e| e == v));
            assert!(
                in_order && seq.last() == ph.versions.last(),
                "a client saw {seq:?} during {}, not in the order {:?}",
                ph.name,
                ph.versions
            );
        }
    }
    assert!(failures.is_empty(), "{} requests failed:\n  {}\n{report}", failures.len(), failures.join("\n  "));
    // The process that serves runs from v1's release directory.
    let pid = c.prop(unit, "MainPID");
    assert_eq!(c.ok(&["readlink", &format!("/proc/{pid}/cwd")]).trim(), "/srv/web/releases/v1");
    eprintln!("zero-downtime test of {unit} took {:?}", started.elapsed());
    Run { c, _dir: dir, first }
}

/// What a run leaves for its test to look at.
struct Run {
    /// Declared first: stopped before the files bound into it are removed.
    c: Container,
    _dir: tempfile::TempDir,
    /// The app's main pid once v1 was first deployed.
    first: String,
}
