//! A fleet: many agents (separate `switchback daemon` processes with their own host ids, roots and state dirs)
//! following one channel of one Garage bucket, through a recording proxy. Staged waves reach exactly the hosts
//! whose seed they cover; a failing release is halted fleet-wide once `halt_after` hosts failed it; an idle poll
//! is one conditional GET; `fleet status` tells it as it is.
//!
//! `SWITCHBACK_FLEET_HOSTS` sets the fleet's size (default 12) and `SWITCHBACK_FLEET_POLL` the agents' poll
//! interval (default 500ms); a large run, e.g. 1,000 hosts, is by hand:
//! `SWITCHBACK_FLEET_HOSTS=1000 SWITCHBACK_FLEET_POLL=5s cargo test --release --test e2e -- fleet --nocapture`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use sha2::Digest;

use crate::bucket::{keygen, wait_for, Garage, Proxy};
use crate::harness::{Out, BIN};

/// A host's seed for a release, computed here from the documented formula (not by the agent's code): the first
/// 8 bytes, big-endian, of sha256("switchback-wave\0" HOST "\0" APP "\0" VERSION), modulo 100.
fn seed(host: &str, app: &str, version: &str) -> u8 {
    let h = sha2::Sha256::new()
        .chain_update(b"switchback-wave\0")
        .chain_update(host)
        .chain_update(b"\0")
        .chain_update(app)
        .chain_update(b"\0")
        .chain_update(version)
        .finalize();
    (u64::from_be_bytes(h[..8].try_into().unwrap()) % 100) as u8
}

struct Agent {
    id: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Agent {
    fn config(&self) -> PathBuf {
        self.dir.join("switchback.toml")
    }

    fn current(&self) -> Option<String> {
        let t = std::fs::read_link(self.dir.join("srv/web/current")).ok()?;
        Some(t.file_name()?.to_string_lossy().into_owned())
    }

    /// The versions this host ever deployed (from its history).
    fn deployed(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.join("state/web/history.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["op"] == "deploy")
            .filter_map(|e| e["version"].as_str().map(str::to_owned))
            .collect()
    }

    /// (peak RSS in KiB, CPU seconds) of the running daemon.
    fn usage(&self) -> (u64, f64) {
        let pid = self.child.as_ref().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|x| x.parse::<u64>().ok()).sum());
        (hwm, ticks as f64 / 100.0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Fleet {
    // Agents drop (and are killed) before the bucket they use.
    agents: Vec<Agent>,
    proxy: Proxy,
    garage: Garage,
    dir: tempfile::TempDir,
    key: PathBuf,
    poll: Duration,
}

impl Fleet {
    fn new(n: usize, poll: Duration) -> Fleet {
        let garage = Garage::start();
        let proxy = Proxy::start(garage.s3_port);
        let dir = tempfile::tempdir().unwrap();
        let ci = crate::harness::Host::new();
        let (key, pk) = keygen(&ci, "ci");
        let key_here = dir.path().join("ci.key");
        std::fs::copy(&key, &key_here).unwrap();
        drop(ci);
        let mut agents = Vec::new();
        for i in 0..n {
            let id = format!("host-{i:04}");
            let adir = dir.path().join(&id);
            std::fs::create_dir_all(adir.join("srv/web")).unwrap();
            let root = adir.join("srv/web");
            let cfg = format!(
                "[agent]\nstate_dir = \"{state}\"\npoll_interval = \"{poll}\"\nhost_id = \"{id}\"\n\n\
                 [apps.web]\nroot = \"{root}\"\nkeep = 3\nsource = \"s3://{bucket}/web\"\nendpoint = \"{endpoint}\"\n\
                 region = \"garage\"\nallow_http = true\ntrusted_keys = [\"{pk}\"]\n\n\
                 [apps.web.service]\nrestart = [\"true\"]\n\n\
                 [[apps.web.checks]]\nexec = [\"/bin/sh\", \"-c\", \"exit $(cat {root}/current/exit)\"]\ntimeout = \"5s\"\n\n\
                 [apps.web.health]\nstart_period = \"0s\"\ninterval = \"100ms\"\nhealthy_after = 1\ndeadline = \"2s\"\n",
                state = adir.join("state").display(),
                poll = humantime::format_duration(poll),
                root = root.display(),
                bucket = garage.bucket,
                endpoint = proxy.endpoint(),
            );
            std::fs::write(adir.join("switchback.toml"), cfg).unwrap();
            agents.push(Agent { id, dir: adir, child: None });
        }
        Fleet { agents, proxy, garage, dir, key: key_here, poll }
    }

    fn start(&mut self) {
        let env = self.garage.env();
        for a in &mut self.agents {
            let log = std::fs::File::create(a.dir.join("daemon.log")).unwrap();
            a.child = Some(
                Command::new(BIN)
                    .arg("--config")
                    .arg(a.config())
                    .arg("daemon")
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .env("SWITCHBACK_LOG", "switchback=debug,warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            );
        }
    }

    fn bucket_args(&self) -> Vec<String> {
        let endpoint = self.garage.endpoint();
        ["--endpoint", &endpoint, "--region", "garage", "--allow-http"].map(str::to_owned).to_vec()
    }

    fn run(&self, args: &[String]) -> Out {
        Command::new(BIN)
            .args(args)
            .envs(self.garage.env())
            .env_remove("SWITCHBACK_CONFIG")
            .output()
            .expect("running switchback")
            .into()
    }

    /// Publishes a release whose check exits with `exit`, with `extra` flags (waves, halt).
    fn publish(&self, version: &str, exit: u8, extra: &[String]) -> Out {
        let tree = self.dir.path().join("build").join(version);
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("version.txt"), version).unwrap();
        std::fs::write(tree.join("exit"), exit.to_string()).unwrap();
        let mut args: Vec<String> =
            ["publish", "--to", &format!("s3://{}", self.garage.bucket), "--app", "web"].map(str::to_owned).to_vec();
        args.extend(["--channel", "production", "--version", version, "--key"].map(str::to_owned));
        args.push(self.key.display().to_string());
        args.extend(self.bucket_args());
        args.extend_from_slice(extra);
        args.push(tree.display().to_string());
        let out = self.run(&args);
        out.expect(0);
        out
    }

    fn fleet_status(&self) -> (serde_json::Value, Duration) {
        let mut args: Vec<String> =
            ["fleet", "status", "--source", &format!("s3://{}", self.garage.bucket), "--app", "web", "--json"]
                .map(str::to_owned)
                .to_vec();
        args.extend(self.bucket_args());
        let start = Instant::now();
        let out = self.run(&args);
        let took = start.elapsed();
        out.expect(0);
        (out.json(), took)
    }

    /// The hosts' reports, by host, as the bucket holds them. A report that could not be read this time (a GET
    /// that timed out on a loaded machine: `fleet status` lists it as unreadable) is read again.
    fn reports(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        let mut tries = 0;
        loop {
            let (s, _) = self.fleet_status();
            let unreadable = s["unreadable"].as_array().map_or(0, Vec::len);
            tries += 1;
            if unreadable == 0 || tries == 10 {
                assert_eq!(unreadable, 0, "reports still unreadable after {tries} reads: {:#}", s["unreadable"]);
                return s["reports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| (r["host"].as_str().unwrap().to_owned(), r.clone()))
                    .collect();
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Waits until the reports satisfy `f`, reading them at most once per poll interval (each read lists and
    /// fetches every report).
    #[track_caller]
    fn wait_reports(
        &self,
        what: &str,
        within: Duration,
        f: impl Fn(&std::collections::BTreeMap<String, serde_json::Value>) -> bool,
    ) {
        let start = Instant::now();
        loop {
            let r = self.reports();
            if f(&r) {
                return;
            }
            assert!(
                start.elapsed() < within,
                "timed out after {within:?} waiting for {what}; reports: {r:#?}\n{}",
                self.logs()
            );
            std::thread::sleep(self.poll.max(Duration::from_millis(500)));
        }
    }

    fn wait_all_on(&self, version: &str, within: Duration) {
        wait_for(&format!("every host on {version}"), within, || {
            self.agents.iter().all(|a| a.current().as_deref() == Some(version))
        });
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .take(3)
            .map(|a| format!("--- {}\n{}", a.id, std::fs::read_to_string(a.dir.join("daemon.log")).unwrap_or_default()))
            .collect()
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

fn rfc3339(s: &str) -> f64 {
    unix(humantime::parse_rfc3339_weak(s).unwrap())
}

/// The smallest percentage whose wave covers about a third of `hosts` (at least one, not all) for `version`.
fn third(hosts: &[&str], version: &str) -> u8 {
    let mut seeds: Vec<u8> = hosts.iter().map(|h| seed(h, "web", version)).collect();
    seeds.sort();
    let k = (hosts.len() / 3).max(2).min(hosts.len() - 1);
    seeds[k - 1] + 1
}

#[test]
fn a_fleet_follows_waves_halts_a_failing_release_and_polls_cheaply() {
    let n: usize = std::env::var("SWITCHBACK_FLEET_HOSTS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let poll = std::env::var("SWITCHBACK_FLEET_POLL")
        .ok()
        .and_then(|s| humantime::parse_duration(&s).ok())
        .unwrap_or(Duration::from_millis(500));
    assert!(n >= 4, "a fleet of at least 4 hosts");
    let mut fleet = Fleet::new(n, poll);
    let settle = Duration::from_secs(60) + poll * 4 + Duration::from_millis(200) * n as u32;
    let ids: Vec<String> = fleet.agents.iter().map(|a| a.id.clone()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();

    // 1.0.0, no waves: every host deploys it at once and reports it.
    fleet.publish("1.0.0", 0, &[]);
    let started = Instant::now();
    fleet.start();
    fleet.wait_all_on("1.0.0", settle);
    println!("fleet of {n}: all on 1.0.0 {:.1} s after the agents started", started.elapsed().as_secs_f64());
    fleet.wait_reports("every host's report of 1.0.0", settle, |r| {
        r.len() == n && r.values().all(|r| r["outcome"] == "ok" && r["current"] == "1.0.0")
    });

    // An idle fleet: one conditional GET of the manifest per host and poll, nothing else.
    let before = fleet.proxy.lines().len();
    let window = Instant::now();
    std::thread::sleep((poll * 6).max(Duration::from_secs(3)));
    let lines: Vec<String> =
        fleet.proxy.lines()[before..].iter().filter(|l| !l.starts_with("HTTP/")).cloned().collect();
    let polls = window.elapsed().as_secs_f64() / poll.as_secs_f64() * n as f64;
    let others: Vec<&String> = lines
        .iter()
        .filter(|l| {
            !(l.starts_with("GET /releases/web/channels/production.json ")
                && l.to_ascii_lowercase().contains("if-none-match:"))
        })
        .collect();
    println!(
        "idle: {} requests in {:.1} s from {n} hosts polling every {}: {:.2} per host and poll",
        lines.len(),
        window.elapsed().as_secs_f64(),
        humantime::format_duration(poll),
        lines.len() as f64 / polls
    );
    assert!(others.is_empty(), "an idle poll is only the conditional GET of the manifest: {others:#?}");
    assert!(lines.len() as f64 <= polls * 1.15 + n as f64, "{} requests for about {polls:.0} polls", lines.len());
    assert!(
        lines.len() as f64 >= polls * 0.5,
        "{} requests for about {polls:.0} polls: the hosts do not poll",
        lines.len()
    );

    // 2.0.0 in two waves: first the hosts whose seed the first wave covers, exactly those; the rest later.
    let p = third(&ids, "2.0.0");
    let first: Vec<&str> = ids.iter().copied().filter(|h| seed(h, "web", "2.0.0") < p).collect();
    let delay = Duration::from_secs(12) + poll * 4 + Duration::from_millis(100) * n as u32;
    let waves = [format!("{p}%:0s"), format!("100%:{}s", delay.as_secs())];
    let out = fleet.publish("2.0.0", 0, &["--wave".into(), waves[0].clone(), "--wave".into(), waves[1].clone()]);
    let published = Instant::now();
    assert!(out.stdout.contains("2.0.0"), "{out:?}");
    wait_for("the first wave on 2.0.0", delay, || {
        first.iter().all(|h| fleet.agents.iter().find(|a| a.id == *h).unwrap().current().as_deref() == Some("2.0.0"))
    });
    // A few polls more: nobody else moved before the second wave.
    std::thread::sleep(poll * 3);
    assert!(published.elapsed() < delay, "the first wave took the whole delay; make it longer");
    for a in &fleet.agents {
        let want = if first.contains(&a.id.as_str()) { "2.0.0" } else { "1.0.0" };
        assert_eq!(
            a.current().as_deref(),
            Some(want),
            "{} (seed {}, first wave {p}%)",
            a.id,
            seed(&a.id, "web", "2.0.0")
        );
    }
    fleet.wait_reports("the others to report that they wait", settle, |r| {
        ids.iter()
            .filter(|h| !first.contains(h))
            .all(|h| r.get(*h).is_some_and(|r| r["outcome"] == "waiting" && r["version"] == "2.0.0"))
    });
    let (s, took) = fleet.fleet_status();
    println!("fleet status with {n} hosts: {} ms", took.as_millis());
    assert_eq!(s["version"], "2.0.0");
    assert_eq!(s["halted"], false);
    assert_eq!(s["hosts"], n as u64);
    assert_eq!(s["due"], first.len() as u64, "{s:#}");
    assert_eq!(s["on_version"], first.len() as u64);
    assert_eq!(s["wave"]["percent"], p as u64);
    fleet.wait_all_on("2.0.0", delay + settle);
    let since = unix(SystemTime::now()) - rfc3339(s["published_at"].as_str().unwrap());
    println!(
        "2.0.0: first wave ({p}%) {} of {n} hosts; all {n} on it {since:.1} s after its publication (second wave at \
         {} s)",
        first.len(),
        delay.as_secs()
    );

    // 3.0.0 fails its checks: the first wave deploys it and rolls back; once `halt_after` of them failed, every
    // other host that is due stops and reports itself halted; none of them ever deploys it.
    let p = third(&ids, "3.0.0");
    let first: Vec<&str> = ids.iter().copied().filter(|h| seed(h, "web", "3.0.0") < p).collect();
    let threshold = first.len().min(2);
    let before = fleet.proxy.lines().len();
    let out = fleet.publish(
        "3.0.0",
        1,
        &[
            "--wave".into(),
            format!("{p}%:0s"),
            "--wave".into(),
            format!("100%:{}s", delay.as_secs()),
            "--halt-after".into(),
            threshold.to_string(),
        ],
    );
    assert!(out.stdout.contains("3.0.0"), "{out:?}");
    // A host of the first wave that comes to it late may find the threshold reached already: halted too.
    let settled =
        |r: &serde_json::Value| r["version"] == "3.0.0" && (r["outcome"] == "rolled-back" || r["outcome"] == "halted");
    fleet.wait_reports("the first wave's failures reported", delay + settle, |r| {
        first.iter().all(|h| r.get(*h).is_some_and(settled))
    });
    let reports = fleet.reports();
    let failed: Vec<&str> = first.iter().copied().filter(|h| reports[*h]["outcome"] == "rolled-back").collect();
    assert!(failed.len() >= threshold, "{failed:?} of the first wave {first:?} failed");
    let threshold_at = {
        let mut t: Vec<f64> = failed.iter().map(|h| rfc3339(reports[*h]["reported_at"].as_str().unwrap())).collect();
        t.sort_by(f64::total_cmp);
        t[threshold - 1]
    };
    let (s, _) = fleet.fleet_status();
    let wave2 = rfc3339(s["published_at"].as_str().unwrap()) + delay.as_secs_f64();
    fleet.wait_reports("every other host halted", delay + settle, |r| {
        ids.iter()
            .filter(|h| !first.contains(h))
            .all(|h| r.get(*h).is_some_and(|r| r["outcome"] == "halted" && r["version"] == "3.0.0"))
    });
    let reports = fleet.reports();
    let last_halt = ids
        .iter()
        .filter(|h| !first.contains(h))
        .map(|h| rfc3339(reports[*h]["reported_at"].as_str().unwrap()))
        .fold(0.0, f64::max);
    let halt_took = last_halt - threshold_at.max(wave2);
    println!(
        "3.0.0: {} of the {} hosts of the first wave failed it; the other {} halted {halt_took:.1} s after they became \
         due with the threshold ({threshold}) reached (poll interval {})",
        failed.len(),
        first.len(),
        n - first.len(),
        humantime::format_duration(poll)
    );
    // Report times are whole seconds: one poll interval, rounded up, plus the second they are rounded to.
    assert!(
        halt_took <= poll.as_secs_f64() * 1.1 + 2.0,
        "halted {halt_took:.1} s after the threshold:\n{}",
        fleet.logs()
    );
    // What counting the failures cost the bucket: a due host lists the manifest's failure marks, and reads no
    // report; a host that failed marks it with one PUT.
    let lines: Vec<String> =
        fleet.proxy.lines()[before..].iter().filter(|l| !l.starts_with("HTTP/")).cloned().collect();
    let count = |f: &dyn Fn(&str) -> bool| lines.iter().filter(|l| f(l)).count();
    let listings =
        count(&|l| l.starts_with("GET ") && (l.contains("failures%2F") || l.contains("prefix=web/failures/")));
    let report_gets = count(&|l| l.starts_with("GET /releases/web/reports/"));
    let marks = count(&|l| l.starts_with("PUT /releases/web/failures/"));
    println!(
        "halt: {listings} listings of the failure marks by {n} hosts, {marks} marks written, {report_gets} reports read"
    );
    assert_eq!(report_gets, 0, "counting the failures reads no report");
    assert!(marks >= failed.len(), "{marks} marks for {} failures", failed.len());
    assert!(listings >= n - failed.len() && listings <= 2 * n, "{listings} listings by {n} hosts");
    for a in &fleet.agents {
        if failed.contains(&a.id.as_str()) {
            assert!(a.deployed().contains(&"3.0.0".to_owned()), "{} reported failing it", a.id);
        } else {
            assert!(!a.deployed().contains(&"3.0.0".to_owned()), "{} deployed a halted release", a.id);
        }
        assert_eq!(a.current().as_deref(), Some("2.0.0"), "{}", a.id);
    }
    let (s, took) = fleet.fleet_status();
    assert_eq!(s["halted"], true, "{s:#}");
    assert_eq!(s["failed"], failed.len() as u64);
    assert_eq!(s["outcomes"]["halted"], (n - failed.len()) as u64);
    assert_eq!(s["running"]["2.0.0"], n as u64);
    assert!(s["stale"].as_array().unwrap().is_empty());
    println!("fleet status (halted) with {n} hosts: {} ms", took.as_millis());

    // A newer manifest supersedes the halted one: every host moves on.
    fleet.publish("4.0.0", 0, &[]);
    fleet.wait_all_on("4.0.0", settle);
    let (s, _) = fleet.fleet_status();
    assert_eq!(s["halted"], false);
    fleet.wait_reports("every host's report of 4.0.0", settle, |r| {
        r.values().all(|r| r["outcome"] == "ok" && r["version"] == "4.0.0")
    });

    let usage: Vec<(u64, f64)> = fleet.agents.iter().map(Agent::usage).collect();
    let peak = usage.iter().map(|u| u.0).max().unwrap();
    let cpu: f64 = usage.iter().map(|u| u.1).sum();
    println!(
        "agents: peak RSS {} MiB (largest), {:.1} CPU seconds in all ({:.2} per host) over {:.0} s",
        peak / 1024,
        cpu,
        cpu / n as f64,
        started.elapsed().as_secs_f64()
    );
}

/// `--halt-after P%` is a share of the hosts that report: a host that is due lists the reports (the whole) as well
/// as the failure marks. One failure of six hosts reaches 10%.
#[test]
fn a_halt_in_percent_counts_the_hosts_that_report() {
    let n = 6;
    let poll = Duration::from_millis(500);
    let mut fleet = Fleet::new(n, poll);
    let settle = Duration::from_secs(60);
    let ids: Vec<String> = fleet.agents.iter().map(|a| a.id.clone()).collect();
    fleet.publish("1.0.0", 0, &[]);
    fleet.start();
    fleet.wait_all_on("1.0.0", settle);
    fleet.wait_reports("every host's report of 1.0.0", settle, |r| r.len() == n);

    // 2.0.0 fails its checks. Its first wave covers one host, the one of the lowest seed; the rest are due later.
    let mut seeds: Vec<(u8, &str)> = ids.iter().map(|h| (seed(h, "web", "2.0.0"), h.as_str())).collect();
    seeds.sort();
    let (low, first) = seeds[0];
    assert!(seeds[1].0 > low, "two hosts share the lowest seed: {seeds:?}");
    let later = Duration::from_secs(10);
    fleet.publish(
        "2.0.0",
        1,
        &[
            "--wave".into(),
            format!("{}%:0s", low + 1),
            "--wave".into(),
            format!("100%:{}s", later.as_secs()),
            "--halt-after".into(),
            "10%".into(),
        ],
    );
    fleet.wait_reports("the other hosts halted", settle, |r| {
        r.get(first).is_some_and(|r| r["version"] == "2.0.0" && r["outcome"] == "rolled-back")
            && ids
                .iter()
                .filter(|h| *h != first)
                .all(|h| r.get(h.as_str()).is_some_and(|r| r["version"] == "2.0.0" && r["outcome"] == "halted"))
    });
    for a in &fleet.agents {
        assert_eq!(a.current().as_deref(), Some("1.0.0"), "{}", a.id);
        if a.id != first {
            assert!(!a.deployed().contains(&"2.0.0".to_owned()), "{} deployed a halted release", a.id);
            let log = std::fs::read_to_string(a.dir.join("daemon.log")).unwrap();
            assert!(log.contains("halted: 1 of 6 reporting hosts failed it (halt_after 10%)"), "{}:\n{log}", a.id);
        }
    }
    let (s, _) = fleet.fleet_status();
    assert_eq!(s["halted"], true, "{s:#}");
    assert_eq!(s["failed"], 1);
    assert_eq!(s["hosts"], n as u64);
}
