//! Crash tests: the real binary is SIGKILLed at each named crash point of a deploy, a rollback (manual and
//! automatic), a prune and a reconcile (feature `crash-points`, see `agent/src/crashpoint.rs`), or by the test with
//! a real `kill -9` at random moments. After each kill `current` must still name a complete release, and the next
//! command must converge: no staging, trash or temporary link left, no step in flight, the state agreeing with the
//! symlink, history saying what was recovered, and the following deploy working.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::harness::*;

/// Files in each test release besides `version.txt`, `MANIFEST` and the health marker `ok`.
const FILES: usize = 24;

/// A restart and checks that cost next to nothing, so that the points inside them are reached quickly. The exec
/// check passes in a release that has the file `ok` (see [`release`]).
pub const FAST: &str = r#"
[apps.web.service]
restart = ["true"]
timeout = "10s"

[[apps.web.checks]]
exec = ["test", "-e", "ok"]
timeout = "5s"

[apps.web.health]
start_period = "0s"
interval = "30ms"
healthy_after = 2
deadline = "2s"
bake = "100ms"
"#;

/// Writes the host's configuration with `keep` releases and `extra` TOML inside `[apps.web]`.
pub fn configure(h: &Host, keep: usize, extra: &str) {
    let text = format!(
        "[agent]\nstate_dir = \"{}\"\npoll_interval = \"500ms\"\n\n[apps.web]\nroot = \"{}\"\nkeep = {keep}\n{extra}\n",
        h.state_dir().parent().unwrap().display(),
        h.root().display()
    );
    std::fs::write(&h.config, text).unwrap();
}

/// A release whose `MANIFEST` lists every other file with its sha256 (and `version V` first), so that any release
/// directory can be checked for completeness. A healthy release has the file `ok` that [`FAST`]'s check wants.
pub fn release(v: &str, healthy: bool) -> Vec<u8> {
    release_with(v, healthy, vec![])
}

/// [`release`] with `extra` files (listed in the `MANIFEST` too).
pub fn release_with(v: &str, healthy: bool, extra: Vec<(String, Vec<u8>)>) -> Vec<u8> {
    let mut r = Release::new();
    for (p, data) in release_files(v, healthy, extra) {
        r = r.file(&p, &data, 0o644);
    }
    r.build()
}

/// Writes the files of [`release`] into `dir` (to publish as a directory).
pub fn release_tree(dir: &Path, v: &str, healthy: bool) {
    for (p, data) in release_files(v, healthy, vec![]) {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
}

fn release_files(v: &str, healthy: bool, extra: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = vec![("version.txt".into(), v.as_bytes().to_vec())];
    if healthy {
        files.push(("ok".into(), b"healthy\n".to_vec()));
    }
    for i in 0..FILES {
        files.push((format!("files/f{i:02}.txt"), format!("{v} file {i}\n").repeat(1 + i * 37).into_bytes()));
    }
    files.push(("payload/data.bin".into(), (0..64u32 << 10).map(|i| (i * 7 + v.len() as u32) as u8).collect()));
    files.extend(extra);
    let mut manifest = format!("version {v}\n");
    for (p, data) in &files {
        manifest.push_str(&format!("{} {p}\n", hex::encode(Sha256::digest(data))));
    }
    files.insert(0, ("MANIFEST".into(), manifest.into_bytes()));
    files
}

/// Writes release `v` under the host's archives and returns its path as a string.
pub fn archive(h: &Host, v: &str, healthy: bool) -> String {
    h.archive(&format!("{v}.tar.zst"), &release(v, healthy)).to_str().unwrap().to_owned()
}

pub fn deploy(h: &Host, v: &str, healthy: bool) -> Out {
    let a = archive(h, v, healthy);
    h.run(&["deploy", "web", "--file", &a, "--version", v])
}

/// Checks one release directory against its `MANIFEST`: the version, every file's content, and nothing else.
#[track_caller]
pub fn assert_release_complete(dir: &Path, v: &str) {
    if let Err(problem) = release_problem(dir, v) {
        panic!("{}: {problem}", dir.display());
    }
}

/// What is wrong with a release directory, measured against its `MANIFEST`.
pub fn release_problem(dir: &Path, v: &str) -> Result<(), String> {
    let manifest = std::fs::read_to_string(dir.join("MANIFEST"))
        .map_err(|e| format!("no MANIFEST ({e}): an incomplete release"))?;
    let mut lines = manifest.lines();
    if lines.next() != Some(format!("version {v}").as_str()) {
        return Err(format!("it holds another release than {v}: {manifest}"));
    }
    let want: BTreeMap<String, String> = lines
        .map(|l| {
            let (sha, p) = l.split_once(' ').unwrap_or_default();
            (p.to_owned(), sha.to_owned())
        })
        .collect();
    let mut have = BTreeSet::new();
    files_under(dir, "", &mut have).map_err(|e| format!("listing: {e}"))?;
    have.remove("MANIFEST");
    let listed: BTreeSet<String> = want.keys().cloned().collect();
    if have != listed {
        return Err(format!("its files differ from MANIFEST: {have:?} vs {listed:?}"));
    }
    for (p, sha) in &want {
        let data = std::fs::read(dir.join(p)).map_err(|e| format!("{p}: {e}"))?;
        if &hex::encode(Sha256::digest(&data)) != sha {
            return Err(format!("{p}: its content differs from MANIFEST"));
        }
    }
    Ok(())
}

fn files_under(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        if e.file_type()?.is_dir() {
            files_under(&e.path(), &format!("{name}/"), out)?;
        } else {
            out.insert(name);
        }
    }
    Ok(())
}

/// `current` resolves to a complete release; returns its version.
#[track_caller]
pub fn assert_complete(h: &Host) -> String {
    let v = h.current().expect("current exists");
    assert_release_complete(&h.root().join("current"), &v);
    v
}

/// The state file as JSON.
pub fn state(h: &Host) -> serde_json::Value {
    let text = std::fs::read_to_string(h.state_dir().join("state.json")).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("state.json does not parse ({e}): {text}"))
}

/// What an interrupted run leaves: staging and trash directories under `releases/`, temporary links in ROOT.
pub fn leftovers(h: &Host) -> Vec<String> {
    let mut found: Vec<String> = h.release_dirs().into_iter().filter(|d| d.starts_with('.')).collect();
    if let Ok(rd) = std::fs::read_dir(h.root()) {
        found.extend(rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with('.')));
    }
    // What a command in progress keeps in the state directory: its pending event, the external command it runs.
    if let Ok(rd) = std::fs::read_dir(h.state_dir()) {
        let names = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned());
        found.extend(names.filter(|n| n == "pending-event.json" || n.starts_with("running-command-")));
    }
    found
}

pub fn recover_events(h: &Host) -> Vec<serde_json::Value> {
    h.history().into_iter().filter(|e| e["op"] == "recover").collect()
}

/// Consistency with nothing in flight: no leftovers, `status` and `state.json` agree with the symlink, every
/// release on disk is complete and recorded, and `current` is complete.
#[track_caller]
pub fn assert_settled(h: &Host, what: &str) {
    assert_eq!(leftovers(h), Vec::<String>::new(), "{what}: leftovers of the interrupted run");
    let link = h.current();
    let s = h.run(&["--json", "status", "web"]).expect(0).json();
    let app = &s["apps"][0];
    assert!(app["in_flight"].is_null(), "{what}: still in flight: {s}");
    assert_eq!(app["current"].as_str(), link.as_deref(), "{what}: status disagrees with the symlink");
    let st = state(h);
    assert_eq!(st["current"].as_str(), link.as_deref(), "{what}: state.json disagrees with the symlink: {st}");
    assert!(st["in_flight"].is_null(), "{what}: {st}");
    let on_disk: BTreeSet<String> = h.release_dirs().into_iter().collect();
    let recorded: BTreeSet<String> = st["releases"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(recorded, on_disk, "{what}: the recorded releases are not the ones on disk");
    for v in &on_disk {
        assert_release_complete(&h.root().join("releases").join(v), v);
    }
    if link.is_some() {
        assert_complete(h);
    }
}

/// After a kill: the next changing command (`unpin`, which changes nothing itself) reconciles. With `recover`
/// empty no recovery is expected; otherwise a new `recover` event whose reason says each of `recover`.
#[track_caller]
pub fn next_command_converges(h: &Host, what: &str, recovers_before: usize, recover: &[&str]) {
    let out = h.run(&["unpin", "web"]);
    assert_eq!(out.code, 0, "{what}: the next command failed: {out:#?}");
    assert_settled(h, what);
    let events = recover_events(h);
    if recover.is_empty() {
        assert_eq!(events.len(), recovers_before, "{what}: unexpected recovery: {events:#?}");
        return;
    }
    assert!(events.len() > recovers_before, "{what}: no recover event in history");
    let reason = events.last().unwrap()["reason"].as_str().unwrap_or("").to_owned();
    for want in recover {
        assert!(reason.contains(want), "{what}: the recover event does not say `{want}`: {reason}");
    }
}

/// Runs `f` on each case, two at a time (each case has its own host).
#[cfg(feature = "crash-points")]
fn in_pairs<T: Sync>(cases: &[T], f: impl Fn(&T) + Sync) {
    std::thread::scope(|s| {
        let (a, b) = cases.split_at(cases.len() / 2);
        let f = &f;
        let t = s.spawn(move || a.iter().for_each(f));
        b.iter().for_each(f);
        if let Err(e) = t.join() {
            std::panic::resume_unwind(e);
        }
    });
}

/// A crash point, the version `current` must name right after the kill, and what the recovery must say (empty:
/// there is nothing to recover).
#[cfg(feature = "crash-points")]
type Case = (&'static str, &'static str, &'static [&'static str]);

/// Kills `args` at the case's point, checks `current` right after, then that the next command converges.
#[cfg(feature = "crash-points")]
fn crash_at(h: &Host, args: &[&str], case: &Case) {
    let (point, live, recover) = *case;
    let before = recover_events(h).len();
    let own = |outcome: &str| h.history().iter().filter(|e| e["op"] == args[0] && e["outcome"] == outcome).count();
    let (interrupted, recorded) = (own("interrupted"), h.history().len());
    let out = h.run_env(args, &[("SWITCHBACK_CRASH_AT", point)]);
    assert_eq!(out.code, -1, "{point}: the process must die by SIGKILL: {out:#?}");
    assert_eq!(assert_complete(h), live, "{point}: current right after the kill");
    next_command_converges(h, point, before, recover);
    // The killed command's own event is in history once: as it was when the kill came after its record, and
    // otherwise recovered from its pending copy as `interrupted`.
    let events = h.history();
    let own_events: Vec<_> = events[recorded..].iter().filter(|e| e["op"] == args[0]).collect();
    assert_eq!(own_events.len(), 1, "{point}: the killed {} must be recorded once: {own_events:#?}", args[0]);
    let want = if point.ends_with("after-record") { interrupted } else { interrupted + 1 };
    assert_eq!(own("interrupted"), want, "{point}: {own_events:#?}");
    assert!(!h.state_dir().join("pending-event.json").exists(), "{point}: the pending event outlived recovery");
}

#[cfg(feature = "crash-points")]
#[track_caller]
fn deploy_works_after(h: &Host, point: &str) {
    let out = deploy(h, "v9", true);
    assert_eq!(out.code, 0, "{point}: the deploy after the crash failed: {out:#?}");
    assert_eq!(assert_complete(h), "v9", "{point}");
    assert_settled(h, point);
}

#[cfg(feature = "crash-points")]
const BEFORE_SWITCH: &[&str] = &["deploy of v2", "was interrupted before the switch; still on v1"];
#[cfg(feature = "crash-points")]
const STAGING_AND_BEFORE_SWITCH: &[&str] =
    &["removed leftovers", ".staging-v2-", "deploy of v2", "was interrupted before the switch; still on v1"];
#[cfg(feature = "crash-points")]
const LIVE_V2: &[&str] = &["deploy of v2", "interrupted at step checking", "v2 is healthy"];

#[cfg(feature = "crash-points")]
const DEPLOY_CASES: &[Case] = &[
    // The command's event is saved and nothing changed: the next command records it as interrupted.
    ("after-pending-event", "v1", &[]),
    ("mid-unpack:1", "v1", STAGING_AND_BEFORE_SWITCH),
    ("mid-unpack:14", "v1", STAGING_AND_BEFORE_SWITCH),
    ("after-unpack", "v1", STAGING_AND_BEFORE_SWITCH),
    ("after-staging-durable", "v1", STAGING_AND_BEFORE_SWITCH),
    ("after-release-rename", "v1", BEFORE_SWITCH),
    ("before-switch", "v1", BEFORE_SWITCH),
    ("after-temp-symlink", "v1", &["removed leftovers", ".current.tmp-", "interrupted before the switch"]),
    ("after-switch", "v2", &["deploy of v2", "interrupted at step switching", "v2 is healthy"]),
    ("after-state-write", "v2", LIVE_V2),
    ("during-restart", "v2", LIVE_V2),
    ("after-restart", "v2", LIVE_V2),
    ("during-checks", "v2", LIVE_V2),
    ("during-bake", "v2", LIVE_V2),
    // Committed: nothing to recover; the deploy's own event is recovered from its pending copy.
    ("after-commit", "v2", &[]),
    ("after-record", "v2", &[]),
];

/// A healthy deploy of v2 over v1, killed at each of its points.
#[cfg(feature = "crash-points")]
#[test]
fn every_deploy_crash_point_converges() {
    in_pairs(DEPLOY_CASES, |case| {
        let h = Host::new();
        configure(&h, 10, FAST);
        deploy(&h, "v1", true).expect(0);
        let a = archive(&h, "v2", true);
        crash_at(&h, &["deploy", "web", "--file", &a, "--version", "v2"], case);
        if !case.2.is_empty() && case.1 == "v2" {
            // v2 went live unproven; the reconcile verified and committed it.
            assert_eq!(state(&h)["last_good"], "v2", "{}", case.0);
        }
        deploy_works_after(&h, case.0);
    });
}

/// What the reconcile says when it finishes a rollback to v1 interrupted before or after its journal said
/// "checking".
#[cfg(feature = "crash-points")]
const FINISH_SWITCHING: &[&str] = &["rollback of v1", "interrupted at step switching", "v1 is healthy"];
#[cfg(feature = "crash-points")]
const FINISH_CHECKING: &[&str] = &["rollback of v1", "interrupted at step checking", "v1 is healthy"];

#[cfg(feature = "crash-points")]
const ROLLBACK_CASES: &[Case] = &[
    ("rollback-before-switch", "v2", FINISH_SWITCHING),
    ("after-temp-symlink", "v2", &["removed leftovers", ".current.tmp-", "rollback of v1", "v1 is healthy"]),
    ("rollback-after-switch", "v1", FINISH_SWITCHING),
    ("rollback-after-state-write", "v1", FINISH_CHECKING),
    ("during-restart", "v1", FINISH_CHECKING),
    ("rollback-after-restart", "v1", FINISH_CHECKING),
    ("during-checks", "v1", FINISH_CHECKING),
    ("rollback-after-commit", "v1", &[]),
    ("after-record", "v1", &[]),
];

/// A manual rollback from v2 to v1, killed at each of its points: the next command finishes the rollback.
#[cfg(feature = "crash-points")]
#[test]
fn every_rollback_crash_point_converges() {
    in_pairs(ROLLBACK_CASES, |case| {
        let h = Host::new();
        configure(&h, 10, FAST);
        deploy(&h, "v1", true).expect(0);
        deploy(&h, "v2", true).expect(0);
        crash_at(&h, &["rollback", "web"], case);
        assert_eq!(h.current().as_deref(), Some("v1"), "{}: the rollback was not finished", case.0);
        let st = state(&h);
        assert_eq!(st["last_good"], "v1", "{}: {st}", case.0);
        assert!(st["bad"]["v2"]["reason"].as_str().unwrap().contains("manual rollback"), "{}: {st}", case.0);
        deploy_works_after(&h, case.0);
    });
}

#[cfg(feature = "crash-points")]
const AUTOMATIC_ROLLBACK_CASES: &[Case] = &[
    // The reconcile re-verifies v2, which fails again, and rolls back.
    ("during-checks", "v2", &["deploy of v2", "interrupted at step checking", "rolled back to `v1`"]),
    ("rollback-before-switch", "v2", FINISH_SWITCHING),
    // The second switch and the second restart are the rollback's.
    ("after-temp-symlink:2", "v2", &["removed leftovers", ".current.tmp-", "rollback of v1", "v1 is healthy"]),
    ("rollback-after-switch", "v1", FINISH_SWITCHING),
    ("rollback-after-state-write", "v1", FINISH_CHECKING),
    ("during-restart:2", "v1", FINISH_CHECKING),
    ("rollback-after-restart", "v1", FINISH_CHECKING),
    ("rollback-after-commit", "v1", &[]),
];

/// A deploy of an unhealthy v2, killed in its checks and at each point of the automatic rollback to v1.
#[cfg(feature = "crash-points")]
#[test]
fn every_automatic_rollback_crash_point_converges() {
    in_pairs(AUTOMATIC_ROLLBACK_CASES, |case| {
        let h = Host::new();
        configure(&h, 10, FAST);
        deploy(&h, "v1", true).expect(0);
        let a = archive(&h, "v2", false);
        crash_at(&h, &["deploy", "web", "--file", &a, "--version", "v2"], case);
        assert_eq!(h.current().as_deref(), Some("v1"), "{}", case.0);
        let st = state(&h);
        assert!(st["bad"]["v2"].is_object(), "{}: v2 must stay marked bad: {st}", case.0);
        assert_eq!(st["last_good"], "v1", "{}: {st}", case.0);
        deploy_works_after(&h, case.0);
    });
}

#[cfg(feature = "crash-points")]
const PRUNE_CASES: &[Case] = &[
    ("after-pending-event", "v4", &[]),
    ("prune-after-trash-rename", "v4", &["removed leftovers", ".trash-v2-"]),
    // v2 is gone and recorded as gone: nothing to recover, the next prune removes v1.
    ("prune-mid-remove", "v4", &[]),
    ("prune-after-trash-rename:2", "v4", &["removed leftovers", ".trash-v1-"]),
];

/// `prune --keep 1` of v1..v4 (removing v2, then v1), killed between its steps; and the prune after a deploy.
#[cfg(feature = "crash-points")]
#[test]
fn every_prune_crash_point_converges() {
    in_pairs(PRUNE_CASES, |case| {
        let h = Host::new();
        configure(&h, 10, FAST);
        for v in ["v1", "v2", "v3", "v4"] {
            deploy(&h, v, true).expect(0);
        }
        crash_at(&h, &["prune", "web", "--keep", "1"], case);
        h.run(&["prune", "web", "--keep", "1"]).expect(0);
        assert_eq!(h.release_dirs(), ["v3", "v4"], "{}", case.0);
        assert_settled(&h, case.0);
        deploy_works_after(&h, case.0);
    });
    // The prune that follows a deploy (keep 2: deploying v4 removes v2), killed after removing a release.
    let h = Host::new();
    configure(&h, 2, FAST);
    for v in ["v1", "v2", "v3"] {
        deploy(&h, v, true).expect(0);
    }
    crash_at(
        &h,
        &["deploy", "web", "--file", &archive(&h, "v4", true), "--version", "v4"],
        &("prune-mid-remove", "v4", &[] as &[&str]),
    );
    assert_eq!(h.release_dirs(), ["v3", "v4"]);
    assert_eq!(state(&h)["last_good"], "v4");
    deploy_works_after(&h, "prune-mid-remove after a deploy");
}

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

/// The reconcile itself killed while it recovers an interrupted deploy: the command after it starts over.
/// The points a test of their own kills at (the others are in the case tables above).
const RECONCILE_MID_RECOVERY: &str = "reconcile-mid-recovery";
const RECONCILE_AFTER_RECORD: &str = "reconcile-after-record";
const AFTER_DOWNLOAD: &str = "after-download";

/// Every crash point the agent has is killed at by one of the tests above: a new point without a test, or a test
/// of a point that no longer exists, fails here.
#[cfg(feature = "crash-points")]
#[test]
fn every_crash_point_is_killed_at() {
    let tables = [DEPLOY_CASES, ROLLBACK_CASES, AUTOMATIC_ROLLBACK_CASES, PRUNE_CASES];
    let mut killed: BTreeSet<&str> =
        tables.iter().flat_map(|t| t.iter()).map(|c| c.0.split(':').next().unwrap()).collect();
    killed.extend([RECONCILE_MID_RECOVERY, RECONCILE_AFTER_RECORD, AFTER_DOWNLOAD]);
    let points: BTreeSet<&str> = switchback::crash_points().collect();
    let untested: Vec<_> = points.difference(&killed).collect();
    let unknown: Vec<_> = killed.difference(&points).collect();
    assert!(untested.is_empty(), "crash points no test kills at: {untested:?}");
    assert!(unknown.is_empty(), "the tests kill at points the agent does not have: {unknown:?}");
}

#[cfg(feature = "crash-points")]
#[test]
fn a_reconcile_killed_mid_recovery_is_recovered_again() {
    let h = Host::new();
    configure(&h, 10, FAST);
    deploy(&h, "v1", true).expect(0);
    let a = archive(&h, "v2", true);
    let args = ["deploy", "web", "--file", &a, "--version", "v2"];
    assert_eq!(h.run_env(&args, &[("SWITCHBACK_CRASH_AT", "after-restart")]).code, -1);
    assert_eq!(assert_complete(&h), "v2");
    // Killed after re-verifying v2, before committing it or writing history.
    let out = h.run_env(&["unpin", "web"], &[("SWITCHBACK_CRASH_AT", RECONCILE_MID_RECOVERY)]);
    assert_eq!(out.code, -1, "{out:#?}");
    assert_eq!(assert_complete(&h), "v2");
    assert_eq!(recover_events(&h).len(), 0);
    assert_eq!(state(&h)["in_flight"]["version"], "v2", "still journaled");
    // Killed after writing the recovery to history, before saving the state: the event is there, and the next
    // command recovers (and says so) again rather than losing it.
    let out = h.run_env(&["unpin", "web"], &[("SWITCHBACK_CRASH_AT", RECONCILE_AFTER_RECORD)]);
    assert_eq!(out.code, -1, "{out:#?}");
    let events = recover_events(&h);
    assert_eq!(events.len(), 1);
    assert!(events[0]["reason"].as_str().unwrap().contains("v2 is healthy"), "{events:?}");
    assert_eq!(state(&h)["in_flight"]["version"], "v2", "the state was not saved yet");
    next_command_converges(&h, "reconcile", 1, LIVE_V2);
    assert_eq!(state(&h)["last_good"], "v2");
    deploy_works_after(&h, "reconcile");
}

/// The daemon killed right after downloading an artifact: the download is in `downloads/`, nothing changed, and
/// the restarted daemon deploys the release.
#[cfg(feature = "crash-points")]
#[test]
fn the_daemon_killed_after_a_download_converges() {
    use crate::bucket::{publish, release_dir, trust_new_key, wait_for, Daemon};
    let (host, _svc) = Service::host_with(
        |h| format!("source = \"file://{}/bucket/web\"\ntrusted_keys = [\"PUBLIC_KEY\"]\n", h.path().display()),
        "start_period = \"0s\"\ninterval = \"100ms\"\nhealthy_after = 2\ndeadline = \"5s\"",
        "",
    );
    let key = trust_new_key(&host);
    let base = format!("file://{}/bucket", host.path().display());
    let publish_v = |v: &str| {
        let dir = release_dir(&host, v, 200);
        publish(&host, &[], &base, &key, v, &[dir.to_str().unwrap()]).expect(0);
    };
    publish_v("1.0.0");
    let proven = |v: &str| {
        host.state_dir().join("state.json").exists() && {
            let st = state(&host);
            st["last_good"] == v && st["in_flight"].is_null()
        }
    };
    let mut d = Daemon::start(&host, &[]);
    wait_for("1.0.0 proven", Duration::from_secs(30), || proven("1.0.0"));
    assert_eq!(d.stop(), 0);
    publish_v("2.0.0");
    let crash = [("SWITCHBACK_CRASH_AT".to_owned(), AFTER_DOWNLOAD.to_owned())];
    let mut d = Daemon::start(&host, &crash);
    wait_for("the daemon killed after the download", Duration::from_secs(30), || !d.alive());
    let status = d.child.as_mut().unwrap().wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "killed by SIGKILL");
    // The artifact the channel names was downloaded whole and verified, then the daemon died.
    let sha = state(&host)["channel"]["sha256"].as_str().unwrap().to_owned();
    let artifact = host.state_dir().join("downloads").join(format!("{sha}.tar.zst"));
    assert!(artifact.is_file(), "the downloaded artifact {} is not there", artifact.display());
    assert_eq!(host.current().as_deref(), Some("1.0.0"));
    assert_eq!(host.read_current("version.txt"), "1.0.0");
    assert!(!host.release_dirs().iter().any(|r| r.starts_with('.')), "{:?}", host.release_dirs());
    let mut d = Daemon::start(&host, &[]);
    wait_for("2.0.0 proven", Duration::from_secs(30), || proven("2.0.0"));
    assert_eq!(d.stop(), 0);
    assert_eq!(leftovers(&host), Vec::<String>::new());
    let s = host.run(&["--json", "status", "web"]).expect(0).json();
    assert!(s["apps"][0]["in_flight"].is_null(), "{s}");
    assert!(!artifact.exists(), "the artifact was not removed after its deploy");
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
