//! Real `kill -9`s by the test rather than at crash points (they run without the `crash-points` feature too): a
//! deploy killed while its hook runs (the next command kills the hook), one killed in its restart, and deploys,
//! rollbacks and prunes killed at random moments.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{
    archive, assert_complete, assert_settled, configure, deploy, leftovers, next_command_converges, recover_events,
    release, release_with, state, FAST,
};
use crate::harness::{Host, BIN};

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// A real `kill -9` of a deploy waiting for its `before_activate` hook: the hook (a shell and the sleep it
/// started, in their own process group) would run on and overlap the next deploy's. The next command kills them
/// and says so.
#[test]
fn a_hook_left_running_by_a_killed_agent_is_killed_by_the_next_command() {
    let h = Host::new();
    configure(&h, 10, FAST);
    deploy(&h, "v1", true).expect(0);
    let (shell, sleeper) = (h.path().join("hook.pid"), h.path().join("sleep.pid"));
    let hook = format!(
        "{FAST}\n[apps.web.hooks]\nbefore_activate = [\"sh\", \"-c\", \"echo $$ > {}; sleep 600 & echo $! > {}; wait\"]\n",
        shell.display(),
        sleeper.display()
    );
    configure(&h, 10, &hook);
    let a = archive(&h, "v2", true);
    let mut child = std::process::Command::new(BIN)
        .args(["--config", h.config.to_str().unwrap(), "deploy", "web", "--file", &a, "--version", "v2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default().trim().to_owned();
    while read(&sleeper).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "the hook never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (shell, sleeper) = (read(&shell), read(&sleeper));
    assert!(alive(&shell) && alive(&sleeper), "the hook should outlive the killed agent (or the test proves nothing)");

    configure(&h, 10, FAST);
    let out = h.run(&["unpin", "web"]);
    assert_eq!(out.code, 0, "{out:#?}");
    let start = Instant::now();
    while alive(&shell) || alive(&sleeper) {
        assert!(start.elapsed() < Duration::from_secs(5), "the hook left running was not killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let reason = recover_events(&h).last().unwrap()["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("killed `sh -c echo $$ > ") && reason.contains(&format!("(pid {shell})")), "{reason}");
    assert!(reason.contains("interrupted before the switch; still on v1"), "{reason}");
    assert_eq!(assert_complete(&h), "v1");
    assert_settled(&h, "hook left running");
    deploy(&h, "v2", true).expect(0);
    assert_eq!(assert_complete(&h), "v2");
}

#[test]
fn kill_9_during_restart_is_finished_by_the_next_command() {
    let h = Host::new();
    h.write_config("[apps.web.service]\nrestart = [\"sleep\", \"2\"]\ntimeout = \"10s\"");
    let v1 = h.archive("v1.tar.zst", &release("v1", true));
    h.deploy(&v1, "v1").expect(0);
    let v2 = h.archive("v2.tar.zst", &release("v2", true));
    let mut child = std::process::Command::new(BIN)
        .args([
            "--config",
            h.config.to_str().unwrap(),
            "deploy",
            "web",
            "--file",
            v2.to_str().unwrap(),
            "--version",
            "v2",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the journal says the switch is done and the restart runs.
    let state = h.state_dir().join("state.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&state).is_ok_and(|s| s.contains("\"checking\"")) {
        assert!(Instant::now() < deadline, "deploy never reached the restart");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(assert_complete(&h), "v2");
    let s = h.run(&["--json", "status", "web"]).expect(0).json();
    assert_eq!(s["apps"][0]["in_flight"]["step"], "checking", "status shows the interrupted step: {s}");
    // Any changing command reconciles first: v2 is restarted, verified and committed.
    h.run(&["prune", "web"]).expect(0);
    let s = h.run(&["--json", "status", "web"]).expect(0).json();
    assert!(s["apps"][0]["in_flight"].is_null());
    assert_eq!(s["apps"][0]["last_good"], "v2");
    let rec = h.history().into_iter().find(|e| e["op"] == "recover").unwrap();
    assert!(rec["reason"].as_str().unwrap().contains("interrupted at step checking"), "{rec}");
}

/// Restart, hooks and checks that take a little time, so that random kills land in every step.
const SLOW: &str = r#"
[apps.web.service]
restart = ["sleep", "0.08"]
timeout = "10s"

[[apps.web.checks]]
exec = ["test", "-e", "ok"]
timeout = "5s"

[apps.web.health]
start_period = "0s"
interval = "40ms"
healthy_after = 2
deadline = "2s"
bake = "80ms"

[apps.web.hooks]
before_activate = ["sleep", "0.05"]
after_activate = ["sleep", "0.03"]
timeout = "10s"
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum RandomOp {
    Deploy,
    DeployBad,
    Rollback,
    Prune,
}

/// Deploys, rollbacks and prunes killed with SIGKILL at random moments, many times: after each kill `current` is
/// complete, the next command converges (saying what it recovered), and a deploy works. Seeded: the seed is printed
/// and `SWITCHBACK_KILL_SEED` repeats a run; `SWITCHBACK_KILL_SECS` runs longer than the default 25 s.
#[test]
fn random_kills_always_converge() {
    let seed = std::env::var("SWITCHBACK_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let secs: u64 = std::env::var("SWITCHBACK_KILL_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(25);
    eprintln!("random kills: seed {seed} for {secs} s (SWITCHBACK_KILL_SEED={seed} repeats the run)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let h = Host::new();
    configure(&h, 4, SLOW);
    let mut next = 1u32;
    // Releases of some 150 files, so that unpacking them and pruning them take a moment too.
    let mut fresh = |h: &Host, healthy: bool| -> (String, String) {
        let v = format!("v{next}");
        next += 1;
        let many = (0..120).map(|i| (format!("many/{}/m{i}", i % 6), format!("{v} {i}\n").repeat(20).into_bytes()));
        let a = h.archive(&format!("{v}.tar.zst"), &release_with(&v, healthy, many.collect()));
        (a.to_str().unwrap().to_owned(), v)
    };
    for _ in 0..2 {
        let (a, v) = fresh(&h, true);
        h.run(&["deploy", "web", "--file", &a, "--version", &v]).expect(0);
    }
    // How long each operation takes when left alone: kills are spread over that time.
    let mut took: BTreeMap<RandomOp, Duration> = BTreeMap::new();
    let mut hits: BTreeMap<String, u32> = BTreeMap::new();
    let (mut kills, mut finished) = (0u32, 0u32);
    let start = Instant::now();
    // At least `secs`, and on a slow machine longer (up to three times as long) until three dozen kills ran.
    let enough = |kills: u32| {
        let t = start.elapsed();
        t >= Duration::from_secs(secs) && (kills >= 36 || t >= Duration::from_secs(secs * 3))
    };
    while !enough(kills) {
        let op = match rng.u32(0..100) {
            0..=49 => RandomOp::Deploy,
            50..=57 => RandomOp::DeployBad,
            58..=84 => RandomOp::Rollback,
            _ => RandomOp::Prune,
        };
        let args: Vec<String> = match op {
            RandomOp::Deploy | RandomOp::DeployBad => {
                let (a, v) = fresh(&h, op == RandomOp::Deploy);
                ["deploy", "web", "--file", &a, "--version", &v].map(str::to_owned).to_vec()
            }
            RandomOp::Rollback => ["rollback", "web"].map(str::to_owned).to_vec(),
            RandomOp::Prune => ["prune", "web", "--keep", "1"].map(str::to_owned).to_vec(),
        };
        let what = format!("seed {seed}, kill {}: {}", kills + 1, args.join(" "));
        // Half of the kills are spread evenly over the operation, half favour its start (verify, unpack, sync,
        // hook, switch), which is quicker than the restart and checks that follow.
        let span = took.get(&op).copied().unwrap_or(Duration::from_millis(600)).as_micros() as f64;
        let at = if rng.bool() { rng.f64() } else { rng.f64().powi(3) };
        let delay = Duration::from_micros((span * at) as u64);
        let began = Instant::now();
        let mut child = std::process::Command::new(BIN)
            .arg("--config")
            .arg(&h.config)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut exited = None;
        while began.elapsed() < delay {
            if let Some(status) = child.try_wait().unwrap() {
                exited = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Some(status) = exited {
            // Finished before its kill: it must have ended in a documented way.
            let code = status.code().unwrap_or(-1);
            assert!([0, 1, 3].contains(&code), "{what}: exit {code}");
            took.insert(op, began.elapsed().max(took.get(&op).copied().unwrap_or_default()));
            finished += 1;
            assert_settled(&h, &what);
            continue;
        }
        let step_before = std::fs::read_to_string(h.state_dir().join("state.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .map(|s| s["in_flight"]["step"].as_str().unwrap_or("-").to_owned());
        child.kill().unwrap();
        let status = child.wait().unwrap();
        if status.code().is_some() {
            // It finished between the last look and the kill.
            finished += 1;
            assert_settled(&h, &what);
            continue;
        }
        kills += 1;
        // What the kill interrupted, from the state it left (read after the death, so it is exact).
        let st = state(&h);
        // Leftovers in the release store (staging, trash, a temporary link) get a recover event; the killed
        // command's pending event is recorded as its own, interrupted.
        let left: Vec<String> = leftovers(&h).into_iter().filter(|n| n.starts_with('.')).collect();
        let pending: Option<serde_json::Value> =
            std::fs::read(h.state_dir().join("pending-event.json")).ok().map(|b| serde_json::from_slice(&b).unwrap());
        let history_before = h.history().len();
        let label = match st["in_flight"].as_object() {
            Some(f) => format!("{}/{}", f["op"].as_str().unwrap(), f["step"].as_str().unwrap()),
            None if !left.is_empty() => format!("{op:?}/leftovers").to_lowercase(),
            None if pending.is_some() => format!("{op:?}/committed, not recorded").to_lowercase(),
            None => format!("{op:?}/nothing in flight").to_lowercase(),
        };
        *hits.entry(label.clone()).or_default() += 1;
        let what = format!("{what} [{label}, step before the kill {}]", step_before.as_deref().unwrap_or("?"));
        assert_complete(&h);
        let before = recover_events(&h).len();
        let expect: Vec<String> = match st["in_flight"].as_object() {
            Some(f) => vec![format!("{} of {}", f["op"].as_str().unwrap(), f["version"].as_str().unwrap())],
            None if !left.is_empty() => vec!["removed leftovers".to_owned()],
            None => vec![],
        };
        let expect: Vec<&str> = expect.iter().map(String::as_str).collect();
        next_command_converges(&h, &what, before, &expect);
        // A killed command that had begun (its event was pending) is in history exactly once: recorded before the
        // kill, or recovered as interrupted. One killed before it began has no event.
        let events = h.history();
        match &pending {
            Some(p) => {
                let same = |e: &&serde_json::Value| {
                    e["time"] == p["time"] && e["op"] == p["op"] && e["who"]["pid"] == p["who"]["pid"]
                };
                assert_eq!(events.iter().filter(same).count(), 1, "{what}: the killed command's event: {p}");
            }
            None => {
                let own: Vec<_> = events[history_before..].iter().filter(|e| e["op"] == args[0]).collect();
                assert!(own.is_empty(), "{what}: an event for a command that had not begun: {own:#?}");
            }
        }
        let (a, v) = fresh(&h, true);
        let out = h.run(&["deploy", "web", "--file", &a, "--version", &v]);
        assert_eq!(out.code, 0, "{what}: the deploy after the kill failed: {out:#?}");
        assert_eq!(assert_complete(&h), v, "{what}");
    }
    eprintln!(
        "random kills: {kills} kills, {finished} runs finished before their kill, in {:.1} s; where the kills \
         landed: {hits:?}",
        start.elapsed().as_secs_f64()
    );
    assert!(kills >= 24, "too few kills ({kills}) to mean anything: {hits:?}");
}
