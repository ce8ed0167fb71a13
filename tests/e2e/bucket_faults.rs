//! Bucket faults: the daemon against a small HTTP source that misbehaves on purpose (server errors, a trickling
//! body, a body larger than the manifest says, an endless body) and against clocks far off. In every case
//! nothing unverified or partial is activated, the error is clear, and the daemon stays alive.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bucket::{accepted_sequence, publish, release_dir, trust_new_key, wait_for, wait_for_clock_past, Daemon};
use crate::harness::{Host, Service};

const HEALTH: &str = "start_period = \"0s\"\ninterval = \"100ms\"\nhealthy_after = 2\ndeadline = \"5s\"";
const LIVE: Duration = Duration::from_secs(30);

/// How the server answers requests for artifacts (`*.tar.zst`); manifests are affected only by `Errors`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Every request answers 503.
    Errors,
    /// Artifacts are sent at this many bytes per second.
    Trickle(u32),
    /// Artifacts carry this many extra bytes (and say so in Content-Length).
    Oversize(usize),
    /// Artifacts never end (chunked, no length).
    Endless,
}

/// Serves the files under `root` over HTTP/1.1 (one request per connection), with ETag/If-None-Match and Range.
struct FaultyServer {
    port: u16,
    fault: Arc<Mutex<Fault>>,
    artifact_requests: Arc<AtomicU32>,
    /// Requests for the channel manifest: the daemon's polls (with a retry or two when they fail).
    manifest_requests: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
}

impl FaultyServer {
    fn start(root: PathBuf) -> FaultyServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let fault = Arc::new(Mutex::new(Fault::None));
        let artifact_requests = Arc::new(AtomicU32::new(0));
        let manifest_requests = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, n, m, s) = (fault.clone(), artifact_requests.clone(), manifest_requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (root, f, n, m, s) = (root.clone(), f.clone(), n.clone(), m.clone(), s.clone());
                        std::thread::spawn(move || {
                            let _ = serve(conn, &root, &f, (&n, &m), &s);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FaultyServer { port, fault, artifact_requests, manifest_requests, stop }
    }

    fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Answers one request; `(artifacts, manifests)` count the requests for each.
fn serve(
    conn: TcpStream,
    root: &Path,
    fault: &Mutex<Fault>,
    (artifacts, manifests): (&AtomicU32, &AtomicU32),
    stop: &AtomicBool,
) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        headers.push(line.trim().to_ascii_lowercase());
    }
    let header = |name: &str| headers.iter().find_map(|h| h.strip_prefix(name).map(|v| v.trim().to_owned()));
    let mut out = conn;
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let fault = *fault.lock().unwrap();
    let artifact = path.ends_with(".tar.zst");
    if artifact {
        artifacts.fetch_add(1, Ordering::SeqCst);
    }
    if path.ends_with("/channels/production.json") {
        manifests.fetch_add(1, Ordering::SeqCst);
    }
    if fault == Fault::Errors {
        return write!(out, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
    let Ok(body) = std::fs::read(root.join(path.trim_start_matches('/'))) else {
        return write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    let etag =
        format!("\"{:x}-{}\"", body.iter().fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(b as u64)), body.len());
    if header("if-none-match:").is_some_and(|t| t == etag) {
        return write!(out, "HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n");
    }
    let lm = "Last-Modified: Sun, 29 Nov 2026 00:00:00 GMT";
    match (artifact, fault) {
        (true, Fault::Endless) => {
            write!(out, "HTTP/1.1 200 OK\r\n{lm}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")?;
            let chunk = vec![b'x'; 16 << 10];
            while !stop.load(Ordering::Relaxed) {
                write!(out, "{:x}\r\n", chunk.len())?;
                out.write_all(&chunk)?;
                out.write_all(b"\r\n")?;
            }
            Ok(())
        }
        (true, Fault::Oversize(extra)) => {
            let mut b = body.clone();
            b.extend(std::iter::repeat_n(0u8, extra));
            write!(
                out,
                "HTTP/1.1 200 OK\r\n{lm}\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                b.len()
            )?;
            out.write_all(&b)
        }
        _ => {
            let start = header("range:")
                .and_then(|r| r.strip_prefix("bytes=").and_then(|r| r.split('-').next()?.parse::<usize>().ok()))
                .filter(|&s| s < body.len());
            let (status, slice) = match start {
                Some(s) => (
                    format!("206 Partial Content\r\nContent-Range: bytes {s}-{}/{}", body.len() - 1, body.len()),
                    &body[s..],
                ),
                None => ("200 OK".to_owned(), &body[..]),
            };
            write!(
                out,
                "HTTP/1.1 {status}\r\n{lm}\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                slice.len()
            )?;
            match (artifact, fault) {
                (true, Fault::Trickle(rate)) => {
                    for piece in slice.chunks((rate as usize / 10).max(1)) {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        out.write_all(piece)?;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Ok(())
                }
                _ => out.write_all(slice),
            }
        }
    }
}

/// A host whose app follows `http://127.0.0.1:PORT/bucket/web`, served by a faulty server from the host's
/// `bucket` directory (where `publish --to file://...` writes).
struct FaultyHost {
    // Fields drop in this order: the service first (its pidfile lives in the host's directory).
    _svc: Service,
    host: Host,
    server: FaultyServer,
    key: PathBuf,
    base: String,
}

impl FaultyHost {
    fn new(download: &str) -> FaultyHost {
        let (host, svc) = Service::host_with(
            |_| {
                format!(
                    "source = \"http://127.0.0.1:PORT/bucket/web\"\nallow_http = true\ntrusted_keys = [\"PUBLIC_KEY\"]\ndownload = {{ {download} }}\n"
                )
            },
            HEALTH,
            "",
        );
        let server = FaultyServer::start(host.path().to_owned());
        let key = trust_new_key(&host);
        let cfg = std::fs::read_to_string(&host.config).unwrap().replace("PORT", &server.port.to_string());
        std::fs::write(&host.config, cfg).unwrap();
        let base = format!("file://{}/bucket", host.path().display());
        FaultyHost { host, _svc: svc, server, key, base }
    }

    fn publish(&self, version: &str, extra_files: &[(&str, &[u8])]) {
        let dir = release_dir(&self.host, version, 200);
        for (name, data) in extra_files {
            std::fs::write(dir.join(name), data).unwrap();
        }
        publish(&self.host, &[], &self.base, &self.key, version, &[dir.to_str().unwrap()]).expect(0);
    }

    /// Starts the daemon, publishes `version` and waits until it is live.
    fn daemon_on(&self, version: &str) -> Daemon {
        let d = Daemon::start(&self.host, &[]);
        self.publish(version, &[]);
        wait_for(version, LIVE, || self.host.current().as_deref() == Some(version));
        d
    }

    /// Waits until the daemon has polled `n` more times (counted by the server; a failed poll may count twice).
    #[track_caller]
    fn wait_polls(&self, n: u32) {
        let from = self.server.manifest_requests.load(Ordering::SeqCst);
        wait_for(&format!("{n} more polls"), LIVE, || self.server.manifest_requests.load(Ordering::SeqCst) >= from + n);
    }

    fn last_poll(&self) -> String {
        self.host.run(&["status", "web", "--json"]).json()["apps"][0]["daemon"]["last_poll"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Nothing of `version` reached the releases, and `current` is still `on`.
    #[track_caller]
    fn unchanged(&self, version: &str, on: &str) {
        assert_eq!(self.host.current().as_deref(), Some(on));
        assert!(!self.host.release_dirs().contains(&version.to_owned()), "{version} reached the disk");
        let dirs = self.host.release_dirs();
        assert!(!dirs.iter().any(|d| d.starts_with('.')), "staging left over: {dirs:?}");
    }

    fn part_sizes(&self) -> Vec<u64> {
        std::fs::read_dir(self.host.state_dir().join("downloads"))
            .map(|r| r.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).collect())
            .unwrap_or_default()
    }
}

fn noise(n: usize) -> Vec<u8> {
    (0..n).map(|_| fastrand::u8(..)).collect()
}

#[test]
fn server_errors_change_nothing_and_the_daemon_resumes_when_the_bucket_heals() {
    let f = FaultyHost::new("stall = \"2s\", attempts = 2");
    let mut d = f.daemon_on("1.0.0");
    f.server.set(Fault::Errors);
    f.publish("2.0.0", &[]);
    wait_for("a failed poll", LIVE, || f.last_poll().contains("poll failed"));
    assert!(f.last_poll().contains("503"), "the error does not say what the server answered: {}", f.last_poll());
    // And a later one (polls are stamped to the second): the daemon goes on polling while the errors last.
    let first = f.last_poll();
    wait_for("another failed poll", LIVE, || {
        let p = f.last_poll();
        p != first && p.contains("poll failed")
    });
    f.unchanged("2.0.0", "1.0.0");
    assert!(d.alive());
    f.server.set(Fault::None);
    wait_for("2.0.0 after the bucket healed", LIVE, || f.host.current().as_deref() == Some("2.0.0"));
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_trickling_download_is_dropped_and_resumed_later_without_activating_partial_bytes() {
    let f = FaultyHost::new("stall = \"1s\", min_rate = \"4KiB\", attempts = 2, deadline = \"20s\"");
    let mut d = f.daemon_on("1.0.0");
    f.server.set(Fault::Trickle(200));
    f.publish("2.0.0", &[("blob.bin", &noise(256 << 10))]);
    wait_for("the slow download to be dropped", LIVE, || d.log().contains("too slow"));
    wait_for("the download to be given up", LIVE, || d.log().contains("cannot fetch 2.0.0"));
    f.unchanged("2.0.0", "1.0.0");
    assert!(d.alive());
    // The partial bytes wait in downloads/ for a resume; nothing of them is anywhere else.
    let parts = f.part_sizes();
    assert!(parts.iter().all(|&n| n < 256 << 10), "{parts:?}");
    f.server.set(Fault::None);
    wait_for("2.0.0 once the server is fast again", LIVE, || f.host.current().as_deref() == Some("2.0.0"));
    wait_for("the download to be removed after the deploy", LIVE, || f.part_sizes().is_empty());
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_body_larger_than_the_manifest_says_is_refused_and_not_fetched_again() {
    let f = FaultyHost::new("stall = \"2s\"");
    let mut d = f.daemon_on("1.0.0");
    f.server.set(Fault::Oversize(4096));
    f.publish("2.0.0", &[]);
    wait_for("the refusal", LIVE, || d.log().contains("the manifest says"));
    let fetches = f.server.artifact_requests.load(Ordering::SeqCst);
    f.wait_polls(3);
    assert_eq!(f.server.artifact_requests.load(Ordering::SeqCst), fetches, "the refused artifact is fetched again");
    f.unchanged("2.0.0", "1.0.0");
    assert!(d.alive());
    assert_eq!(d.stop(), 0);
}

/// The object store client itself refuses a body without a length; the agent's own cap (never more than the
/// manifest's size) is the second line of defence.
#[test]
fn an_endless_body_never_fills_the_disk_and_changes_nothing() {
    let f = FaultyHost::new("stall = \"2s\", attempts = 2, deadline = \"15s\"");
    let mut d = f.daemon_on("1.0.0");
    f.server.set(Fault::Endless);
    f.publish("2.0.0", &[]);
    let start = Instant::now();
    wait_for("the endless body to be refused", LIVE, || d.log().contains("cannot fetch 2.0.0"));
    let log = d.log();
    let why = log.lines().find(|l| l.contains("cannot fetch 2.0.0")).unwrap_or("").to_owned();
    eprintln!("endless body refused after {:?}: {why}", start.elapsed());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.host.path().join("bucket/web/channels/production.json")).unwrap())
            .unwrap();
    let size = manifest["size"].as_u64().unwrap();
    assert!(f.part_sizes().iter().all(|&n| n <= size), "a download outgrew the manifest's size: {:?}", f.part_sizes());
    f.unchanged("2.0.0", "1.0.0");
    assert!(d.alive());
    assert_eq!(d.stop(), 0);
}

/// `faketime` (libfaketime) shifts the clock of one process.
fn faketime(offset: &str) -> Vec<(String, String)> {
    let lib =
        ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("libfaketime is installed by tests/run");
    vec![
        ("LD_PRELOAD".to_owned(), lib.to_owned()),
        ("FAKETIME".to_owned(), offset.to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
    ]
}

#[test]
fn clocks_far_off_refuse_or_order_manifests_safely() {
    // A host whose clock runs ten years ahead sees every manifest as expired: refused, logged, nothing changes.
    let f = FaultyHost::new("stall = \"2s\"");
    f.publish("1.0.0", &[]);
    let mut d = Daemon::start(&f.host, &faketime("+3650d"));
    wait_for("the refusal of an expired manifest", LIVE, || d.log().contains("expired at"));
    assert_eq!(f.host.current(), None);
    assert!(d.alive());
    assert_eq!(d.stop(), 0);

    // A publisher whose clock runs ten years ahead would push the sequence up and freeze the channel (every later
    // manifest would look like a replay): agents refuse a sequence that far above their clock and say why, and
    // the next publish with a right clock does not trust that sequence either, so the channel moves on.
    let mut d = Daemon::start(&f.host, &[]);
    wait_for("1.0.0", LIVE, || f.host.current().as_deref() == Some("1.0.0"));
    let dir = release_dir(&f.host, "2.0.0", 200);
    let env = faketime("+3650d");
    let out = publish(&f.host, &env, &f.base, &f.key, "2.0.0", &["--json", dir.to_str().unwrap()]);
    let future_seq = out.expect(0).json()["sequence"].as_u64().unwrap();
    wait_for("the refusal of a sequence far ahead", LIVE, || d.log().contains("ahead of this host's clock"));
    assert_eq!(f.host.current().as_deref(), Some("1.0.0"));
    let dir = release_dir(&f.host, "3.0.0", 200);
    // The channel's sequence is not trusted (far ahead): publish takes the clock's.
    wait_for_clock_past(accepted_sequence(&f.host));
    let out = publish(&f.host, &[], &f.base, &f.key, "3.0.0", &["--json", dir.to_str().unwrap()]);
    assert!(out.stderr.contains("ahead of this host's clock"), "publish says why it used the clock: {out:?}");
    let seq = out.expect(0).json()["sequence"].as_u64().unwrap();
    assert!(seq < future_seq, "{seq} must come from the clock, not from {future_seq}");
    wait_for("3.0.0", LIVE, || f.host.current().as_deref() == Some("3.0.0"));
    let s = f.host.run(&["--json", "status", "web"]).json();
    assert_eq!(s["apps"][0]["channel"]["sequence"].as_u64(), Some(seq));
    assert_eq!(d.stop(), 0);
}
