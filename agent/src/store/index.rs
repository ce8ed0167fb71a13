//! The index of a release: every entry of the finished release directory (path, type, mode, size, the sha256 of
//! each file's content, each link's target), written when the release is unpacked to `STATE_DIR/APP/index/V.jsonl`
//! (root's alone) and checked before the release is trusted again:
//! - before switching to a release on disk (a rollback, a deploy of a release already there, a recovery), the
//!   whole tree is compared with its index (types, modes, sizes, owners, link targets, no entry more or less): one
//!   `stat` per entry, no content read;
//! - before anything from a release runs (a hook, a relative restart command or exec check, or a script named by
//!   one), that file's content is hashed and compared with the index.
//!
//! The index is written from a walk of the finished staging directory (after the shared links were made), with
//! the content hashes the unpacker computed while writing each file, so no byte is read twice. Both walks visit
//! each directory's entries in byte order, so an index and a tree are compared in one pass with no map of paths.
//! This module never writes into a release and never follows a link in one.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The sha256 of each file the unpacker wrote, by inode.
pub type Hashes = HashMap<u64, [u8; 32]>;

const SCHEMA: u32 = 1;

/// One entry of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The path inside the release (`.` for the release itself), bytes outside printable ASCII as `%XX`.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A link's target, escaped like `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// The index's first line.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    schema: u32,
    version: String,
}

/// A release that is not what was verified: which entry, and how it differs.
#[derive(Debug, thiserror::Error)]
#[error("release {release} is not the release that was verified when it was unpacked: {detail}")]
pub struct Mismatch {
    pub release: String,
    pub detail: String,
}

/// What a full check of a release looked at.
#[derive(Debug, Default, Clone, Copy)]
pub struct Checked {
    pub entries: u64,
    pub hashed: u64,
}

/// Where the index of `version` lives in the app's state directory.
pub fn path(state_dir: &Path, version: &str) -> PathBuf {
    state_dir.join("index").join(format!("{version}.jsonl"))
}

/// Writes the index of the finished release at `dir` (its handle `fd`) to `dest`, durably.
pub fn write(
    fd: BorrowedFd<'_>,
    dir: &Path,
    version: &str,
    hashes: &Hashes,
    dest: &Path,
    group: Option<rustix::fs::Gid>,
) -> anyhow::Result<u64> {
    let parent = dest.parent().context("an index path has a parent")?;
    crate::base::trust::private_dir(parent, group)?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-index-")
        .tempfile_in(parent)
        .with_context(|| format!("creating a temporary file in {}", parent.display()))?;
    crate::base::trust::share(tmp.as_file(), group, false)?;
    let mut out = BufWriter::new(tmp.as_file());
    let header = Header { schema: SCHEMA, version: version.to_owned() };
    serde_json::to_writer(&mut out, &header)?;
    out.write_all(b"\n")?;
    let mut n = 0u64;
    walk(
        fd,
        dir,
        &mut |e, _| {
            if e.kind == Kind::File && e.sha256.is_none() {
                anyhow::bail!("{}: a file the unpacker did not write", unescape_display(&e.path));
            }
            serde_json::to_writer(&mut out, &e)?;
            out.write_all(b"\n")?;
            n += 1;
            Ok(())
        },
        Some(hashes),
    )
    .with_context(|| format!("indexing {}", dir.display()))?;
    out.flush()?;
    drop(out);
    tmp.as_file().sync_all().with_context(|| format!("syncing {}", tmp.path().display()))?;
    tmp.persist(dest).map_err(|e| e.error).with_context(|| format!("renaming into {}", dest.display()))?;
    crate::base::fsutil::fsync_dir(parent)?;
    Ok(n)
}

/// Compares the release at `dir` with its index, entry by entry, and hashes the files named in `hash` (paths
/// inside the release). `Err(Mismatch)` inside: the release is not what was verified (or has no index).
pub fn verify(
    dir: &Path,
    version: &str,
    index: &Path,
    hash: &BTreeSet<Vec<u8>>,
) -> anyhow::Result<Result<Checked, Mismatch>> {
    let mismatch = |detail: String| Mismatch { release: version.to_owned(), detail };
    let file = match std::fs::File::open(index) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(mismatch(format!(
                "it has no index ({} is missing), so it cannot be checked; deploy it again from its artifact",
                index.display()
            ))))
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", index.display())),
    };
    let mut lines = std::io::BufReader::new(file).lines();
    let header: Header = match lines.next() {
        Some(line) => serde_json::from_str(&line.with_context(|| format!("reading {}", index.display()))?)
            .with_context(|| format!("parsing {}", index.display()))?,
        None => anyhow::bail!("{} is empty", index.display()),
    };
    anyhow::ensure!(
        header.schema <= SCHEMA,
        "{} has schema {} (this switchback knows {SCHEMA})",
        index.display(),
        header.schema
    );
    let fd = match rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => return Ok(Err(mismatch(format!("{} cannot be opened as a directory: {e}", dir.display())))),
    };
    let me = rustix::process::geteuid().as_raw();
    let mut checked = Checked::default();
    let mut found: Option<String> = None;
    let walked = walk(
        fd.as_fd(),
        dir,
        &mut |actual, st| {
            let want: Entry = match lines.next() {
                Some(line) => serde_json::from_str(&line?).with_context(|| format!("parsing {}", index.display()))?,
                None => {
                    found = Some(format!("`{}` is not in the release's index", unescape_display(&actual.path)));
                    anyhow::bail!(StopWalk);
                }
            };
            let here = unescape_display(&want.path);
            let differs = if want.path != actual.path {
                Some(format!(
                    "found `{}` where the index has `{here}` (an entry was added or removed)",
                    unescape_display(&actual.path)
                ))
            } else if want.kind != actual.kind {
                Some(format!("`{here}` was a {:?} and is now a {:?}", want.kind, actual.kind).to_lowercase())
            } else if st.uid != me && actual.kind != Kind::Symlink {
                Some(format!("`{here}` belongs to uid {} (releases are root's alone)", st.uid))
            } else if want.mode != actual.mode && actual.kind != Kind::Symlink {
                Some(format!("`{here}` has mode {:o}, it was unpacked with {:o}", actual.mode, want.mode))
            } else if want.size != actual.size {
                Some(format!("`{here}` is {} bytes, it was unpacked with {}", actual.size, want.size))
            } else if want.target != actual.target {
                Some(format!(
                    "the link `{here}` points at `{}`, it was unpacked pointing at `{}`",
                    unescape_display(actual.target.as_deref().unwrap_or("")),
                    unescape_display(want.target.as_deref().unwrap_or(""))
                ))
            } else {
                None
            };
            if let Some(d) = differs {
                found = Some(d);
                anyhow::bail!(StopWalk);
            }
            checked.entries += 1;
            if actual.kind == Kind::File && hash.contains(&unescape(&want.path)) {
                let sha = hash_at(fd.as_fd(), &unescape(&want.path)).with_context(|| format!("reading {here}"))?;
                checked.hashed += 1;
                if Some(&sha) != want.sha256.as_ref() {
                    found = Some(format!("the content of `{here}` changed (sha256 {sha})"));
                    anyhow::bail!(StopWalk);
                }
            }
            Ok(())
        },
        None,
    );
    if let Err(e) = walked {
        if e.downcast_ref::<StopWalk>().is_none() {
            return Err(e.context(format!("checking {}", dir.display())));
        }
    }
    if let Some(detail) = found {
        return Ok(Err(mismatch(detail)));
    }
    if let Some(line) = lines.next() {
        let want: Entry = serde_json::from_str(&line?).with_context(|| format!("parsing {}", index.display()))?;
        return Ok(Err(mismatch(format!("`{}` is missing", unescape_display(&want.path)))));
    }
    Ok(Ok(checked))
}

/// Hashes the files `paths` (inside the release at `dir`) and compares each with its index entry.
pub fn verify_files(
    dir: &Path,
    version: &str,
    index: &Path,
    paths: &BTreeSet<Vec<u8>>,
) -> anyhow::Result<Result<(), Mismatch>> {
    let mismatch = |detail: String| Ok(Err(Mismatch { release: version.to_owned(), detail }));
    let file = match std::fs::File::open(index) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return mismatch(format!(
                "it has no index ({} is missing), so nothing of it is run; deploy it again from its artifact",
                index.display()
            ))
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", index.display())),
    };
    let mut want: HashMap<Vec<u8>, Entry> = HashMap::new();
    for line in std::io::BufReader::new(file).lines().skip(1) {
        let line = line.with_context(|| format!("reading {}", index.display()))?;
        let e: Entry = serde_json::from_str(&line).with_context(|| format!("parsing {}", index.display()))?;
        let p = unescape(&e.path);
        if paths.contains(&p) {
            want.insert(p, e);
            if want.len() == paths.len() {
                break;
            }
        }
    }
    let fd =
        rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .with_context(|| format!("opening {}", dir.display()))?;
    for p in paths {
        let shown = String::from_utf8_lossy(p).escape_debug().to_string();
        let Some(e) = want.get(p) else {
            return mismatch(format!("`{shown}` is not a file of the release as it was unpacked"));
        };
        if e.kind != Kind::File {
            return mismatch(format!("`{shown}` was unpacked as a {:?}, not a file", e.kind).to_lowercase());
        }
        let sha = match hash_at(fd.as_fd(), p) {
            Ok(s) => s,
            Err(err) => return mismatch(format!("`{shown}` cannot be read without following a link: {err:#}")),
        };
        if Some(&sha) != e.sha256.as_ref() {
            return mismatch(format!("the content of `{shown}` changed (sha256 {sha})"));
        }
    }
    Ok(Ok(()))
}

#[derive(Debug)]
struct StopWalk;

impl std::fmt::Display for StopWalk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped")
    }
}

impl std::error::Error for StopWalk {}

/// Owner and mode bits of an entry, as a walk saw them.
struct Stat {
    uid: u32,
}

/// Visits the release at `fd` (shown as `dir`): the release itself (`.`), then each directory's entries in byte
/// order, depth first. With `hashes`, files get their content hash from it (by inode).
fn walk(
    fd: BorrowedFd<'_>,
    dir: &Path,
    visit: &mut dyn FnMut(Entry, Stat) -> anyhow::Result<()>,
    hashes: Option<&Hashes>,
) -> anyhow::Result<()> {
    let st = rustix::fs::fstat(fd).with_context(|| format!("inspecting {}", dir.display()))?;
    let root =
        Entry { path: ".".to_owned(), kind: Kind::Dir, mode: st.st_mode & 0o7777, size: 0, sha256: None, target: None };
    visit(root, Stat { uid: st.st_uid })?;
    walk_dir(fd, &mut Vec::new(), visit, hashes)
}

fn walk_dir(
    fd: BorrowedFd<'_>,
    prefix: &mut Vec<u8>,
    visit: &mut dyn FnMut(Entry, Stat) -> anyhow::Result<()>,
    hashes: Option<&Hashes>,
) -> anyhow::Result<()> {
    let mut names: Vec<Vec<u8>> = Vec::new();
    let dup = rustix::fs::openat(fd, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    for entry in rustix::fs::Dir::read_from(&dup)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort();
    for name in names {
        let len = prefix.len();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(&name);
        let st = rustix::fs::statat(fd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?;
        let mut e = Entry {
            path: escape(prefix),
            kind: Kind::Dir,
            mode: st.st_mode & 0o7777,
            size: 0,
            sha256: None,
            target: None,
        };
        let stat = Stat { uid: st.st_uid };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                visit(e, stat)?;
                let child =
                    crate::base::fsutil::open_beneath(fd, &name, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
                walk_dir(child.as_fd(), prefix, visit, hashes)?;
            }
            FileType::RegularFile => {
                e.kind = Kind::File;
                e.size = st.st_size as u64;
                e.sha256 = hashes.and_then(|h| h.get(&st.st_ino)).map(hex::encode);
                visit(e, stat)?;
            }
            FileType::Symlink => {
                e.kind = Kind::Symlink;
                e.mode = 0;
                let target = rustix::fs::readlinkat(fd, name.as_slice(), Vec::new())?;
                e.target = Some(escape(target.as_bytes()));
                visit(e, stat)?;
            }
            other => anyhow::bail!("`{}` is a {other:?}, which a release never holds", String::from_utf8_lossy(prefix)),
        }
        prefix.truncate(len);
    }
    Ok(())
}

/// The sha256 (hex) of the file at `rel` below `fd`, opened without following links.
fn hash_at(fd: BorrowedFd<'_>, rel: &[u8]) -> anyhow::Result<String> {
    let mut dir: Option<OwnedFd> = None;
    let comps: Vec<&[u8]> = rel.split(|b| *b == b'/').filter(|c| !c.is_empty()).collect();
    let (last, parents) = comps.split_last().context("an empty path")?;
    for c in parents {
        let at = dir.as_ref().map_or(fd, |d| d.as_fd());
        dir = Some(crate::base::fsutil::open_beneath(at, c, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?);
    }
    let at = dir.as_ref().map_or(fd, |d| d.as_fd());
    let mut f = std::fs::File::from(crate::base::fsutil::open_beneath(at, last, OFlags::RDONLY, Mode::empty())?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// The paths inside `release` that running `argv` in it executes or reads as a script: a relative program with a
/// slash, and any argument naming a file of the release (relative to it, or absolute under the release or under
/// `ROOT/current`).
pub fn exec_paths(argv: &[String], release: &Path, current: &Path) -> BTreeSet<Vec<u8>> {
    let mut out = BTreeSet::new();
    for (i, arg) in argv.iter().enumerate() {
        let p = Path::new(arg);
        let rel: Option<PathBuf> = if p.is_absolute() {
            p.strip_prefix(release).or_else(|_| p.strip_prefix(current)).ok().map(Path::to_path_buf)
        } else if i > 0 || arg.contains('/') {
            Some(p.to_path_buf())
        } else {
            None
        };
        let Some(rel) = rel else { continue };
        if rel.components().any(|c| !matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir)) {
            continue;
        }
        let clean: PathBuf = rel.components().filter(|c| matches!(c, std::path::Component::Normal(_))).collect();
        if clean.as_os_str().is_empty() {
            continue;
        }
        // Only what is a regular file of the release (an argument like `--fast` is not; a link, such as a
        // virtualenv's `bin/python`, runs what it leads to, and is itself checked with the whole tree).
        if std::fs::symlink_metadata(release.join(&clean)).is_ok_and(|m| m.is_file()) {
            out.insert(clean.as_os_str().as_bytes().to_vec());
        }
    }
    out
}

/// `path` of an index entry back to bytes.
pub fn unescape(s: &str) -> Vec<u8> {
    if s == "." {
        return Vec::new();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn unescape_display(s: &str) -> String {
    String::from_utf8_lossy(&unescape(s)).escape_debug().to_string()
}

/// Bytes as an index string: printable ASCII as it is, every other byte (and `%`) as `%XX`.
pub fn escape(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for &c in b {
        if (c.is_ascii_graphic() || c == b' ') && c != b'%' {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Removes the indexes of releases no longer on disk; returns their versions.
pub fn remove_orphans(state_dir: &Path, on_disk: &[crate::base::version::Version]) -> Vec<String> {
    let dir = state_dir.join("index");
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else { return removed };
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(v) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")) else { continue };
        if !on_disk.iter().any(|d| d.as_str() == v) && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(v.to_owned());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        for b in [&b"a/b c"[..], b"100%", b"\xff\x00n\n", "é".as_bytes()] {
            assert_eq!(unescape(&escape(b)), b);
        }
        assert_eq!(escape(b"a%b\n"), "a%25b%0A");
    }
}
