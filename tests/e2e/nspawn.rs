//! The agent under a real systemd: a Debian root file system (built once by `tests/nspawn-rootfs`, which
//! `tests/run` calls) boots with `systemd-nspawn`, systemd as PID 1, with this build's binary, the shipped unit
//! `systemd/switchback.service`, a config and a bucket bound in. The app `web` is a systemd unit (`web.service`,
//! the binary's demo HTTP server) that the agent restarts with `systemctl`. The container shares the host's
//! network, so the tests reach the app on a loopback port.
//!
//! Each test boots its own container (its own machine name and cgroup) and stops it on drop, even on panic.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::bucket::wait_for;
use crate::harness::{free_port, Out, BIN};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// Written by `tests/nspawn-rootfs` as its last step: without it the tree is incomplete.
const ROOTFS_MARKER: &str = ".switchback-rootfs-complete";
/// A PATH for commands run inside the container (the test's own environment is not passed in).
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) fn rootfs() -> PathBuf {
    let dir = Path::new(REPO).join("target/nspawn-rootfs");
    assert!(
        dir.join(ROOTFS_MARKER).is_file(),
        "no complete root file system at {}: run tests/run (it calls tests/nspawn-rootfs, which builds it)",
        dir.display()
    );
    assert!(
        Command::new("systemd-nspawn").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success()),
        "systemd-nspawn is not installed: run tests/run (tests/nspawn-rootfs installs systemd-container)"
    );
    dir
}

/// The cgroup hierarchies a container's own group is made in: the named `systemd` v1 hierarchy and the cgroup2
/// one mounted beside it, or the cgroup2 root on a unified host.
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").is_file() {
        return vec![base.to_owned()];
    }
    ["systemd", "unified"].iter().map(|h| base.join(h)).filter(|p| p.join("cgroup.procs").is_file()).collect()
}

/// A host path bound read-only into the container.
pub(crate) struct Bind {
    host: PathBuf,
    inside: &'static str,
}

impl Bind {
    pub(crate) fn ro(host: impl Into<PathBuf>, inside: &'static str) -> Bind {
        Bind { host: host.into(), inside }
    }
}

/// A booted container. Dropping it stops systemd-nspawn (SIGTERM, then SIGKILL), kills whatever is left in its
/// cgroups and removes them.
pub(crate) struct Container {
    name: String,
    cgroups: Vec<PathBuf>,
    child: Option<Child>,
    init: Option<u32>,
    log: PathBuf,
}

impl Container {
    /// Boots `rootfs` with an overlay (nothing written reaches the tree) and waits for systemd to finish booting.
    pub(crate) fn boot(rootfs: &Path, log: &Path, binds: &[Bind]) -> Container {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("sbtest-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let roots = cgroup_roots();
        assert!(!roots.is_empty(), "no cgroup hierarchy found under /sys/fs/cgroup");
        let mut c = Container { name: name.clone(), cgroups: Vec::new(), child: None, init: None, log: log.to_owned() };
        for root in roots {
            let dir = root.join(&name);
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
            c.cgroups.push(dir);
        }
        let mut args: Vec<String> = [
            "-D",
            rootfs.to_str().unwrap(),
            "--boot",
            "--register=no",
            "--keep-unit",
            "--console=passive",
            "--volatile=overlay",
            "--machine",
            &name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for b in binds {
            args.push(format!("--bind-ro={}:{}", b.host.display(), b.inside));
        }
        let out = std::fs::File::create(log).unwrap();
        // The shell moves itself (not the test process) into the container's own cgroups, then becomes nspawn.
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"for g in $SB_CGROUPS; do echo $$ > "$g/cgroup.procs" || exit 97; done; exec systemd-nspawn "$@""#)
            .arg("sh")
            .args(&args)
            .env("SB_CGROUPS", c.cgroups.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" "))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting systemd-nspawn");
        let nspawn = child.id();
        c.child = Some(child);
        wait_for("the container's systemd", Duration::from_secs(15), || {
            if let Some(status) = c.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("systemd-nspawn exited ({status}): {}", c.nspawn_log());
            }
            c.init = Command::new("pgrep")
                .args(["-P", &nspawn.to_string(), "-x", "systemd"])
                .output()
                .ok()
                .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok());
            c.init.is_some()
        });
        wait_for("the container to finish booting", Duration::from_secs(30), || {
            let state = c.exec(&["systemctl", "is-system-running"]).stdout;
            matches!(state.trim(), "running" | "degraded")
        });
        c
    }

    /// Runs a command inside the container (all its namespaces, its root).
    pub(crate) fn exec(&self, argv: &[&str]) -> Out {
        self.command(argv).output().map(Out::from).expect("running nsenter")
    }

    /// A command to run inside the container; stdio as the caller sets it.
    pub(crate) fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.env_clear().env("PATH", CONTAINER_PATH).arg("-t").arg(self.init.unwrap().to_string()).arg("-a").args(argv);
        cmd
    }

    /// Runs a command inside that must succeed; its stdout.
    #[track_caller]
    pub(crate) fn ok(&self, argv: &[&str]) -> String {
        let o = self.exec(argv);
        assert_eq!(o.code, 0, "{argv:?} failed inside the container: {o:#?}");
        o.stdout
    }

    /// One property of a unit, from `systemctl show`.
    pub(crate) fn prop(&self, unit: &str, prop: &str) -> String {
        let o = self.ok(&["systemctl", "show", unit, "-p", prop, "--value"]);
        o.trim_end_matches('\n').to_owned()
    }

    /// The journal of these units (all of it, short format).
    pub(crate) fn journal(&self, units: &[&str]) -> String {
        let mut argv = vec!["journalctl", "--no-pager", "-q"];
        for u in units {
            argv.extend(["-u", u]);
        }
        self.exec(&argv).stdout
    }

    /// `switchback status web --json` inside: the app's entry.
    fn status(&self) -> serde_json::Value {
        let o = self.exec(&["switchback", "status", "web", "--json"]);
        assert_eq!(o.code, 0, "switchback status failed inside the container: {o:#?}");
        o.json()["apps"][0].clone()
    }

    fn nspawn_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() && self.init.is_some() {
            eprintln!("--- journal of container {} ---\n{}", self.name, self.journal(&[]));
        }
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let start = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        // Whatever survived nspawn (nothing, normally) is killed; then the groups go, innermost first.
        let start = Instant::now();
        loop {
            let mut left = 0;
            for root in &self.cgroups {
                for dir in subtree(root) {
                    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        left += 1;
                        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                        }
                    }
                }
            }
            if left == 0 || start.elapsed() > Duration::from_secs(10) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for root in &self.cgroups {
            for dir in subtree(root).iter().rev() {
                if let Err(e) = std::fs::remove_dir(dir) {
                    eprintln!("removing cgroup {}: {e}", dir.display());
                }
            }
        }
    }
}

/// A directory and every directory below it, parents before children.
fn subtree(root: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    if !root.is_dir() {
        return all;
    }
    let mut i = 0;
    all.push(root.to_owned());
    while i < all.len() {
        if let Ok(rd) = std::fs::read_dir(&all[i]) {
            let mut children: Vec<PathBuf> =
                rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect();
            children.sort();
            all.extend(children);
        }
        i += 1;
    }
    all
}

/// Writes a key pair `DIR/signing.key` and `DIR/signing.pub` for publishing to a test's bucket; its public key.
pub(crate) fn signing_key(dir: &Path) -> String {
    let keygen = Command::new(BIN)
        .args(["keygen", "--json", "--out"])
        .arg(dir.join("signing"))
        .env_remove("SWITCHBACK_CONFIG")
        .output()
        .map(Out::from)
        .unwrap();
    assert_eq!(keygen.code, 0, "{keygen:#?}");
    keygen.json()["public_key"].as_str().unwrap().to_owned()
}

/// GET a path from the app on loopback: (status, body), or None when nothing answers.
pub(crate) fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned()))
}

/// What a test sets up on the host: a signing key, a bucket (bound read-only at /srv/bucket), the config, the app
/// unit and a drop-in directory for the agent's unit, and the container booted with all of it.
struct World {
    /// Declared first: dropped (stopped) before the files bound into it are removed.
    c: Container,
    dir: tempfile::TempDir,
    port: u16,
}

impl World {
    /// `dropins`: files of `switchback.service.d` present at boot.
    fn boot(dropins: &[(&str, &str)]) -> World {
        let rootfs = rootfs();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let port = free_port();
        let public = signing_key(p);
        std::fs::create_dir(p.join("bucket")).unwrap();
        std::fs::create_dir(p.join("switchback.service.d")).unwrap();
        for (name, text) in dropins {
            std::fs::write(p.join("switchback.service.d").join(name), text).unwrap();
        }
        std::fs::write(
            p.join("switchback.toml"),
            format!(
                r#"[agent]
state_dir = "/var/lib/switchback"
poll_interval = "1s"

[apps.web]
root = "/srv/web"
source = "file:///srv/bucket/web"
trusted_keys = ["{public}"]

[apps.web.service]
unit = "web.service"
timeout = "20s"

[[apps.web.checks]]
http = "http://127.0.0.1:{port}/healthz"
expect_status = 200
timeout = "1s"

[apps.web.health]
start_period = "0s"
interval = "200ms"
healthy_after = 2
deadline = "3s"
"#
            ),
        )
        .unwrap();
        // The demo server reads its release directory once at start; systemd resolves `current` when it starts
        // the unit, so the process runs from the release it was started for.
        std::fs::write(
            p.join("web.service"),
            format!(
                "[Unit]\nDescription=demo app of the switchback tests\n\n[Service]\nWorkingDirectory=/srv/web/current\n\
                 ExecStart=/usr/bin/switchback demo-service serve --dir /srv/web/current --port {port}\n"
            ),
        )
        .unwrap();
        let binds = [
            Bind::ro(BIN, "/usr/bin/switchback"),
            Bind::ro(Path::new(REPO).join("systemd/switchback.service"), "/etc/systemd/system/switchback.service"),
            Bind::ro(p.join("switchback.service.d"), "/etc/systemd/system/switchback.service.d"),
            Bind::ro(p.join("web.service"), "/etc/systemd/system/web.service"),
            Bind::ro(p.join("switchback.toml"), "/etc/switchback/switchback.toml"),
            Bind::ro(p.join("bucket"), "/srv/bucket"),
        ];
        let c = Container::boot(&rootfs, &p.join("nspawn.log"), &binds);
        World { c, dir, port }
    }

    /// Publishes a release of the demo server to the channel the agent follows: `health` is what /healthz answers.
    fn publish(&self, version: &str, health: u16) {
        let p = self.dir.path();
        let release = p.join(format!("release-{version}"));
        std::fs::create_dir(&release).unwrap();
        std::fs::write(release.join("version.txt"), version).unwrap();
        std::fs::write(release.join("health"), health.to_string()).unwrap();
        let o = Command::new(BIN)
            .args(["publish", "--app", "web", "--channel", "production", "--version", version])
            .arg("--to")
            .arg(format!("file://{}", p.join("bucket").display()))
            .arg("--key")
            .arg(p.join("signing.key"))
            .arg(&release)
            .env_remove("SWITCHBACK_CONFIG")
            .output()
            .map(Out::from)
            .unwrap();
        assert_eq!(o.code, 0, "publish {version}: {o:#?}");
    }

    #[cfg(feature = "crash-points")]
    fn dropin(&self, name: &str) -> PathBuf {
        self.dir.path().join("switchback.service.d").join(name)
    }

    /// Waits until the app is on `version`, deployed and checked healthy (nothing in flight), then checks that
    /// the app serves it.
    #[track_caller]
    fn wait_deployed(&self, version: &str, timeout: Duration) {
        self.wait_status(&format!("{version} to be deployed"), timeout, |s| {
            s["current"] == version
                && s["in_flight"].is_null()
                && s["last_health"]["version"] == version
                && s["last_health"]["healthy"] == true
        });
        self.assert_serving(version);
    }

    /// Polls `switchback status` inside until `done` holds; returns that status. The panic shows the last one.
    #[track_caller]
    fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let s = self.c.status();
            if done(&s) {
                return s;
            }
            assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}; last status: {s:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[track_caller]
    fn assert_serving(&self, version: &str) {
        let body = get(self.port, "/version.txt");
        assert!(
            body.as_ref().is_some_and(|(s, b)| *s == 200 && b.ends_with(version)),
            "/version.txt should show {version}: {body:?}"
        );
        assert_eq!(get(self.port, "/healthz").map(|(s, _)| s), Some(200), "/healthz of {version}");
    }

    /// The process systemd runs for `web.service` runs from the release directory of `version`.
    #[track_caller]
    fn assert_unit_runs(&self, version: &str) {
        assert_eq!(self.c.prop("web.service", "ActiveState"), "active");
        let pid = self.c.prop("web.service", "MainPID");
        let cwd = self.c.ok(&["readlink", &format!("/proc/{pid}/cwd")]);
        assert_eq!(cwd.trim(), format!("/srv/web/releases/{version}"), "web.service's main process {pid}");
    }
}

/// The shipped unit starts the daemon as `Type=notify` (active only after READY=1, with its STATUS= line), and
/// the daemon deploys through `systemctl restart web.service`, then rolls a release that fails its health check
/// back to the previous one.
#[test]
fn systemd_runs_the_agent_which_restarts_the_app_unit() {
    let started = Instant::now();
    let w = World::boot(&[]);
    let c = &w.c;
    assert_eq!(c.prop("switchback.service", "Type"), "notify");
    assert_eq!(c.prop("switchback.service", "ActiveState"), "inactive");

    // The daemon's first step (reconciling each app) takes the app's lock: while a command holds it, READY=1
    // cannot have been sent, and systemd must keep the unit activating.
    c.ok(&["mkdir", "-p", "/var/lib/switchback/web"]);
    let mut holder = c
        .command(&["flock", "/var/lib/switchback/web/lock", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("holding the app's lock inside the container");
    wait_for("the lock to be held", Duration::from_secs(10), || {
        c.exec(&["flock", "--nonblock", "/var/lib/switchback/web/lock", "true"]).code == 1
    });
    c.ok(&["systemctl", "start", "--no-block", "switchback.service"]);
    wait_for("the daemon to tell systemd it is reconciling", Duration::from_secs(10), || {
        c.prop("switchback.service", "StatusText") == "reconciling"
    });
    let activating_since = Instant::now();
    while activating_since.elapsed() < Duration::from_millis(1500) {
        let state = c.ok(&["systemctl", "show", "switchback.service", "-p", "ActiveState,SubState"]);
        assert_eq!(state, "ActiveState=activating\nSubState=start\n", "before READY=1");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(c.prop("switchback.service", "MainPID"), "0", "the daemon runs while the unit is activating");
    assert!(!c.journal(&["switchback.service"]).contains("daemon ready"));
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success(), "the lock holder");
    wait_for("the unit to become active", Duration::from_secs(10), || {
        c.prop("switchback.service", "ActiveState") == "active"
    });
    let status = c.exec(&["systemctl", "status", "--no-pager", "switchback.service"]).stdout;
    assert!(status.contains("Active: active (running)"), "{status}");
    wait_for("a STATUS= line about the app", Duration::from_secs(10), || {
        c.prop("switchback.service", "StatusText").starts_with("web on nothing")
    });

    // A release deploys through `systemctl restart web.service`.
    w.publish("1.0.0", 200);
    w.wait_deployed("1.0.0", Duration::from_secs(20));
    w.assert_unit_runs("1.0.0");
    wait_for("STATUS= to say the app is on 1.0.0", Duration::from_secs(10), || {
        c.prop("switchback.service", "StatusText").starts_with("web on 1.0.0")
    });
    let journal = c.journal(&["web.service"]);
    assert_eq!(journal.matches("Started web.service").count(), 1, "{journal}");

    // A release whose /healthz answers 500 is rolled back to 1.0.0, and the unit restarted again.
    w.publish("2.0.0", 500);
    let last = w.wait_status("2.0.0 to be marked bad", Duration::from_secs(30), |s| {
        s["bad"].as_array().is_some_and(|b| b.iter().any(|b| b["version"] == "2.0.0"))
    });
    assert_eq!(last["current"], "1.0.0", "{last:#}");
    let reason = last["bad"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("status 500"), "{reason}");
    // ... and not tried again: the daemon holds.
    w.wait_status("the agent to hold on 1.0.0", Duration::from_secs(10), |s| {
        s["daemon"]["activity"]
            .as_str()
            .is_some_and(|a| a.starts_with("on 1.0.0;") && a.contains("2.0.0 is marked bad"))
    });
    w.assert_serving("1.0.0");
    w.assert_unit_runs("1.0.0");
    let journal = c.journal(&["web.service"]);
    assert_eq!(journal.matches("Started web.service").count(), 3, "1.0.0, 2.0.0, 1.0.0 again: {journal}");
    assert_eq!(c.prop("switchback.service", "NRestarts"), "0");
    eprintln!("systemd test took {:?}", started.elapsed());
}

/// A hung agent stops pinging the watchdog: systemd kills it (`Result=watchdog`) and restarts it, the app keeps
/// running its release meanwhile, and once the hang is gone the release deploys.
#[cfg(feature = "crash-points")]
#[test]
fn systemd_watchdog_kills_and_restarts_a_hung_agent() {
    let started = Instant::now();
    // A short watchdog, restart and stop timeout for the test (no core files from SIGABRT).
    let w =
        World::boot(&[("10-test.conf", "[Service]\nWatchdogSec=4s\nRestartSec=1s\nTimeoutStopSec=3s\nLimitCORE=0\n")]);
    let c = &w.c;
    c.ok(&["systemctl", "start", "switchback.service"]);
    assert_eq!(c.prop("switchback.service", "WatchdogUSec"), "4s");
    w.publish("1.0.0", 200);
    w.wait_deployed("1.0.0", Duration::from_secs(20));
    assert_eq!(c.prop("switchback.service", "NRestarts"), "0", "a working agent keeps the watchdog happy");

    std::fs::write(w.dropin("20-hang.conf"), "[Service]\nEnvironment=SWITCHBACK_HANG_AT=after-unpack\n").unwrap();
    c.ok(&["systemctl", "daemon-reload"]);
    c.ok(&["systemctl", "restart", "switchback.service"]);
    assert_eq!(c.prop("switchback.service", "Environment"), "SWITCHBACK_HANG_AT=after-unpack");
    w.publish("2.0.0", 200);
    let mut journal = String::new();
    wait_for("systemd to kill the hung agent and restart it", Duration::from_secs(30), || {
        c.prop("switchback.service", "NRestarts").parse::<u32>().unwrap() >= 1 && {
            journal = c.journal(&["switchback.service"]);
            journal.contains("switchback.service: Scheduled restart job, restart counter is at 1.")
        }
    });
    for line in [
        "hanging at crash point after-unpack",
        "no sign of life from web for 4s: withholding the watchdog ping",
        "switchback.service: Watchdog timeout (limit 4s)!",
        "switchback.service: Failed with result 'watchdog'.",
    ] {
        assert!(journal.contains(line), "no `{line}` in the journal:\n{journal}");
    }
    // The hang happened before the switch: the app still runs 1.0.0.
    assert_eq!(c.status()["current"], "1.0.0");
    w.assert_serving("1.0.0");
    w.assert_unit_runs("1.0.0");

    std::fs::remove_file(w.dropin("20-hang.conf")).unwrap();
    c.ok(&["systemctl", "daemon-reload"]);
    c.ok(&["systemctl", "restart", "switchback.service"]);
    assert_eq!(c.prop("switchback.service", "Environment"), "");
    let restarts = c.prop("switchback.service", "NRestarts");
    w.wait_deployed("2.0.0", Duration::from_secs(20));
    w.assert_unit_runs("2.0.0");
    assert_eq!(c.prop("switchback.service", "ActiveState"), "active");
    assert_eq!(c.prop("switchback.service", "NRestarts"), restarts, "no watchdog kill while deploying 2.0.0");
    eprintln!("systemd watchdog test took {:?}", started.elapsed());
}
