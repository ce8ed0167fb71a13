//! Making sure a release on disk is the one that was verified, before it is trusted again (see [`crate::store::index`]):
//! the whole tree before switching to it, and the content of each file of it that is about to run. Nothing here
//! writes; a release that fails is refused with what differs.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::app::App;
use crate::base::version::Version;
use crate::error::Error;
use crate::store::index;

/// Compares release `v` with its index and hashes every file of it that the app's hooks, restart command and exec
/// checks would run. Errors with [`Error::NotVerified`] when it differs.
pub fn check_release(app: &App, v: &Version) -> anyhow::Result<index::Checked> {
    let dir = app.store.release_dir(v);
    let mut hash = BTreeSet::new();
    for argv in commands(app) {
        hash.extend(index::exec_paths(&argv, &dir, &app.store.current_link()));
    }
    for hook in crate::config::Hook::ALL {
        let shipped = crate::config::shipped(hook);
        if app.cfg.hooks.from_archive && dir.join(&shipped).is_file() {
            hash.insert(shipped.into_bytes());
        }
    }
    let index = index::path(&app.state_dir, v.as_str());
    if fresh().lock().unwrap_or_else(|e| e.into_inner()).remove(&dir) {
        // Indexed by this very process from the tree it had just unpacked, for this switch (once): only what
        // will run is hashed.
        return match index::verify_files(&dir, v.as_str(), &index, &hash)? {
            Ok(()) => {
                remember(&dir, &hash);
                Ok(index::Checked { entries: 0, hashed: hash.len() as u64 })
            }
            Err(m) => {
                Err(Error::NotVerified { app: app.name.clone(), version: v.to_string(), detail: m.detail }.into())
            }
        };
    }
    match index::verify(&dir, v.as_str(), &index, &hash)? {
        Ok(checked) => {
            remember(&dir, &hash);
            Ok(checked)
        }
        Err(m) => Err(Error::NotVerified { app: app.name.clone(), version: v.to_string(), detail: m.detail }.into()),
    }
}

/// Before `argv` runs in release `v`: the files of the release it runs are hashed against the index (once per
/// process while the file is unchanged).
pub fn check_exec(app: &App, v: &str, argv: &[String], release_dir: &Path) -> anyhow::Result<()> {
    let paths = index::exec_paths(argv, release_dir, &app.store.current_link());
    if paths.is_empty() {
        return Ok(());
    }
    let todo: BTreeSet<Vec<u8>> = paths.into_iter().filter(|p| !known(release_dir, p)).collect();
    if todo.is_empty() {
        return Ok(());
    }
    let index = index::path(&app.state_dir, v);
    match index::verify_files(release_dir, v, &index, &todo)? {
        Ok(()) => {
            remember(release_dir, &todo);
            Ok(())
        }
        Err(m) => Err(Error::NotVerified { app: app.name.clone(), version: v.to_owned(), detail: m.detail }.into()),
    }
}

/// Releases this process unpacked and indexed itself (the index was made from the tree a moment ago).
fn fresh() -> &'static Mutex<std::collections::HashSet<PathBuf>> {
    static FRESH: std::sync::OnceLock<Mutex<std::collections::HashSet<PathBuf>>> = std::sync::OnceLock::new();
    FRESH.get_or_init(|| Mutex::new(std::collections::HashSet::new()))
}

/// Notes that release `v` was just unpacked and indexed by this process.
pub fn unpacked_now(app: &App, v: &Version) {
    fresh().lock().unwrap_or_else(|e| e.into_inner()).insert(app.store.release_dir(v));
}

/// Every command the app runs from a release: configured hooks, the restart command, exec checks.
fn commands(app: &App) -> Vec<Vec<String>> {
    let h = &app.cfg.hooks;
    let mut out: Vec<Vec<String>> =
        [&h.before_activate, &h.after_activate, &h.after_rollback].into_iter().flatten().cloned().collect();
    if let Some(argv) = app.cfg.service.as_ref().and_then(|s| s.restart.clone()) {
        out.push(argv);
    }
    out.extend(app.cfg.checks.iter().filter_map(|c| c.exec.clone()));
    out
}

/// Files already hashed by this process: (inode, change time, size) when they matched.
type Seen = HashMap<PathBuf, (u64, i64, i64, u64)>;

fn seen() -> &'static Mutex<Seen> {
    static SEEN: std::sync::OnceLock<Mutex<Seen>> = std::sync::OnceLock::new();
    SEEN.get_or_init(|| Mutex::new(HashMap::new()))
}

fn stamp(path: &Path) -> Option<(u64, i64, i64, u64)> {
    let m = std::fs::symlink_metadata(path).ok()?;
    Some((m.ino(), m.ctime(), m.ctime_nsec(), m.size()))
}

fn known(dir: &Path, rel: &[u8]) -> bool {
    let path = dir.join(std::ffi::OsStr::from_bytes(rel));
    let now = stamp(&path);
    now.is_some() && seen().lock().unwrap_or_else(|e| e.into_inner()).get(&path) == now.as_ref()
}

fn remember(dir: &Path, rels: &BTreeSet<Vec<u8>>) {
    let mut seen = seen().lock().unwrap_or_else(|e| e.into_inner());
    for rel in rels {
        let path = dir.join(std::ffi::OsStr::from_bytes(rel));
        if let Some(s) = stamp(&path) {
            seen.insert(path, s);
        }
    }
}
