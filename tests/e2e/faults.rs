//! Faults other than a crash: a full disk (a small tmpfs as the app root or as the state directory) during the
//! unpack, the state write and the history append; readers racing deploys and rollbacks (never a torn state file
//! or link); and many commands at once on one app, with and without a running daemon (the lock serialises them,
//! none deadlocks, history records each, the end state is consistent).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::crash::{
    archive, assert_complete, assert_settled, configure, deploy, release_problem, release_tree, release_with,
};
#[cfg(feature = "crash-points")]
use crate::crash::{recover_events, state, FAST};
use crate::harness::*;

/// A tmpfs of `size` mounted on `dir` (the tests run as root); unmounted on drop, even after a panic.
pub(crate) struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub(crate) fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir)
            .status();
        assert!(st.is_ok_and(|s| s.success()), "cannot mount a tmpfs on {} (the tests run as root)", dir.display());
        Tmpfs { dir: dir.to_owned() }
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.dir).status();
        assert!(st.is_ok_and(|s| s.success()), "cannot resize the tmpfs on {}", self.dir.display());
    }

    /// Bytes free on the filesystem.
    fn free(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.dir).unwrap();
        st.f_bavail * st.f_frsize
    }

    /// Fills the filesystem to the last page with `DIR/filler`; returns its path.
    #[cfg(feature = "crash-points")]
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let page = vec![0xA5u8; 4096];
        loop {
            match f.write(&page) {
                Ok(n) if n == page.len() => {}
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        assert_eq!(self.free(), 0, "{} is not full", self.dir.display());
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let quiet = |c: &mut Command| c.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        if !quiet(Command::new("umount").arg(&self.dir)) {
            // Something still has a file open there (a process a failed test left): detach it anyway.
            quiet(Command::new("umount").arg("-l").arg(&self.dir));
        }
    }
}

#[track_caller]
fn assert_enospc(out: &Out, what: &str, path: &Path) {
    assert_eq!(out.code, 1, "{what}: expected exit 1 (failed, nothing changed): {out:#?}");
    assert!(out.stderr.contains("No space left on device"), "{what}: the message does not say why: {out:#?}");
    let path = path.display().to_string();
    assert!(out.stderr.contains(&path), "{what}: the message does not name {path}: {out:#?}");
}

/// Unpacking into an app root that fills up: the preflight check refuses what it can foresee; an archive that does
/// not declare its unpacked size gets past it and hits ENOSPC mid-unpack, which fails cleanly, gives the space
/// back and is not taken for a refused archive. Once there is room, the same archive deploys.
#[test]
fn a_full_app_root_during_the_unpack_fails_cleanly() {
    let h = Host::new();
    let fs = Tmpfs::mount(&h.root(), "2m");
    configure(&h, 3, "");
    // The default reserve (64 MiB) does not fit in 2 MiB: the preflight check refuses before anything is written.
    let out = deploy(&h, "v1", true);
    assert_eq!(out.code, 1, "{out:#?}");
    let root = h.root().display().to_string();
    assert!(out.stderr.contains(&format!("not enough free space under {root}")), "{out:#?}");
    assert_eq!(h.current(), None);
    configure(&h, 3, "limits = { reserve = 0 }");
    deploy(&h, "v1", true).expect(0);
    let free_before = fs.free();
    // 6 MiB of zeros compress to a few KiB, and a streamed zstd frame does not declare its content size: the
    // preflight estimate is the archive's own size, so the unpack itself runs into the full disk.
    let big = release_with("v2", true, vec![("big.bin".into(), vec![0u8; 6 << 20])]);
    assert_eq!(zstd::zstd_safe::get_frame_content_size(&big).ok().flatten(), None, "the frame declares its size");
    assert!((big.len() as u64) < free_before / 4, "the archive must fit the preflight estimate");
    let path = h.archive("v2.tar.zst", &big);
    let out = h.deploy(&path, "v2");
    assert_enospc(&out, "unpack", &h.root().join("releases"));
    assert!(out.stderr.contains(&path.display().to_string()), "the message does not name the archive: {out:#?}");
    assert!(!out.stderr.contains("refused archive"), "a full disk is not the archive's fault: {out:#?}");
    assert_eq!(assert_complete(&h), "v1");
    assert_eq!(h.release_dirs(), ["v1"], "staging left behind");
    assert_settled(&h, "unpack");
    assert_eq!(fs.free(), free_before, "the staging's space was not given back");
    let last = h.history().pop().unwrap();
    assert_eq!((last["op"].as_str(), last["outcome"].as_str()), (Some("deploy"), Some("failed")), "{last}");
    assert!(last["reason"].as_str().unwrap().contains("No space left on device"), "{last}");
    // Room again: the same archive deploys.
    fs.resize("16m");
    h.deploy(&path, "v2").expect(0);
    assert_eq!(assert_complete(&h), "v2");
    assert_settled(&h, "unpack, after freeing space");
}

/// A full state directory: a deploy must journal its intent before it unpacks, and a pin must save the state;
/// filled just after each saved its pending event, both fail cleanly, naming the state file, with the app on its
/// release and the old state file intact. A command that finds the disk already full fails before it starts, naming
/// what it could not save; once there is room, the events of the failed commands are recorded.
#[cfg(feature = "crash-points")]
#[test]
fn a_full_state_dir_fails_the_state_write_cleanly() {
    let h = Host::new();
    let fs = Tmpfs::mount(&h.state_dir(), "512k");
    configure(&h, 3, FAST);
    deploy(&h, "v1", true).expect(0);
    let state_path = h.state_dir().join("state.json");
    let state_before = std::fs::read_to_string(&state_path).unwrap();
    let a = archive(&h, "v2", true);
    let (child, pause) = paused_at(&h, &["deploy", "web", "--file", &a, "--version", "v2"], "after-pending-event");
    let filler = fs.fill();
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait(Duration::from_secs(30));
    assert_enospc(&out, "deploy", &state_path);
    assert!(out.stderr.contains("saving"), "{out:#?}");
    assert_eq!(assert_complete(&h), "v1");
    assert_eq!(h.release_dirs(), ["v1"], "nothing may be unpacked without a journal");
    assert_eq!(std::fs::read_to_string(&state_path).unwrap(), state_before);

    let out = h.run(&["pin", "web", "v1"]);
    assert_enospc(&out, "pin", &state_path);
    assert_eq!(std::fs::read_to_string(&state_path).unwrap(), state_before);
    let stray: Vec<String> = std::fs::read_dir(h.state_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert_eq!(stray, Vec::<String>::new(), "temporary state files left");
    std::fs::remove_file(filler).unwrap();
    deploy(&h, "v2", true).expect(0);
    assert_eq!(assert_complete(&h), "v2");
    assert_settled(&h, "state write, after freeing space");
    // Each command is in history once: the failed ones as failed, or, where the full disk kept them from
    // appending their outcome, as interrupted (recorded by the next command from their pending copy).
    let events: Vec<String> = h
        .history()
        .iter()
        .filter(|e| e["op"] != "recover")
        .map(|e| {
            let outcome = e["outcome"].as_str().unwrap().replace("interrupted", "failed");
            format!("{} {} {outcome}", e["op"].as_str().unwrap(), e["version"].as_str().unwrap_or(""))
        })
        .collect();
    assert_eq!(events, ["deploy v1 ok", "deploy v2 failed", "pin v1 failed", "deploy v2 ok"]);

    // Full before a command starts: it fails saving its own event, and nothing else happens.
    let filler = fs.fill();
    let out = h.run(&["pin", "web", "v2"]);
    assert_enospc(&out, "pin", &h.state_dir());
    assert!(out.stderr.contains("pending-event.json"), "{out:#?}");
    std::fs::remove_file(filler).unwrap();
    assert!(state(&h)["pin"].is_null());
}

/// The state disk fills up while a deploy is paused right after its switch: the journal cannot say that v2 is
/// live, so the deploy switches back to v1 (nothing was restarted yet) and fails with exit 1, as "nothing changed"
/// promises. The next command clears the journal.
#[cfg(feature = "crash-points")]
#[test]
fn a_full_state_dir_right_after_the_switch_switches_back() {
    let h = Host::new();
    let fs = Tmpfs::mount(&h.state_dir(), "512k");
    configure(&h, 3, FAST);
    deploy(&h, "v1", true).expect(0);
    let a = archive(&h, "v2", true);
    let (child, pause) = paused_at(&h, &["deploy", "web", "--file", &a, "--version", "v2"], "after-switch");
    assert_eq!(h.current().as_deref(), Some("v2"), "paused after the switch");
    let filler = fs.fill();
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait(Duration::from_secs(30));
    assert_enospc(&out, "switch journal", &h.state_dir().join("state.json"));
    assert!(out.stderr.contains("switched back to v1"), "{out:#?}");
    assert_eq!(assert_complete(&h), "v1");
    assert_eq!(state(&h)["in_flight"]["step"], "switching", "the journal's last word");
    std::fs::remove_file(filler).unwrap();
    let before = recover_events(&h).len();
    crate::crash::next_command_converges(&h, "switch journal", before, &["interrupted before the switch; still on v1"]);
    h.run(&["deploy", "web", "--version", "v2"]).expect(0);
    assert_eq!(assert_complete(&h), "v2");
    assert_settled(&h, "switch journal, after freeing space");
}

/// A full state directory when only history must grow (`prune` with nothing to prune): exit 1 naming the history
/// file; the write cut short by the full disk is taken back, so after freeing space no event is lost to a torn line.
#[cfg(feature = "crash-points")]
#[test]
fn a_full_state_dir_fails_the_history_append_cleanly() {
    let h = Host::new();
    let fs = Tmpfs::mount(&h.state_dir(), "512k");
    configure(&h, 3, "");
    deploy(&h, "v1", true).expect(0);
    let history = h.state_dir().join("history.jsonl");
    // End the history 40 bytes short of a page, so that the next event starts in the page it has and needs a new
    // one to finish: its write is cut short by the full disk, not refused whole.
    let len = std::fs::metadata(&history).unwrap().len();
    let mut target = (len / 4096 + 1) * 4096 - 40;
    if target < len + 2 {
        target += 4096;
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(&history).unwrap();
    f.write_all(format!("{}\n", " ".repeat((target - len - 1) as usize)).as_bytes()).unwrap();
    drop(f);
    let (child, pause) = paused_at(&h, &["prune", "web"], "after-pending-event");
    let filler = fs.fill();
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait(Duration::from_secs(30));
    assert_enospc(&out, "history", &history);
    assert_eq!(std::fs::metadata(&history).unwrap().len(), target, "a torn event was left in history");
    assert_eq!(assert_complete(&h), "v1");
    std::fs::remove_file(filler).unwrap();
    h.run(&["prune", "web"]).expect(0);
    deploy(&h, "v2", true).expect(0);
    let text = std::fs::read_to_string(&history).unwrap();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "a torn line in history: {line}");
    }
    let ops: Vec<(String, String)> = h
        .history()
        .iter()
        .map(|e| (e["op"].as_str().unwrap().to_owned(), e["outcome"].as_str().unwrap().to_owned()))
        .collect();
    // The prune that could not record its outcome is recorded by the next one, as interrupted.
    let want = [("deploy", "ok"), ("prune", "interrupted"), ("prune", "ok"), ("deploy", "ok")]
        .map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(ops, want, "history after the failed append");
    assert_eq!(assert_complete(&h), "v2");
}

/// A torn last line (power loss in the middle of an append) stays a line of its own: the next event is not glued
/// onto it, so it is not lost too.
#[test]
fn a_torn_history_line_does_not_swallow_the_next_event() {
    let h = Host::new();
    configure(&h, 3, "");
    deploy(&h, "v1", true).expect(0);
    let history = h.state_dir().join("history.jsonl");
    let mut f = std::fs::OpenOptions::new().append(true).open(&history).unwrap();
    f.write_all(br#"{"time":"2025-01-01T00:00:00Z","app":"web","op":"depl"#).unwrap();
    drop(f);
    deploy(&h, "v2", true).expect(0);
    let events = h.history();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!((events[1]["op"].as_str(), events[1]["version"].as_str()), (Some("deploy"), Some("v2")));
}

/// A child process bounded in time: killed (and the test failed) when it overruns; killed on drop.
struct Child(Option<std::process::Child>);

/// Runs the binary with `args`, paused at crash point `point`: returns once it waits there. Removing the returned
/// file lets it go on.
#[cfg(feature = "crash-points")]
fn paused_at(h: &Host, args: &[&str], point: &str) -> (Child, PathBuf) {
    let pause = h.path().join(format!("pause-{point}"));
    let child = Command::new(BIN)
        .args(["--config", h.config.to_str().unwrap()])
        .args(args)
        .env("SWITCHBACK_PAUSE_AT", point)
        .env("SWITCHBACK_PAUSE_FILE", &pause)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let child = Child(Some(child));
    let start = Instant::now();
    while !pause.exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "{args:?} never reached {point}");
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, pause)
}

impl Child {
    fn wait(mut self, limit: Duration) -> Out {
        let mut c = self.0.take().unwrap();
        let start = Instant::now();
        while c.try_wait().unwrap().is_none() {
            if start.elapsed() > limit {
                let _ = c.kill();
                let out = c.wait_with_output().unwrap();
                panic!(
                    "still running after {limit:?} (a deadlock?): {}",
                    String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        c.wait_with_output().unwrap().into()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the binary with `args`, bounded by `limit`; returns its pid and output.
fn run_bounded(h: &Host, args: &[String], limit: Duration) -> (u32, Out) {
    let c = Command::new(BIN)
        .arg("--config")
        .arg(&h.config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = c.id();
    (pid, Child(Some(c)).wait(limit))
}

/// Deploys and rollbacks run in a loop while another thread reads `state.json` and `current` as fast as it can:
/// the state file always parses, and `current` always names a complete release.
#[test]
fn readers_never_see_a_torn_state_file_or_link() {
    let h = Arc::new(Host::new());
    configure(&h, 3, "");
    deploy(&h, "v1", true).expect(0);
    deploy(&h, "v2", true).expect(0);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (h, stop) = (h.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut runs = 0u32;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(8) {
                runs += 1;
                let out = if runs.is_multiple_of(3) {
                    h.run(&["rollback", "web"])
                } else {
                    let v = format!("v{}", runs + 2);
                    deploy(&h, &v, true)
                };
                assert!(out.code == 0 || (out.code == 1 && runs.is_multiple_of(3)), "{out:#?}");
            }
            stop.store(true, Ordering::Relaxed);
            runs
        })
    };
    let state_path = h.state_dir().join("state.json");
    let link = h.root().join("current");
    let (mut reads, mut checked, mut versions) = (0u64, 0u64, std::collections::BTreeSet::new());
    while !stop.load(Ordering::Relaxed) {
        let bytes = std::fs::read(&state_path).expect("state.json always exists");
        let st: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("a torn state.json ({e}): {}", String::from_utf8_lossy(&bytes)));
        assert!(st["schema"] == 1 && st["current"].is_string(), "{st}");
        let target = std::fs::read_link(&link).expect("current always exists");
        let v = target.strip_prefix("releases").expect("current points into releases/").to_str().unwrap().to_owned();
        assert!(!v.starts_with('.'), "current points at a staging or trash directory: {v}");
        // Every 25th read checks every file. A release may be pruned once `current` left it: only a problem that
        // is still there while `current` names the release is one.
        if reads % 25 == 0 {
            if let Err(problem) = release_problem(&h.root().join("releases").join(&v), &v) {
                let still = std::fs::read_link(&link).unwrap();
                assert_ne!(still, target, "current -> {v}, which is not complete: {problem}");
            } else {
                checked += 1;
            }
        } else if !h.root().join("releases").join(&v).join("MANIFEST").exists() {
            assert_ne!(std::fs::read_link(&link).unwrap(), target, "current -> {v}, which is not a release");
        }
        versions.insert(v);
        reads += 1;
    }
    let runs = writer.join().unwrap();
    eprintln!(
        "torn reads: {reads} reads ({checked} full release checks) of {} versions over {runs} runs",
        versions.len()
    );
    assert!(reads >= 2000, "too few reads ({reads})");
    assert!(versions.len() >= 3, "the link hardly moved: {versions:?}");
    assert_settled(&h, "torn reads");
}

/// A restart command that notices two commands in their critical sections at once (which the lock must prevent):
/// it makes a directory for its duration, and reports when that directory is already there.
fn overlap_detector(h: &Host) -> String {
    let inside = h.path().join("inside");
    let overlaps = h.path().join("overlaps");
    format!(
        "[apps.web.service]\nrestart = [\"sh\", \"-c\", \"mkdir {i} 2>/dev/null || echo $$ >> {o}; sleep 0.05; rmdir {i} 2>/dev/null; true\"]\ntimeout = \"10s\"\n\n[[apps.web.checks]]\nexec = [\"test\", \"-e\", \"ok\"]\ntimeout = \"5s\"\n\n[apps.web.health]\nstart_period = \"0s\"\ninterval = \"30ms\"\nhealthy_after = 2\ndeadline = \"10s\"\nbake = \"50ms\"\n",
        i = inside.display(),
        o = overlaps.display()
    )
}

/// One command of a concurrency run and how it ended.
#[derive(Debug)]
struct Ran {
    pid: u32,
    args: Vec<String>,
    out: Out,
}

/// `threads` threads each run `per_thread` random commands on the app (deploy, deploy from disk, rollback,
/// pin/unpin, prune, status) with `--wait 3s` or `--wait 0s`; each is bounded in time.
fn run_concurrently(h: &Host, seed: u64, threads: usize, per_thread: usize) -> Vec<Ran> {
    let ran = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..threads {
            let ran = &ran;
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(t as u64));
                for i in 0..per_thread {
                    let args: Vec<String> = match rng.u32(0..10) {
                        0..=2 => {
                            let v = format!("t{t}-{i}");
                            let a = archive(h, &v, true);
                            vec!["deploy".into(), "web".into(), "--file".into(), a, "--version".into(), v]
                        }
                        3 => vec!["deploy".into(), "web".into(), "--version".into(), "v1".into()],
                        4 | 5 => vec!["rollback".into(), "web".into()],
                        6 => vec!["pin".into(), "web".into(), "v1".into()],
                        7 => vec!["unpin".into(), "web".into()],
                        8 => vec!["prune".into(), "web".into(), "--keep".into(), "2".into()],
                        _ => vec!["status".into(), "web".into()],
                    };
                    // Most wait for the lock; some do not wait at all and may give up at once (exit 5).
                    let wait = if rng.u32(0..4) == 0 { "0s" } else { "3s" };
                    let mut all = vec!["--json".to_owned(), "--wait".to_owned(), wait.to_owned()];
                    all.extend(args.iter().cloned());
                    let (pid, out) = run_bounded(h, &all, Duration::from_secs(60));
                    ran.lock().unwrap().push(Ran { pid, args, out });
                }
            });
        }
    });
    ran.into_inner().unwrap()
}

/// Checks a concurrency run: documented exit codes only; each command that ran is in history under its pid, and
/// none that gave up (busy) is; no two critical sections overlapped; the end state is consistent.
#[track_caller]
fn assert_serialised(h: &Host, ran: &[Ran]) {
    let history = h.history();
    let mut codes = std::collections::BTreeMap::<String, Vec<i32>>::new();
    for r in ran {
        let op = r.args[0].as_str();
        let what = format!("{} (pid {}): {:#?}", r.args.join(" "), r.pid, r.out);
        codes.entry(op.to_owned()).or_default().push(r.out.code);
        let allowed: &[i32] = match op {
            "status" => &[0],
            // A deploy from disk of a release pruned meanwhile, on an app without a source: a usage error.
            "deploy" if !r.args.iter().any(|a| a == "--file") => &[0, 1, 2, 5],
            _ => &[0, 1, 5],
        };
        assert!(allowed.contains(&r.out.code), "{what}");
        if r.out.code == 5 {
            assert!(r.out.stderr.contains("busy"), "{what}");
        }
        let events: Vec<&serde_json::Value> = history.iter().filter(|e| e["who"]["pid"] == r.pid).collect();
        let ran_it = match (op, r.out.code) {
            ("status", _) | (_, 5) => false,
            // `unpin` of an app that is not pinned changes nothing and records nothing.
            ("unpin", 0) => !r.out.json()["unpinned"].is_null(),
            (_, 0) => true,
            // A deploy of an archive that failed is recorded as failed; a refused rollback, pin or deploy from
            // disk (no target, not on disk, pinned) did nothing.
            ("deploy", 1) if r.args.iter().any(|a| a == "--file") => true,
            _ => continue,
        };
        if ran_it {
            assert!(events.iter().any(|e| e["op"] == op), "{what}\nis not in history; its events: {events:#?}");
        } else {
            assert!(events.iter().all(|e| e["op"] == "recover"), "{what}\nrecorded {events:#?}");
        }
    }
    eprintln!("concurrency: {} commands; exit codes by command: {codes:?}", ran.len());
    let overlaps = std::fs::read_to_string(h.path().join("overlaps")).unwrap_or_default();
    assert_eq!(overlaps, "", "two commands were in their critical sections at once");
    assert_settled(h, "concurrency");
}

/// Several commands at once on one app from threads: the lock serialises them, none deadlocks.
#[test]
fn concurrent_commands_are_serialised() {
    let seed =
        std::env::var("SWITCHBACK_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("concurrency: seed {seed} (SWITCHBACK_KILL_SEED={seed} repeats the run)");
    let h = Host::new();
    configure(&h, 4, &overlap_detector(&h));
    deploy(&h, "v1", true).expect(0);
    let ran = run_concurrently(&h, seed, 5, 6);
    assert!(ran.iter().any(|r| r.args[0] != "status" && r.out.code == 0), "nothing succeeded: {ran:#?}");
    assert_serialised(&h, &ran);
    h.run(&["unpin", "web"]).expect(0);
    let out = deploy(&h, "after", true);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(assert_complete(&h), "after");
}

/// The same with a running daemon following a `file://` channel that moves meanwhile: the daemon's deploys are
/// cancelled or waited for, nothing deadlocks, and the daemon stops cleanly.
#[test]
fn concurrent_commands_with_a_running_daemon() {
    use crate::bucket::{keygen, publish, wait_for, Daemon};
    let seed =
        std::env::var("SWITCHBACK_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("concurrency with the daemon: seed {seed} (SWITCHBACK_KILL_SEED={seed} repeats the run)");
    let h = Host::new();
    let (key, pk) = keygen(&h, "ci");
    let base = format!("file://{}/bucket", h.path().display());
    let keys = format!("source = \"{base}/web\"\ntrusted_keys = [\"{pk}\"]\n");
    configure(&h, 4, &format!("{keys}{}", overlap_detector(&h)));
    let publish_v = |v: &str| {
        let dir = h.path().join("build").join(v);
        release_tree(&dir, v, true);
        publish(&h, &[], &base, &key, v, &[dir.to_str().unwrap()]).expect(0);
    };
    deploy(&h, "v1", true).expect(0);
    let mut d = Daemon::start(&h, &[]);
    let daemon_pid = d.child.as_ref().unwrap().id();
    publish_v("d1");
    wait_for("the daemon deploys d1", Duration::from_secs(30), || h.current().as_deref() == Some("d1"));
    let ran = std::thread::scope(|s| {
        let publisher = s.spawn(|| {
            for v in ["d2", "d3"] {
                // A schedule, not a wait: the channel moves twice while the commands run (the daemon may be busy
                // or cancelled by them, so there is no poll to wait for).
                std::thread::sleep(Duration::from_millis(700));
                publish_v(v);
            }
        });
        let ran = run_concurrently(&h, seed, 4, 7);
        publisher.join().unwrap();
        ran
    });
    assert!(d.alive(), "the daemon died; log:\n{}", d.log());
    assert_eq!(d.stop(), 0, "the daemon did not stop cleanly; log:\n{}", d.log());
    // A deploy the daemon abandoned at SIGTERM after its switch stays journaled, for the next command to verify.
    h.run(&["unpin", "web"]).expect(0);
    assert_serialised(&h, &ran);
    let daemon: Vec<String> = h
        .history()
        .iter()
        .filter(|e| e["who"]["pid"] == daemon_pid)
        .map(|e| format!("{} {} {}", e["op"], e["version"], e["outcome"]).replace('"', ""))
        .collect();
    eprintln!("concurrency: the daemon's events: {daemon:?}");
    // d1 is live but still being checked when the commands start: one of them may cancel it (rolled back).
    assert!(
        daemon.iter().any(|e| e == "deploy d1 ok" || e == "deploy d1 rolled-back"),
        "the daemon's deploy is not in history: {daemon:?}"
    );
    h.run(&["unpin", "web"]).expect(0);
    let out = deploy(&h, "after", true);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(assert_complete(&h), "after");
}
