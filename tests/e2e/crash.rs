//! Crash tests: the real binary is SIGKILLed at each named crash point of a deploy, a rollback (manual and
//! automatic), a prune and a reconcile (feature `crash-points`, see `agent/src/base/crashpoint.rs`), or by the test with
//! a real `kill -9` at random moments. After each kill `current` must still name a complete release, and the next
//! command must converge: no staging, trash or temporary link left, no step in flight, the state agreeing with the
//! symlink, history saying what was recovered, and the following deploy working.
//!
//! This file holds what the tests share (the test releases, the checks of a settled host, the kill at a named
//! point), the case tables of each operation's points and the test that every point is killed at;
//! `crash/deploy.rs` kills a deploy at each of its points and the daemon after a download, `crash/rollback.rs` a
//! manual and an automatic rollback, `crash/prune_reconcile.rs` a prune and the reconcile itself, `crash/kill9.rs`
//! holds the real `kill -9`s (a hook left running, a restart, random moments).

#[cfg(feature = "crash-points")]
mod deploy;
mod kill9;
#[cfg(feature = "crash-points")]
mod prune_reconcile;
#[cfg(feature = "crash-points")]
mod rollback;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

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

#[cfg(feature = "crash-points")]
const PRUNE_CASES: &[Case] = &[
    ("after-pending-event", "v4", &[]),
    ("prune-after-trash-rename", "v4", &["removed leftovers", ".trash-v2-"]),
    // v2 is gone and recorded as gone: nothing to recover, the next prune removes v1.
    ("prune-mid-remove", "v4", &[]),
    ("prune-after-trash-rename:2", "v4", &["removed leftovers", ".trash-v1-"]),
];

/// The points a test of their own kills at (`crash/prune_reconcile.rs`, `crash/deploy.rs`; the others are in the
/// case tables above).
#[cfg(feature = "crash-points")]
const RECONCILE_MID_RECOVERY: &str = "reconcile-mid-recovery";
#[cfg(feature = "crash-points")]
const RECONCILE_AFTER_RECORD: &str = "reconcile-after-record";
#[cfg(feature = "crash-points")]
const AFTER_DOWNLOAD: &str = "after-download";

/// Every crash point the agent has is killed at by one of the tests in `crash/`: a new point without a test, or a
/// test of a point that no longer exists, fails here.
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
