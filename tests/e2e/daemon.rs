//! The daemon against real components: a Garage S3 server (through a recording proxy), the demo HTTP service being
//! health-checked, signed manifests made by `switchback publish`, systemd's notify protocol on our own socket.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::bucket::{
    accepted_sequence, keygen, publish, release_dir, trust_new_key, wait_for, wait_for_a_round, wait_for_clock_past,
    Azurite, Daemon, Garage, Proxy,
};
use crate::harness::{Host, Service};

pub(crate) const HEALTH: &str = "start_period = \"0s\"\ninterval = \"100ms\"\nhealthy_after = 2\ndeadline = \"5s\"";
pub(crate) const LIVE: Duration = Duration::from_secs(30);

/// A host whose app `web` follows channel `production` of a Garage bucket, through a proxy.
pub(crate) struct S3Host {
    // Fields drop in this order: the service first (its pidfile lives in the host's directory).
    pub(crate) svc: Service,
    pub(crate) garage: Garage,
    pub(crate) proxy: Proxy,
    pub(crate) host: Host,
    pub(crate) key: PathBuf,
    pub(crate) env: Vec<(String, String)>,
}

/// Waits until the service answers `/version.txt` from `version` (it restarts after the switch).
pub(crate) fn wait_served(svc: &Service, version: &str) {
    wait_for(&format!("the service to serve {version}"), LIVE, || {
        svc.get("/version.txt").is_some_and(|(code, body)| code == 200 && body.ends_with(version))
    });
}

impl S3Host {
    pub(crate) fn new(health: &str) -> S3Host {
        let garage = Garage::start();
        let proxy = Proxy::start(garage.s3_port);
        let endpoint = proxy.endpoint();
        let (host, svc) = Service::host_with(
            |_| {
                format!(
                    "source = \"s3://{}/web\"\nendpoint = \"{endpoint}\"\nregion = \"garage\"\nallow_http = true\ntrusted_keys = [\"PUBLIC_KEY\"]\n",
                    garage.bucket
                )
            },
            health,
            "",
        );
        let key = trust_new_key(&host);
        let env = garage.env();
        S3Host { garage, proxy, host, svc, key, env }
    }

    pub(crate) fn publish(&self, version: &str, health: u16) {
        let dir = release_dir(&self.host, version, health);
        self.publish_with_key(&self.key, version, &[dir.to_str().unwrap()]).expect(0);
    }

    pub(crate) fn publish_with_key(&self, key: &std::path::Path, version: &str, extra: &[&str]) -> crate::harness::Out {
        let endpoint = self.garage.endpoint();
        let mut args = vec!["--endpoint", &endpoint, "--region", "garage", "--allow-http"];
        args.extend_from_slice(extra);
        publish(&self.host, &self.env, "s3://releases", key, version, &args)
    }

    pub(crate) fn daemon(&self) -> Daemon {
        Daemon::start(&self.host, &self.env)
    }

    pub(crate) fn status(&self) -> serde_json::Value {
        self.host.run(&["status", "web", "--json"]).expect(0).json()["apps"][0].clone()
    }

    pub(crate) fn bad(&self) -> Vec<String> {
        self.status()["bad"].as_array().unwrap().iter().map(|b| b["version"].as_str().unwrap().to_owned()).collect()
    }

    /// What the daemon says it is doing for the app.
    fn activity(&self) -> String {
        self.status()["daemon"]["activity"].as_str().unwrap_or("").to_owned()
    }

    /// The channel polls the proxy has seen (each poll is one GET of the manifest).
    fn polls(&self) -> usize {
        self.proxy.requests("GET /releases/web/channels/production.json ").len()
    }

    /// Waits until the daemon has begun `n` more polls: with 2, what it made of the poll after this call (and
    /// of everything before) has been carried out, and it has polled again.
    #[track_caller]
    fn wait_polls(&self, n: usize) {
        let from = self.polls();
        wait_for(&format!("{n} more polls"), LIVE, || self.polls() >= from + n);
    }

    pub(crate) fn wait_current(&self, version: &str) -> Duration {
        let start = Instant::now();
        wait_for(&format!("current to become {version}"), LIVE, || self.host.current().as_deref() == Some(version));
        let took = start.elapsed();
        // The switch comes before the restart: wait for the service to answer from the new release too.
        wait_served(&self.svc, version);
        took
    }
}

#[test]
fn follows_the_channel_rolls_back_a_bad_release_and_a_manual_rollback_sticks() {
    let s = S3Host::new(HEALTH);
    let mut d = s.daemon();
    s.publish("1.0.0", 200);
    let took = s.wait_current("1.0.0");
    // One poll interval (500 ms, ±10%) plus the deploy's own time (restart and two passes of 100 ms).
    assert!(took < Duration::from_secs(10), "1.0.0 went live {took:?} after publish");

    // A release that fails its checks is rolled back and marked bad; the daemon goes on.
    s.publish("2.0.0", 500);
    wait_for("2.0.0 to be marked bad", LIVE, || s.bad().contains(&"2.0.0".to_owned()));
    // The mark comes just before the switch back: wait for the switch and for the service to answer from it.
    s.wait_current("1.0.0");
    assert_eq!(s.host.current().as_deref(), Some("1.0.0"));
    assert!(d.alive());

    s.publish("3.0.0", 200);
    s.wait_current("3.0.0");

    // A manual rollback while the daemon runs sticks: the channel still names 3.0.0, which is now bad.
    s.host.run(&["rollback", "web", "--reason", "smoke"]).expect(0);
    assert_eq!(s.host.current().as_deref(), Some("1.0.0"));
    // The daemon's next decision holds 3.0.0 as bad, and it polls on without bringing it back.
    wait_for("the daemon to hold 3.0.0 as bad", LIVE, || {
        s.activity().contains("3.0.0 is marked bad") || s.host.current().as_deref() != Some("1.0.0")
    });
    s.wait_polls(2);
    assert_eq!(s.host.current().as_deref(), Some("1.0.0"));
    assert!(s.bad().contains(&"3.0.0".to_owned()));
    let st = s.status();
    assert!(st["daemon"]["activity"].as_str().unwrap().contains("3.0.0 is marked bad"), "{st:#}");
    assert!(!st["daemon"]["last_poll"].as_str().unwrap().is_empty(), "{st:#}");

    // A pin holds the app until unpin.
    s.host.run(&["pin", "web", "1.0.0"]).expect(0);
    s.publish("4.0.0", 200);
    // 4.0.0 is accepted and held for the pin (until then the hold was for 3.0.0, which is bad), poll after poll.
    wait_for("the daemon to hold 4.0.0 for the pin", LIVE, || {
        s.activity().contains("pinned to 1.0.0") || s.host.current().as_deref() != Some("1.0.0")
    });
    s.wait_polls(2);
    assert_eq!(s.host.current().as_deref(), Some("1.0.0"));
    assert!(s.status()["daemon"]["activity"].as_str().unwrap().contains("pinned to 1.0.0"));
    s.host.run(&["unpin", "web"]).expect(0);
    s.wait_current("4.0.0");

    let ops: Vec<String> = s.host.history().iter().map(|e| e["op"].as_str().unwrap().to_owned()).collect();
    for op in ["accept", "deploy", "rollback", "pin", "unpin"] {
        assert!(ops.contains(&op.to_owned()), "history lacks {op}: {ops:?}");
    }
    assert_eq!(d.stop(), 0, "SIGTERM must end the daemon with 0; log:\n{}", d.log());
    assert!(!s.host.state_dir().join("daemon.json").exists(), "the daemon's status file outlived it");
}

#[test]
fn an_idle_poll_is_one_conditional_request() {
    let s = S3Host::new(HEALTH);
    let mut d = s.daemon();
    s.publish("1.0.0", 200);
    s.wait_current("1.0.0");
    // Idle from the first poll answered 304 on. The 4 s that follow are the measure: polls per unit of time.
    wait_for("an idle poll", LIVE, || s.proxy.lines().iter().any(|l| l.starts_with("HTTP/") && l.contains(" 304 ")));
    let mark = s.proxy.lines().len();
    std::thread::sleep(Duration::from_secs(4));
    let lines: Vec<String> = s.proxy.lines()[mark..].to_vec();
    let requests: Vec<&String> = lines.iter().filter(|l| !l.starts_with("HTTP/")).collect();
    let responses: Vec<&String> = lines.iter().filter(|l| l.starts_with("HTTP/")).collect();
    // 4 s at 500 ms ±10%: between 6 and 9 polls.
    assert!((5..=10).contains(&requests.len()), "{} requests in 4 s: {requests:#?}", requests.len());
    for r in &requests {
        assert!(r.starts_with("GET /releases/web/channels/production.json "), "unexpected request {r}");
        assert!(r.to_ascii_lowercase().contains("if-none-match:"), "unconditional poll: {r}");
    }
    assert!(responses.iter().all(|r| r.contains(" 304 ")), "{responses:#?}");
    let rss = std::fs::read_to_string(format!("/proc/{}/status", d.child.as_ref().unwrap().id()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .to_owned();
    eprintln!("idle daemon (test build): {} requests in 4 s, all 304; {rss}", requests.len());
    assert!(d.alive());
}

#[test]
fn refused_manifests_and_a_corrupt_artifact_change_nothing() {
    let s = S3Host::new(HEALTH);
    let mut d = s.daemon();
    let bucket = s.garage.client(&s.garage.endpoint());
    let manifest = "web/channels/production.json";
    let sig = "web/channels/production.json.minisig";
    s.publish("1.0.0", 200);
    s.wait_current("1.0.0");
    let (old_m, old_s) = (bucket.get(manifest), bucket.get(sig));
    let refusal = |what: &str, needle: &str, d: &mut Daemon| {
        wait_for(&format!("the daemon to refuse {what}"), LIVE, || d.log().contains(needle));
        assert!(d.alive(), "the daemon died on {what}");
    };

    // Tampered: the bytes changed after signing.
    let tampered = String::from_utf8(old_m.clone()).unwrap().replace("1.0.0", "6.6.6");
    bucket.put(manifest, tampered.as_bytes());
    refusal("a tampered manifest", "bad signature", &mut d);

    // Signed by a key that is not trusted.
    let other = Host::new();
    let (other_key, _) = keygen(&other, "intruder");
    let dir = release_dir(&s.host, "2.0.0", 200);
    s.publish_with_key(&other_key, "2.0.0", &[dir.to_str().unwrap()]).expect(0);
    refusal("an untrusted key", "not among the trusted_keys", &mut d);
    assert_eq!(s.host.current().as_deref(), Some("1.0.0"));

    // A newer manifest, then the old one copied back: a replay. (The channel's manifest is the intruder's, so
    // publish takes its sequence from the clock.)
    wait_for_clock_past(accepted_sequence(&s.host));
    s.publish("3.0.0", 200);
    s.wait_current("3.0.0");
    bucket.put(sig, &old_s);
    bucket.put(manifest, &old_m);
    refusal("a replayed manifest", "replayed: sequence", &mut d);

    // Expired: signed with a validity of one second, put in place after it ran out.
    let staging = Host::new();
    let base = format!("file://{}", staging.path().join("bucket").display());
    // A new base: its first sequence comes from the clock.
    wait_for_clock_past(accepted_sequence(&s.host));
    let dir4 = release_dir(&s.host, "4.0.0", 200);
    publish(&s.host, &[], &base, &s.key, "4.0.0", &["--expires-in", "1s", dir4.to_str().unwrap()]).expect(0);
    let staged = staging.path().join("bucket/web");
    let staged_manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(staged.join("channels/production.json")).unwrap()).unwrap();
    let expires = humantime::parse_rfc3339_weak(staged_manifest["expires"].as_str().unwrap()).unwrap();
    wait_for("the staged manifest to expire", LIVE, || std::time::SystemTime::now() > expires);
    bucket.put("web/releases/4.0.0.tar.zst", &std::fs::read(staged.join("releases/4.0.0.tar.zst")).unwrap());
    bucket.put(sig, &std::fs::read(staged.join("channels/production.json.minisig")).unwrap());
    bucket.put(manifest, &std::fs::read(staged.join("channels/production.json")).unwrap());
    refusal("an expired manifest", "expired at", &mut d);

    // A valid manifest whose artifact in the bucket is not the one it names (same size, one byte flipped).
    let dir5 = release_dir(&s.host, "5.0.0", 200);
    publish(&s.host, &[], &base, &s.key, "5.0.0", &[dir5.to_str().unwrap()]).expect(0);
    let mut artifact = std::fs::read(staged.join("releases/5.0.0.tar.zst")).unwrap();
    let mid = artifact.len() / 2;
    artifact[mid] ^= 0xff;
    bucket.put("web/releases/5.0.0.tar.zst", &artifact);
    bucket.put(sig, &std::fs::read(staged.join("channels/production.json.minisig")).unwrap());
    bucket.put(manifest, &std::fs::read(staged.join("channels/production.json")).unwrap());
    refusal("a corrupt artifact", "the manifest says", &mut d);
    s.wait_polls(2);

    // Nothing changed on the host: still 3.0.0, no release of the refused versions, no download left over.
    assert_eq!(s.host.current().as_deref(), Some("3.0.0"));
    assert!(s.svc.get("/version.txt").unwrap().1.ends_with("3.0.0"));
    let dirs = s.host.release_dirs();
    for v in ["2.0.0", "4.0.0", "5.0.0", "6.6.6"] {
        assert!(!dirs.contains(&v.to_owned()), "{v} reached the disk: {dirs:?}");
    }
    let downloads = s.host.state_dir().join("downloads");
    let left: Vec<_> =
        std::fs::read_dir(&downloads).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "downloads left over: {left:?}");
    // The corrupt artifact is not fetched again at every poll.
    let fetches = s.proxy.requests("GET /releases/web/releases/5.0.0.tar.zst").len();
    s.wait_polls(3);
    assert_eq!(s.proxy.requests("GET /releases/web/releases/5.0.0.tar.zst").len(), fetches);
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_dropped_download_resumes_with_a_range_request() {
    let s = S3Host::new(HEALTH);
    let mut d = s.daemon();
    let dir = release_dir(&s.host, "1.0.0", 200);
    // 3 MiB that zstd cannot shrink, so the artifact is large enough to cut.
    let noise: Vec<u8> = (0..3 << 20).map(|_| fastrand::u8(..)).collect();
    std::fs::write(dir.join("blob.bin"), &noise).unwrap();
    // Four cuts: more than the object store client's own resumed retries, so the agent's own resume (from the
    // partial file it kept) is exercised too.
    s.proxy.cut_responses_after(1 << 20, 4);
    s.publish_with_key(&s.key, "1.0.0", &[dir.to_str().unwrap()]).expect(0);
    s.wait_current("1.0.0");
    let gets = s.proxy.requests("GET /releases/web/releases/1.0.0.tar.zst");
    // The client resumes by itself first (bounded ranges); when it gives up, the agent resumes from the partial
    // file it kept (an open range from the partial file's length).
    assert!(gets.len() >= 4, "expected ranged retries: {gets:#?}");
    assert!(
        gets[1..].iter().all(|g| g.to_ascii_lowercase().contains("range: bytes=")),
        "a retry started over: {gets:#?}"
    );
    assert!(gets.last().unwrap().trim_end().ends_with('-'), "the agent did not resume its partial file: {gets:#?}");
    assert_eq!(std::fs::read(s.host.root().join("current/blob.bin")).unwrap(), noise);
    assert!(d.log().contains("retrying"), "{}", d.log());
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_bucket_outage_keeps_the_release_and_the_daemon_resumes() {
    let mut s = S3Host::new(HEALTH);
    let mut d = s.daemon();
    s.publish("1.0.0", 200);
    s.wait_current("1.0.0");
    s.garage.stop();
    let last_poll = || s.status()["daemon"]["last_poll"].as_str().unwrap_or("").to_owned();
    wait_for("a failed poll", LIVE, || last_poll().contains("poll failed"));
    // And a later one (polls are stamped to the second): the daemon goes on polling through the outage.
    let first = last_poll();
    wait_for("another failed poll", LIVE, || {
        let p = last_poll();
        p != first && p.contains("poll failed")
    });
    assert!(d.alive(), "the daemon died in the outage; log:\n{}", d.log());
    assert_eq!(s.host.current().as_deref(), Some("1.0.0"));
    assert!(s.svc.get("/version.txt").unwrap().1.ends_with("1.0.0"));
    s.garage.restart();
    s.publish("2.0.0", 200);
    s.wait_current("2.0.0");
    assert_eq!(d.stop(), 0);
}

/// A host following a `file://` base: no S3 server needed. Returns the host, its service, the signing key and
/// the base to publish to.
#[test]
fn a_manifest_that_expires_while_held_is_not_acted_on() {
    let s = S3Host::new(HEALTH);
    let mut d = s.daemon();
    s.publish("1.0.0", 200);
    s.wait_current("1.0.0");
    s.host.run(&["pin", "web", "1.0.0"]).expect(0);

    // Accepted while in date, held by the pin until after it expired.
    let dir = release_dir(&s.host, "2.0.0", 200);
    s.publish_with_key(&s.key, "2.0.0", &["--expires-in", "6s", dir.to_str().unwrap()]).expect(0);
    wait_for("2.0.0 to be accepted", LIVE, || s.status()["channel"]["version"] == "2.0.0");
    let expires = s.status()["channel"]["expires"].as_str().unwrap().to_owned();
    wait_for("the manifest to expire", LIVE, || {
        humantime::parse_rfc3339_weak(&expires).unwrap() < std::time::SystemTime::now()
    });
    s.host.run(&["unpin", "web"]).expect(0);
    wait_for("the daemon to hold the expired manifest", LIVE, || s.activity().contains("expired"));
    s.wait_polls(2);
    assert_eq!(s.host.current().as_deref(), Some("1.0.0"));
    assert!(!s.host.release_dirs().contains(&"2.0.0".to_owned()), "an expired manifest's release was fetched");
    let human = s.host.run(&["status", "web"]).expect(0).stdout.clone();
    assert!(human.contains("EXPIRED"), "{human}");

    // A newer manifest in date is followed again.
    s.publish("3.0.0", 200);
    s.wait_current("3.0.0");
    assert_eq!(d.stop(), 0, "log:\n{}", d.log());
}

/// The same channel protocol against Azure Blob Storage (Azurite): publish, the daemon following it, idle polls
/// that are one conditional request each, a second release.
#[test]
fn follows_a_channel_in_azure_blob_storage() {
    let az = Azurite::start();
    let proxy = Proxy::start(az.port);
    let endpoint = Azurite::endpoint(&proxy.endpoint());
    let (host, svc) = Service::host_with(
        |_| {
            format!(
                "source = \"az://{}/web\"\nendpoint = \"{endpoint}\"\nallow_http = true\ntrusted_keys = [\"PUBLIC_KEY\"]\n",
                az.container
            )
        },
        HEALTH,
        "",
    );
    let key = trust_new_key(&host);
    let env = az.env();
    let direct = Azurite::endpoint(&format!("http://127.0.0.1:{}", az.port));
    let base = format!("az://{}", az.container);
    let publish_version = |v: &str| {
        let dir = release_dir(&host, v, 200);
        publish(&host, &env, &base, &key, v, &["--endpoint", &direct, "--allow-http", dir.to_str().unwrap()]).expect(0);
    };
    let mut d = Daemon::start(&host, &env);
    publish_version("1.0.0");
    wait_for("1.0.0 to go live", LIVE, || host.current().as_deref() == Some("1.0.0"));
    wait_served(&svc, "1.0.0");

    // Idle from the first poll answered 304 on. The 3 s that follow are the measure: polls per unit of time.
    wait_for("an idle poll", LIVE, || proxy.lines().iter().any(|l| l.starts_with("HTTP/") && l.contains(" 304")));
    let mark = proxy.lines().len();
    std::thread::sleep(Duration::from_secs(3));
    let lines: Vec<String> = proxy.lines()[mark..].to_vec();
    let requests: Vec<&String> = lines.iter().filter(|l| !l.starts_with("HTTP/")).collect();
    assert!((3..=8).contains(&requests.len()), "{} requests in 3 s: {requests:#?}", requests.len());
    for r in &requests {
        assert!(r.starts_with("GET /devstoreaccount1/releases/web/channels/production.json "), "unexpected {r}");
        assert!(r.to_ascii_lowercase().contains("if-none-match:"), "unconditional poll: {r}");
    }
    for l in lines.iter().filter(|l| l.starts_with("HTTP/")) {
        assert!(l.contains(" 304"), "an idle poll was answered {l}");
    }

    publish_version("2.0.0");
    wait_for("2.0.0 to go live", LIVE, || host.current().as_deref() == Some("2.0.0"));
    wait_served(&svc, "2.0.0");
    assert_eq!(d.stop(), 0, "log:\n{}", d.log());
}

pub(crate) fn file_host(health: &str) -> (Host, Service, PathBuf, String) {
    let (host, svc) = Service::host_with(
        |h| format!("source = \"file://{}/bucket/web\"\ntrusted_keys = [\"PUBLIC_KEY\"]\n", h.path().display()),
        health,
        "",
    );
    let key = trust_new_key(&host);
    let base = format!("file://{}/bucket", host.path().display());
    (host, svc, key, base)
}

pub(crate) fn file_publish(host: &Host, key: &std::path::Path, base: &str, version: &str, health: u16, extra: &[&str]) {
    let dir = release_dir(host, version, health);
    let mut args = extra.to_vec();
    args.push(dir.to_str().unwrap());
    publish(host, &[], base, key, version, &args).expect(0);
}

/// The test's own notify socket, and the environment that points a daemon at it with a 1 s watchdog.
pub(crate) fn notify_socket(host: &Host) -> (UnixDatagram, Vec<(String, String)>) {
    let path = host.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let env = vec![
        ("NOTIFY_SOCKET".to_owned(), path.display().to_string()),
        ("WATCHDOG_USEC".to_owned(), "1000000".to_owned()),
    ];
    (sock, env)
}

/// Reads notify datagrams until `want` arrives (or panics after `timeout`); returns every message seen.
fn expect_notify(sock: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    loop {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == want || (want.ends_with('=') && l.starts_with(want)));
            seen.push(msg);
            if hit {
                return seen;
            }
        }
        assert!(start.elapsed() < timeout, "no {want} within {timeout:?}; got {seen:#?}");
    }
}

#[test]
fn speaks_the_systemd_notify_protocol() {
    let (host, _svc, key, base) = file_host(HEALTH);
    file_publish(&host, &key, &base, "1.0.0", 200, &[]);
    let (sock, env) = notify_socket(&host);
    let mut d = Daemon::start(&host, &env);
    expect_notify(&sock, "READY=1", LIVE);
    wait_for("1.0.0 to go live", LIVE, || host.current().as_deref() == Some("1.0.0"));
    let seen = expect_notify(&sock, "STATUS=", Duration::from_secs(5));
    assert!(seen.iter().any(|m| m.contains("STATUS=web ")), "{seen:#?}");
    // Pings at half the watchdog interval: two within 1.5 s.
    expect_notify(&sock, "WATCHDOG=1", Duration::from_secs(2));
    expect_notify(&sock, "WATCHDOG=1", Duration::from_secs(2));
    d.signal("HUP");
    expect_notify(&sock, "RELOADING=1", Duration::from_secs(5));
    expect_notify(&sock, "READY=1", Duration::from_secs(5));
    assert!(d.log().contains("configuration reloaded"), "{}", d.log());
    d.signal("TERM");
    expect_notify(&sock, "STOPPING=1", Duration::from_secs(5));
    assert_eq!(d.stop(), 0);
}

/// A service manager that stops reading its notify socket (a datagram socket: its queue holds a handful of
/// messages, then a blocking sender waits) costs the daemon nothing: it goes on, and SIGTERM still stops it.
#[test]
fn a_notify_socket_nobody_reads_never_blocks_the_daemon() {
    let (host, _svc, key, base) = file_host(HEALTH);
    file_publish(&host, &key, &base, "1.0.0", 200, &[]);
    let (sock, mut env) = notify_socket(&host);
    env.retain(|(k, _)| k != "WATCHDOG_USEC");
    env.push(("WATCHDOG_USEC".to_owned(), "200000".to_owned()));
    let mut d = Daemon::start(&host, &env);
    expect_notify(&sock, "READY=1", LIVE);
    // From here on nobody reads: pings every 100 ms fill the queue within a second or two.
    wait_for("1.0.0 to go live", LIVE, || host.current().as_deref() == Some("1.0.0"));
    let polls = |h: &Host| h.run(&["--json", "status", "web"]).json()["apps"][0]["daemon"]["last_poll"].clone();
    // Three polls later (1.5 s, some 15 messages unread), the daemon still polls and answers.
    for _ in 0..3 {
        let before = polls(&host);
        wait_for("the daemon to poll again with its notify socket full", LIVE, || polls(&host) != before);
    }
    let start = Instant::now();
    assert_eq!(d.stop(), 0);
    assert!(start.elapsed() < Duration::from_secs(10), "SIGTERM took {:?}", start.elapsed());
    drop(sock);
}

#[test]
fn a_hung_worker_stops_the_watchdog_pings_and_a_restart_recovers() {
    let (host, _svc, key, base) = file_host(HEALTH);
    file_publish(&host, &key, &base, "1.0.0", 200, &[]);
    let (sock, mut env) = notify_socket(&host);
    env.push(("SWITCHBACK_HANG_AT".to_owned(), "after-unpack".to_owned()));
    let mut d = Daemon::start(&host, &env);
    wait_for("the worker to hang", LIVE, || d.log().contains("hanging at crash point"));
    // Pings may go on until the silence exceeds the watchdog interval; from the daemon's first word that it
    // withholds them, none may come, through four more times that a ping was due (every 500 ms).
    let withheld = |d: &Daemon| d.log().matches("withholding the watchdog ping").count();
    wait_for("the daemon to withhold a ping", LIVE, || withheld(&d) > 0);
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    while sock.recv(&mut buf).is_ok() {}
    let from = withheld(&d);
    wait_for("four more pings withheld", LIVE, || withheld(&d) >= from + 4);
    let mut late = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        late.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(!late.iter().any(|m| m.contains("WATCHDOG=1")), "pinged while hung: {late:#?}");
    assert!(d.log().contains("withholding the watchdog ping"), "{}", d.log());
    assert_eq!(host.current(), None);
    // What systemd does to a silent service: SIGKILL, then start it again.
    if let Some(c) = d.child.as_mut() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let mut d = Daemon::start(&host, &[]);
    wait_for("the restarted daemon to deploy 1.0.0", LIVE, || host.current().as_deref() == Some("1.0.0"));
    let dirs = host.release_dirs();
    assert!(!dirs.iter().any(|d| d.starts_with('.')), "{dirs:?}");
    assert_eq!(d.stop(), 0);
}

#[test]
fn an_inbox_drop_is_deployed_at_once_held_while_pinned_and_a_bad_one_is_set_aside() {
    let (host, svc, key, base) = file_host(HEALTH);
    let inbox = host.path().join("inbox");
    let cfg = std::fs::read_to_string(&host.config)
        .unwrap()
        .replace(&format!("source = \"{base}/web\"\n"), &format!("inbox = \"{}\"\n", inbox.display()));
    std::fs::write(&host.config, cfg).unwrap();
    let mut d = Daemon::start(&host, &[]);
    wait_for("the daemon to be ready", LIVE, || d.log().contains("daemon ready"));
    file_publish(&host, &key, &base, "1.0.0", 200, &[]);
    let published = host.path().join("bucket/web");
    let drop_in = |name: &str, from: PathBuf| {
        let tmp = inbox.join(format!(".{name}.tmp"));
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, inbox.join(name)).unwrap();
    };
    let start = Instant::now();
    drop_in("1.0.0.tar.zst", published.join("releases/1.0.0.tar.zst"));
    drop_in("web.json.minisig", published.join("channels/production.json.minisig"));
    drop_in("web.json", published.join("channels/production.json"));
    wait_for("the inbox drop to go live", LIVE, || host.current().as_deref() == Some("1.0.0"));
    eprintln!("inbox drop live after {:?}", start.elapsed());
    wait_served(&svc, "1.0.0");
    let empty = || std::fs::read_dir(&inbox).unwrap().next().is_none();
    wait_for("the inbox to be emptied", LIVE, empty);

    // A drop for a pinned app waits in the inbox until the pin is gone, then goes live.
    host.run(&["pin", "web", "1.0.0"]).expect(0);
    file_publish(&host, &key, &base, "2.0.0", 200, &[]);
    drop_in("2.0.0.tar.zst", published.join("releases/2.0.0.tar.zst"));
    drop_in("web.json.minisig", published.join("channels/production.json.minisig"));
    drop_in("web.json", published.join("channels/production.json"));
    wait_for("the daemon to hold the drop", LIVE, || d.log().contains("not deploying 2.0.0: pinned to 1.0.0"));
    wait_for_a_round(&host);
    assert!(inbox.join("web.json").exists() && inbox.join("2.0.0.tar.zst").exists(), "a held drop was removed");
    assert_eq!(host.current().as_deref(), Some("1.0.0"));
    host.run(&["unpin", "web"]).expect(0);
    wait_for("the held drop to go live after unpin", LIVE, || host.current().as_deref() == Some("2.0.0"));
    wait_for("the inbox to be emptied again", LIVE, empty);

    // A manifest whose signature does not match is refused, set aside, and nothing changes.
    file_publish(&host, &key, &base, "3.0.0", 200, &[]);
    drop_in("3.0.0.tar.zst", published.join("releases/3.0.0.tar.zst"));
    drop_in("web.json.minisig", published.join("channels/production.json.minisig"));
    let forged =
        std::fs::read_to_string(published.join("channels/production.json")).unwrap().replace("\"size\"", "\"size\" ");
    std::fs::write(inbox.join(".web.json.tmp"), forged).unwrap();
    std::fs::rename(inbox.join(".web.json.tmp"), inbox.join("web.json")).unwrap();
    wait_for("the forged manifest to be set aside", LIVE, || inbox.join("web.json.refused").exists());
    assert_eq!(host.current().as_deref(), Some("2.0.0"));
    assert!(d.log().contains("bad signature"), "{}", d.log());
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_manual_rollback_cancels_the_daemons_deploy_promptly() {
    let (host, _svc, key, base) = file_host(HEALTH);
    file_publish(&host, &key, &base, "1.0.0", 200, &[]);
    host.run(&["deploy", "web", "--version", "1.0.0"]).expect(0);
    // From now on a deploy bakes for a minute.
    let cfg = std::fs::read_to_string(&host.config)
        .unwrap()
        .replace("deadline = \"5s\"", "deadline = \"5s\"\nbake = \"60s\"");
    std::fs::write(&host.config, cfg).unwrap();
    let mut d = Daemon::start(&host, &[]);
    file_publish(&host, &key, &base, "2.0.0", 200, &[]);
    wait_for("the daemon to bake 2.0.0", LIVE, || {
        host.run(&["status", "web", "--json"]).json()["apps"][0]["daemon"]["activity"]
            .as_str()
            .is_some_and(|a| a.contains("baking"))
    });
    let start = Instant::now();
    let out = host.run(&["rollback", "web", "--reason", "stop that"]);
    out.expect(0);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "the rollback waited {took:?} for a 60 s bake: {out:?}");
    assert_eq!(host.current().as_deref(), Some("1.0.0"));
    let status = host.run(&["status", "web", "--json"]).json()["apps"][0].clone();
    let bad = status["bad"].as_array().unwrap();
    assert!(bad.iter().any(|b| b["version"] == "2.0.0"), "{status:#}");
    // The daemon's next decision holds 2.0.0 as bad.
    wait_for("the daemon to hold 2.0.0 as bad", LIVE, || {
        let st = host.run(&["status", "web", "--json"]).json();
        st["apps"][0]["daemon"]["activity"].as_str().is_some_and(|a| a.contains("2.0.0 is marked bad"))
            || host.current().as_deref() != Some("1.0.0")
    });
    assert_eq!(host.current().as_deref(), Some("1.0.0"), "the daemon brought 2.0.0 back");
    assert!(!host.state_dir().join("cancel").exists());
    assert_eq!(d.stop(), 0);
}

#[test]
fn deploy_by_version_fetches_only_what_a_signed_manifest_names() {
    let (host, _svc, key, base) = file_host(HEALTH);
    file_publish(&host, &key, &base, "1.0.0", 200, &[]);
    host.run(&["deploy", "web", "--version", "1.0.0"]).expect(0);
    assert_eq!(host.current().as_deref(), Some("1.0.0"));
    // An artifact that no manifest names is not fetched.
    std::fs::copy(
        host.path().join("bucket/web/releases/1.0.0.tar.zst"),
        host.path().join("bucket/web/releases/9.9.9.tar.zst"),
    )
    .unwrap();
    // Not published: a plain failure (exit 1) that says what the signed manifest names, not a usage error.
    let out = host.run(&["deploy", "web", "--version", "9.9.9"]);
    out.expect(1);
    assert!(out.stderr.contains("signed manifest") && out.stderr.contains("names `1.0.0`"), "{}", out.stderr);
    assert_eq!(host.current().as_deref(), Some("1.0.0"));
}

#[test]
fn publish_is_deterministic_immutable_minisign_compatible_and_can_promote() {
    let (host, _svc, key, base) = file_host(HEALTH);
    let dir = release_dir(&host, "1.0.0", 200);
    let base2 = format!("file://{}/bucket2", host.path().display());
    let run = |b: &str| publish(&host, &[], b, &key, "1.0.0", &["--json", dir.to_str().unwrap()]);
    let first = run(&base).expect(0).json();
    // Same tree, other mtimes: the same bytes.
    std::fs::write(dir.join("version.txt"), "1.0.0").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().write(true).open(dir.join("version.txt")).unwrap().set_modified(an_hour_ago).unwrap();
    let second = run(&base2).expect(0).json();
    assert_eq!(first["sha256"], second["sha256"], "packing is not deterministic");
    // The same version with other content is refused: releases are immutable.
    std::fs::write(dir.join("extra"), "x").unwrap();
    let out = run(&base);
    out.expect(2);
    assert!(out.stderr.contains("immutable"), "{}", out.stderr);

    // minisign itself verifies what publish signed.
    let channel = host.path().join("bucket/web/channels/production.json");
    let verify = std::process::Command::new("minisign")
        .arg("-V")
        .arg("-p")
        .arg(key.with_extension("pub"))
        .arg("-m")
        .arg(&channel)
        .output()
        .expect("minisign is installed by tests/run");
    assert!(verify.status.success(), "minisign -V: {}", String::from_utf8_lossy(&verify.stderr));

    // Promotion: 2.0.0 is published, then the channel is pointed back at 1.0.0 with a higher sequence.
    file_publish(&host, &key, &base, "2.0.0", 200, &[]);
    let seq2: serde_json::Value = serde_json::from_slice(&std::fs::read(&channel).unwrap()).unwrap();
    let out = publish(&host, &[], &base, &key, "1.0.0", &["--promote-only", "--json"]);
    let promoted = out.expect(0).json();
    assert_eq!(promoted["version"], "1.0.0");
    assert_eq!(promoted["uploaded"], false);
    assert!(promoted["sequence"].as_u64() > seq2["sequence"].as_u64());
    assert_eq!(promoted["sha256"], first["sha256"]);
}
