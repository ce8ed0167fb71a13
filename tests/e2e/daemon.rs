//! The daemon against real components: a Garage S3 server (through a recording proxy), the demo HTTP service being
//! health-checked, signed manifests made by `switchback publish`, systemd's notify protocol on our own socket.
//! This file holds the hosts the tests share (an S3 host, a `file://` host, a notify socket; `operations/` uses
//! them too); `daemon/follow.rs` the daemon following a channel and what holds it, `daemon/faults.rs` what a bad
//! bucket cannot do, `daemon/notify.rs` the notify protocol and the watchdog, `daemon/publish.rs` what publish
//! writes and what `deploy --version` fetches.

mod faults;
mod follow;
mod notify;
mod publish;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::bucket::{publish, release_dir, trust_new_key, wait_for, Daemon, Garage, Proxy};
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

/// A host following a `file://` base: no S3 server needed. Returns the host, its service, the signing key and
/// the base to publish to.
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
