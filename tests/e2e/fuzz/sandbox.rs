//! The sandbox every case is unpacked in, and the checks after each case: nothing outside `staging` changed,
//! `staging` is still itself, and nothing in it is special, has a dangerous mode or resolves outside it.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use switchback::config::Limits;
use switchback::unpack::{self, Report, UnpackError};

/// `TMP/{victim, victim-dir/keep, sandbox/{outside/marker, up -> .., abs -> TMP/victim-dir, staging/}}`; only
/// `staging` may change, and it is made anew for every case.
pub struct Sandbox {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub staging: PathBuf,
    baseline: BTreeMap<PathBuf, Meta>,
}

/// What the snapshot compares, per path, read without following links.
#[derive(Debug, PartialEq, Eq)]
struct Meta {
    kind: &'static str,
    mode: u32,
    ino: u64,
    nlink: u64,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    data: Vec<u8>,
}

/// What one case did: the unpacker's answer (it returned, and every check held), or what went wrong.
pub type Outcome = Result<Result<Report, UnpackError>, String>;

/// Which entry point a case feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    Tar,
    Zst,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new().prefix("switchback-fuzz-").tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        fs::write(root.join("victim"), b"victim\n").unwrap();
        fs::create_dir(root.join("victim-dir")).unwrap();
        fs::write(root.join("victim-dir/keep"), b"keep\n").unwrap();
        let sandbox = root.join("sandbox");
        fs::create_dir(&sandbox).unwrap();
        fs::create_dir(sandbox.join("outside")).unwrap();
        fs::write(sandbox.join("outside/marker"), b"marker\n").unwrap();
        symlink("..", sandbox.join("up")).unwrap();
        symlink(root.join("victim-dir"), sandbox.join("abs")).unwrap();
        let staging = sandbox.join("staging");
        fs::create_dir(&staging).unwrap();
        let baseline = snapshot(&root, &staging);
        Sandbox { _dir: dir, root, staging, baseline }
    }

    /// Absolute paths that an escape would reach: what the hostile generator aims absolute names at.
    pub fn targets(&self) -> Vec<Vec<u8>> {
        ["victim", "victim-dir/pwned", "sandbox/outside/pwned", "sandbox/abs/pwned", "sandbox/staging/../outside/x"]
            .iter()
            .map(|p| self.root.join(p).as_os_str().as_bytes().to_vec())
            .collect()
    }

    /// Unpacks `bytes` into a fresh `staging` and checks everything; `staging` is left for the caller to inspect
    /// until the next run.
    pub fn run(&self, feed: Feed, bytes: &[u8], limits: &Limits) -> Outcome {
        self.run_with(|dir| match feed {
            Feed::Tar => unpack::unpack_tar(bytes, dir, limits, None),
            Feed::Zst => unpack::unpack_tar_zst(bytes, dir, limits, None),
        })
    }

    /// `run` with any unpacker (the checks' own test gives it misbehaving ones).
    pub(super) fn run_with(&self, unpack: impl FnOnce(BorrowedFd<'_>) -> Result<Report, UnpackError>) -> Outcome {
        if fs::symlink_metadata(&self.staging).is_ok() {
            fs::remove_dir_all(&self.staging).map_err(|e| format!("cannot remove the last staging: {e}"))?;
        }
        fs::create_dir(&self.staging).unwrap();
        fs::set_permissions(&self.staging, fs::Permissions::from_mode(0o700)).unwrap();
        let ino = fs::symlink_metadata(&self.staging).unwrap().ino();
        let dir = fs::File::open(&self.staging).unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| unpack(dir.as_fd())));
        drop(dir);
        let mut problems = Vec::new();
        let result = match result {
            Ok(r) => Some(r),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                problems.push(format!("the unpacker panicked: {msg}"));
                None
            }
        };
        problems.extend(diff(&self.baseline, &snapshot(&self.root, &self.staging)));
        match fs::symlink_metadata(&self.staging) {
            Ok(md) if md.is_dir() && md.ino() == ino => problems.extend(check_staging(&self.staging)),
            Ok(md) => problems.push(format!("staging was replaced (now {:?}, inode {})", md.file_type(), md.ino())),
            Err(e) => problems.push(format!("staging is gone: {e}")),
        }
        match (result, problems.is_empty()) {
            (Some(r), true) => Ok(r),
            _ => Err(problems.join("\n")),
        }
    }
}

fn snapshot(root: &Path, skip: &Path) -> BTreeMap<PathBuf, Meta> {
    let mut out = BTreeMap::new();
    let parent = skip.parent().unwrap();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p == skip {
            continue;
        }
        let md = match fs::symlink_metadata(&p) {
            Ok(md) => md,
            Err(_) => continue,
        };
        let ft = md.file_type();
        let (kind, data) = if ft.is_dir() {
            let mut names: Vec<PathBuf> = fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()).collect();
            names.sort();
            stack.extend(names);
            ("dir", Vec::new())
        } else if ft.is_symlink() {
            ("symlink", fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec())
        } else if ft.is_file() {
            ("file", fs::read(&p).unwrap_or_default())
        } else {
            ("other", Vec::new())
        };
        // `staging` is removed and made again in its parent for every case: the parent's times move.
        let times = |t: (i64, i64)| if p == parent { (0, 0) } else { t };
        out.insert(
            p.clone(),
            Meta {
                kind,
                mode: md.mode(),
                ino: md.ino(),
                nlink: md.nlink(),
                uid: md.uid(),
                gid: md.gid(),
                size: md.size(),
                mtime: times((md.mtime(), md.mtime_nsec())),
                ctime: times((md.ctime(), md.ctime_nsec())),
                data,
            },
        );
    }
    out
}

fn diff(before: &BTreeMap<PathBuf, Meta>, after: &BTreeMap<PathBuf, Meta>) -> Vec<String> {
    let mut problems = Vec::new();
    for (p, m) in after {
        match before.get(p) {
            None => problems.push(format!("ESCAPE: {} appeared outside staging ({})", p.display(), m.kind)),
            Some(b) if b != m => problems.push(format!("ESCAPE: {} changed: {b:?} -> {m:?}", p.display())),
            _ => {}
        }
    }
    for p in before.keys().filter(|p| !after.contains_key(*p)) {
        problems.push(format!("ESCAPE: {} disappeared", p.display()));
    }
    problems
}

/// Calls `f` with every path below `dir` (relative components) and its metadata, without following links.
pub(super) fn walk(dir: &Path, rel: &mut Vec<Vec<u8>>, f: &mut dyn FnMut(&[Vec<u8>], &fs::Metadata)) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(md) = fs::symlink_metadata(e.path()) else { continue };
        rel.push(e.file_name().as_bytes().to_vec());
        f(rel, &md);
        if md.is_dir() {
            walk(&e.path(), rel, f);
        }
        rel.pop();
    }
}

fn check_staging(staging: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let canonical = staging.canonicalize().unwrap();
    let root_mode = fs::symlink_metadata(staging).unwrap().mode();
    if root_mode & 0o7022 != 0 {
        problems.push(format!("staging itself has mode {root_mode:o}"));
    }
    walk(staging, &mut Vec::new(), &mut |rel, md| {
        let shown = String::from_utf8_lossy(&rel.join(&b'/')).into_owned();
        let ft = md.file_type();
        if ft.is_symlink() {
            let path = staging.join(std::ffi::OsStr::from_bytes(&rel.join(&b'/')));
            let target = fs::read_link(&path).unwrap().as_os_str().as_bytes().to_vec();
            if let Err(why) = resolve(staging, rel, &target, &mut 0) {
                problems.push(format!("symlink {shown} -> {}: {why}", String::from_utf8_lossy(&target)));
            }
            if let Ok(real) = path.canonicalize() {
                if !real.starts_with(&canonical) {
                    problems.push(format!("symlink {shown} resolves to {} outside staging", real.display()));
                }
            }
        } else if ft.is_dir() || ft.is_file() {
            if md.mode() & 0o7022 != 0 {
                problems.push(format!("{shown} has mode {:o}", md.mode()));
            }
        } else {
            problems.push(format!("{shown} is a special file ({ft:?})"));
        }
    });
    problems
}

/// Resolves a symlink's target over the real tree below `staging`, following the links met on the way, and
/// refuses any step above `staging`. Missing components and files are stepped through lexically (the kernel would
/// stop there), which is stricter than the kernel, never looser.
fn resolve(staging: &Path, link: &[Vec<u8>], target: &[u8], hops: &mut u32) -> Result<Vec<Vec<u8>>, String> {
    if target.first() == Some(&b'/') {
        return Err("absolute target".into());
    }
    let mut at: Vec<Vec<u8>> = link[..link.len() - 1].to_vec();
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if at.pop().is_none() {
                    return Err("ESCAPE: resolves above staging".into());
                }
            }
            name => {
                at.push(name.to_vec());
                let p = staging.join(std::ffi::OsStr::from_bytes(&at.join(&b'/')));
                if fs::symlink_metadata(&p).is_ok_and(|m| m.is_symlink()) {
                    *hops += 1;
                    if *hops > 40 {
                        return Err("symlink loop (the unpacker refuses those)".into());
                    }
                    let next = fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec();
                    let here = at.clone();
                    at = resolve(staging, &here, &next, hops)?;
                }
            }
        }
    }
    Ok(at)
}
