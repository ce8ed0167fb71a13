//! Real components for the daemon tests: a Garage S3 server and an Azurite blob server on loopback (both installed
//! by `tests/run`), a TCP proxy in front of one that records requests and can cut a response short, and a running
//! `switchback daemon`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{free_port, Host, Out, BIN};

/// Waits until `f` holds, polling every 100 ms; panics with `what` after `timeout`.
#[track_caller]
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// This host's clock as a Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The sequence of the manifest the app last accepted (`channel.sequence` in `status --json`).
pub fn accepted_sequence(host: &Host) -> u64 {
    let st = host.run(&["status", "web", "--json"]).json();
    st["apps"][0]["channel"]["sequence"].as_u64().unwrap_or_else(|| panic!("no manifest accepted yet: {st:#}"))
}

/// Waits until this host's clock is past `sequence`. Sequences are Unix times, and a publish that cannot trust
/// the channel's own (signed by another key, unsigned, far ahead, or a new base) takes the clock's: to be
/// accepted, it must be above the one the agent accepted last.
#[track_caller]
pub fn wait_for_clock_past(sequence: u64) {
    wait_for(&format!("the clock to pass sequence {sequence}"), Duration::from_secs(10), || unix_now() > sequence);
}

/// Waits until the daemon has finished the round of its loop that it is in at this call (the inbox, the poll, a
/// deploy or a hold, then its idle check of the current release): its idle check, stamped to the second when
/// done (`daemon.health.at` in `status --json`), is newer than the second of the call. Whatever it decided before
/// the call has then been carried out. Needs checks configured and a current release.
#[track_caller]
pub fn wait_for_a_round(host: &Host) {
    let called = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    wait_for("the daemon to finish a round of its loop", Duration::from_secs(30), || {
        let st = host.run(&["status", "web", "--json"]).json();
        // RFC 3339 UTC times of the same form compare as strings.
        st["apps"][0]["daemon"]["health"]["at"].as_str().is_some_and(|at| at > called.as_str())
    });
}

fn garage_bin() -> PathBuf {
    if let Some(p) =
        std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|d| d.join("garage")).find(|p| p.is_file())
    {
        return p;
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/bin/garage");
    assert!(local.is_file(), "garage is not installed: run tests/run, which installs it (see TEST-INFRA in README)");
    local
}

/// A single-node Garage with one bucket and one key, on free loopback ports. Stopped (and its data removed) on
/// drop.
pub struct Garage {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub s3_port: u16,
    admin_port: u16,
    rpc_port: u16,
    pub key_id: String,
    pub secret: String,
    pub bucket: String,
}

fn hex(n: usize) -> String {
    (0..n).map(|_| format!("{:x}", fastrand::u8(0..16))).collect()
}

impl Garage {
    pub fn start() -> Garage {
        let mut g = Garage {
            dir: tempfile::tempdir().unwrap(),
            child: None,
            s3_port: free_port(),
            admin_port: free_port(),
            rpc_port: free_port(),
            key_id: format!("GK{}", hex(24)),
            secret: hex(64),
            bucket: "releases".to_owned(),
        };
        let d = g.dir.path();
        std::fs::write(
            d.join("garage.toml"),
            format!(
                "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"lmdb\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.garage.localhost\"\n\
                 [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\nadmin_token = \"{token}\"\n",
                meta = d.join("meta").display(),
                data = d.join("data").display(),
                rpc = g.rpc_port,
                secret = hex(64),
                s3 = g.s3_port,
                admin = g.admin_port,
                token = hex(32),
            ),
        )
        .unwrap();
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("garage.log")).unwrap();
        let child = Command::new(garage_bin())
            .arg("-c")
            .arg(d.join("garage.toml"))
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.key_id)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret)
            .env("GARAGE_DEFAULT_BUCKET", &self.bucket)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting garage");
        self.child = Some(child);
        let admin = self.admin_port;
        wait_for("garage to answer its health check", Duration::from_secs(30), || {
            http_status(admin, "/health") == Some(200)
        });
        // The default bucket and key are set up just after the health check turns green.
        wait_for("garage's default bucket", Duration::from_secs(30), || self.ls().is_ok());
    }

    /// Stops the server (SIGTERM), as in an outage. Its data stays for [`Garage::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let start = Instant::now();
            while c.try_wait().unwrap().is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Environment for a process that talks to the server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret.clone()),
            ("AWS_REGION".into(), "garage".into()),
        ]
    }

    /// An object store client for the test itself (to tamper with objects).
    pub fn client(&self, endpoint: &str) -> Bucket {
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region("garage")
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .build()
            .unwrap();
        Bucket {
            store: Arc::new(store),
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        }
    }

    fn ls(&self) -> Result<(), String> {
        self.client(&self.endpoint()).try_list()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Azurite's well-known development account (public, documented; it only works against the emulator).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// An Azurite blob server (the Azure Storage emulator, installed by `tests/run` with npm) on a free loopback port,
/// in memory, with one container; stopped on drop.
pub struct Azurite {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
    pub container: String,
}

impl Azurite {
    pub fn start() -> Azurite {
        let port = free_port();
        let bin = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join("azurite-blob"))
            .find(|p| p.is_file())
            .expect("azurite-blob is not on PATH: run the tests with tests/run, which installs it");
        // Data stays in memory; the working directory is its own in case it writes anything there.
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("azurite.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting azurite-blob");
        let mut az = Azurite { child, _dir: dir, port, container: "releases".to_owned() };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let gone = az.child.try_wait().unwrap().is_some();
            if gone || start.elapsed() > Duration::from_secs(30) {
                panic!("azurite did not come up: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        az.create_container();
        az
    }

    /// The account's endpoint (path style, as the emulator wants it) at `base` (the server, or a proxy before it).
    pub fn endpoint(base: &str) -> String {
        format!("{base}/{AZURITE_ACCOUNT}")
    }

    /// Environment for a process that talks to the server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_STORAGE_ACCOUNT_NAME".into(), AZURITE_ACCOUNT.into()),
            ("AZURE_STORAGE_ACCOUNT_KEY".into(), AZURITE_KEY.into()),
        ]
    }

    /// Creates the container with a request signed with the account key (object_store does not create
    /// containers): the Shared Key scheme, HMAC-SHA256 over the canonical request.
    fn create_container(&self) {
        use base64::Engine;
        use hmac::Mac;
        let b64 = base64::engine::general_purpose::STANDARD;
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let version = "2021-08-06";
        let path = format!("/{AZURITE_ACCOUNT}/{}", self.container);
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}{path}\nrestype:container"
        );
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&b64.decode(AZURITE_KEY).unwrap()).unwrap();
        mac.update(to_sign.as_bytes());
        let signature = b64.encode(mac.finalize().into_bytes());
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "PUT {path}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\n\
             Authorization: SharedKey {AZURITE_ACCOUNT}:{signature}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 201"), "creating the container failed: {answer}");
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking face on an object store, for tests.
pub struct Bucket {
    store: Arc<dyn object_store::ObjectStore>,
    rt: tokio::runtime::Runtime,
}

impl Bucket {
    pub fn get(&self, key: &str) -> Vec<u8> {
        use object_store::ObjectStoreExt;
        self.rt.block_on(async { self.store.get(&key.into()).await.unwrap().bytes().await.unwrap().to_vec() })
    }

    pub fn put(&self, key: &str, bytes: &[u8]) {
        use object_store::ObjectStoreExt;
        self.rt.block_on(async { self.store.put(&key.into(), bytes.to_vec().into()).await.unwrap() });
    }

    fn try_list(&self) -> Result<(), String> {
        use futures_util::StreamExt;
        self.rt.block_on(async {
            let mut s = self.store.list(None);
            while let Some(item) = s.next().await {
                item.map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// A TCP proxy in front of a server: it records the head of every request (method, path, headers) and the status
/// line of every response, and can cut the next large response short (a dropped connection mid-download).
pub struct Proxy {
    pub port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Cut responses (counted from the start of their connection) that grow past this many bytes (0: never)...
    cut_after: Arc<AtomicU64>,
    /// ...this many times.
    cuts_left: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let cut_after = Arc::new(AtomicU64::new(0));
        let cuts_left = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, c, n, s) = (log.clone(), cut_after.clone(), cuts_left.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        };
                        pump(client, server, l.clone(), c.clone(), n.clone());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy { port, log, cut_after, cuts_left, stop }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts the next `times` connections whose responses grow past `bytes`.
    pub fn cut_responses_after(&self, bytes: u64, times: u64) {
        self.cut_after.store(bytes, Ordering::SeqCst);
        self.cuts_left.store(times, Ordering::SeqCst);
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Requests (first lines) seen so far whose request line contains `needle`.
    pub fn requests(&self, needle: &str) -> Vec<String> {
        self.lines().into_iter().filter(|l| !l.starts_with("HTTP/") && l.contains(needle)).collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pump(client: TcpStream, server: TcpStream, log: Arc<Mutex<Vec<String>>>, cut: Arc<AtomicU64>, left: Arc<AtomicU64>) {
    // Both directions share one descriptor per socket (`&TcpStream` reads and writes): a fleet of a thousand
    // agents keeps thousands of connections open through here.
    let (client, server) = (Arc::new(client), Arc::new(server));
    let (c_read, s_write) = (client.clone(), server.clone());
    let (s_read, c_write) = (server, client);
    let up_log = log.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match (&*c_read).read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let text = String::from_utf8_lossy(&buf[..n]);
            if let Some(head) = text.split("\r\n\r\n").next() {
                let first = head.lines().next().unwrap_or("");
                if ["GET ", "HEAD ", "PUT ", "POST ", "DELETE "].iter().any(|m| first.starts_with(m)) {
                    // One entry per request: the request line plus the headers that matter here.
                    let extra: Vec<&str> = head
                        .lines()
                        .filter(|l| {
                            let l = l.to_ascii_lowercase();
                            l.starts_with("range:") || l.starts_with("if-none-match:")
                        })
                        .collect();
                    up_log.lock().unwrap().push(format!("{first} {}", extra.join(" ")));
                }
            }
            if (&*s_write).write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let mut sent = 0u64;
        loop {
            let n = match (&*s_read).read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let text = String::from_utf8_lossy(&buf[..n.min(64)]).to_string();
            if text.starts_with("HTTP/") {
                log.lock().unwrap().push(text.lines().next().unwrap_or("").to_owned());
            }
            // A connection whose responses reach the armed limit is cut there, while cuts are left.
            let limit = cut.load(Ordering::SeqCst);
            let cutting = limit > 0
                && sent + n as u64 > limit
                && left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1)).is_ok();
            let n = if cutting { (limit - sent) as usize } else { n };
            if (&*c_write).write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n as u64;
            if cutting {
                let _ = c_write.shutdown(Shutdown::Both);
                let _ = s_read.shutdown(Shutdown::Both);
                break;
            }
        }
        let _ = c_write.shutdown(Shutdown::Write);
    });
}

/// A running `switchback daemon` for a host, with its stderr kept in a file. SIGTERM and wait on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(host: &Host, env: &[(String, String)]) -> Daemon {
        let log = host.path().join(format!("daemon-{}.log", fastrand::u32(..)));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&host.config)
            .arg("daemon")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("SWITCHBACK_LOG", "switchback=debug,warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Daemon { child: Some(child), log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id();
        Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
    }

    /// SIGTERM, then the exit code.
    pub fn stop(&mut self) -> i32 {
        let Some(mut c) = self.child.take() else { return -1 };
        Command::new("kill").arg("-TERM").arg(c.id().to_string()).status().unwrap();
        let start = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                let _ = c.wait();
                panic!("the daemon did not stop within 30 s of SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `switchback keygen` into the host's directory; returns (PREFIX.key path, public key).
pub fn keygen(host: &Host, name: &str) -> (PathBuf, String) {
    let prefix = host.path().join(name);
    let out = host.run(&["keygen", "--out", prefix.to_str().unwrap(), "--json"]);
    out.expect(0);
    let pk = out.json()["public_key"].as_str().unwrap().to_owned();
    (prefix.with_extension("key"), pk)
}

/// Makes a key pair in the host's directory and puts its public key where the config says PUBLIC_KEY.
pub fn trust_new_key(host: &Host) -> PathBuf {
    let (key, pk) = keygen(host, "ci");
    let cfg = std::fs::read_to_string(&host.config).unwrap().replace("PUBLIC_KEY", &pk);
    std::fs::write(&host.config, cfg).unwrap();
    key
}

/// `switchback publish --to BASE --app web --channel production --version V --key KEY EXTRA...` (EXTRA ends with
/// the directory to pack, unless it promotes).
pub fn publish(host: &Host, env: &[(String, String)], base: &str, key: &Path, version: &str, extra: &[&str]) -> Out {
    let key = key.to_str().unwrap();
    let mut all: Vec<&str> =
        vec!["publish", "--to", base, "--app", "web", "--channel", "production", "--version", version, "--key", key];
    all.extend_from_slice(extra);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    host.run_env(&all, &env)
}

/// Writes a demo-service release tree (version.txt, health) under the host and returns its path.
pub fn release_dir(host: &Host, version: &str, health: u16) -> PathBuf {
    let dir = host.path().join("build").join(version);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("version.txt"), version).unwrap();
    std::fs::write(dir.join("health"), health.to_string()).unwrap();
    dir
}
