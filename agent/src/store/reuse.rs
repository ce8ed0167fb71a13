//! Reuse of unchanged files: a file of a new release whose content (size and sha256), mode and owner are those of a
//! file in a release already on disk is not written again but shared with it: a reflink (a copy that shares the
//! data, where the filesystem can) or a hard link (the same inode: safe only because releases are immutable and
//! root's, and only between files whose mode and owner are the same). The donors are the releases their indexes
//! describe (the current release and the last good one); a donor file is checked against the disk (type, size,
//! mode, owner, and a modification time no later than its index: a file written, or replaced, after its release
//! was indexed is not what the index describes) before it is shared, and any failure to share it falls back to
//! writing the file.
//!
//! This module never writes into a donor release, never follows a link in one, and never shares an inode whose
//! mode or owner would differ from what the unpacker would have written.

use std::collections::HashMap;
use std::io::BufRead;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Uid};

use crate::base::fsutil::open_beneath;
use crate::store::index::{self, Entry, Kind};

/// How files of a new release are shared with the releases on disk (`reuse` in an app's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReuseMode {
    /// A reflink where the filesystem supports it, else a hard link.
    #[default]
    Auto,
    /// Only reflinks (a filesystem without them writes every file).
    Reflink,
    /// Only hard links.
    Hardlink,
    /// Every file is written.
    Off,
}

/// A file of a donor release that a new file may share.
#[derive(Debug, Clone)]
struct Donor {
    release: usize,
    /// The path inside the release, split into components.
    parent: Vec<u8>,
    name: Vec<u8>,
    mode: u32,
}

/// How a file was shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    Reflinked,
    HardLinked,
}

/// The files of the releases on disk that a new release may share, by content.
pub struct Donors {
    mode: ReuseMode,
    /// Each donor release's directory, and the time its index was written (no file of it is newer).
    releases: Vec<(OwnedFd, i64, i64)>,
    by_content: HashMap<(u64, [u8; 32]), Vec<Donor>>,
    /// Directories of the donor releases, opened without following links, by (release, path).
    dirs: HashMap<(usize, Vec<u8>), OwnedFd>,
    /// Whether reflinks failed once as unsupported (then only hard links are tried).
    no_reflink: AtomicBool,
    owner: (Uid, Gid),
    /// Unpacking a delta: its references to files of its base release must be found here.
    delta: bool,
}

impl Donors {
    /// No donors: every file is written.
    pub fn none() -> Donors {
        Donors {
            mode: ReuseMode::Off,
            releases: Vec::new(),
            by_content: HashMap::new(),
            dirs: HashMap::new(),
            no_reflink: AtomicBool::new(false),
            owner: (rustix::process::geteuid(), rustix::process::getegid()),
            delta: false,
        }
    }

    /// The donors of a delta: its base release first, then the others. Files are shared whatever the app's
    /// `reuse` (a delta holds no data for them), by reflink or hard link.
    pub fn for_delta(mode: ReuseMode, releases: &[(&Path, &Path)], group: Option<Gid>) -> Donors {
        let mode = if mode == ReuseMode::Off { ReuseMode::Auto } else { mode };
        let mut d = Donors::load(mode, releases, group);
        d.delta = true;
        d
    }

    /// Whether a delta is being unpacked.
    pub fn is_delta(&self) -> bool {
        self.delta
    }

    /// The files of `releases` (each its directory and its index). A release whose index cannot be read is left
    /// out (it is only a donor; its own checks are elsewhere). `group` is the group the unpacker gives files.
    pub fn load(mode: ReuseMode, releases: &[(&Path, &Path)], group: Option<Gid>) -> Donors {
        let mut d = Donors::none();
        d.mode = mode;
        if let Some(g) = group {
            d.owner.1 = g;
        }
        if mode == ReuseMode::Off {
            return d;
        }
        for (dir, idx) in releases {
            let fd = match rustix::fs::open(
                *dir,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::debug!("not reusing files of {}: {e}", dir.display());
                    continue;
                }
            };
            let release = d.releases.len();
            let indexed = match std::fs::metadata(idx) {
                Ok(m) => (std::os::unix::fs::MetadataExt::mtime(&m), std::os::unix::fs::MetadataExt::mtime_nsec(&m)),
                Err(e) => {
                    tracing::debug!("not reusing files of {}: {}: {e}", dir.display(), idx.display());
                    continue;
                }
            };
            match d.add(release, idx) {
                Ok(()) => d.releases.push((fd, indexed.0, indexed.1)),
                Err(e) => tracing::debug!("not reusing files of {}: {e:#}", dir.display()),
            }
        }
        d
    }

    fn add(&mut self, release: usize, idx: &Path) -> anyhow::Result<()> {
        let file = std::fs::File::open(idx).with_context(|| format!("opening {}", idx.display()))?;
        let mut found = Vec::new();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", idx.display()))?;
            if n == 0 {
                continue; // the header
            }
            let e: Entry = serde_json::from_str(&line).with_context(|| format!("parsing {}", idx.display()))?;
            let (Kind::File, Some(sha)) = (e.kind, e.sha256.as_deref()) else { continue };
            let mut hash = [0u8; 32];
            hex::decode_to_slice(sha, &mut hash).with_context(|| format!("a sha256 in {}", idx.display()))?;
            let path = index::unescape(&e.path);
            let (parent, name) = match path.iter().rposition(|b| *b == b'/') {
                Some(i) => (path[..i].to_vec(), path[i + 1..].to_vec()),
                None => (Vec::new(), path),
            };
            found.push(((e.size, hash), Donor { release, parent, name, mode: e.mode }));
        }
        for (key, donor) in found {
            self.by_content.entry(key).or_default().push(donor);
        }
        Ok(())
    }

    /// Whether any file could be shared.
    pub fn is_empty(&self) -> bool {
        self.by_content.is_empty()
    }

    /// Makes `name` in `dir` share a donor file with this content and final `mode`, if there is one that is on
    /// disk as its index says. `Ok(Some((how, inode)))`: done; `Ok(None)`: write the file.
    pub fn share(
        &mut self,
        size: u64,
        hash: &[u8; 32],
        mode: u32,
        dir: BorrowedFd<'_>,
        name: &[u8],
    ) -> std::io::Result<Option<(Shared, u64)>> {
        let Some(candidates) = self.by_content.get(&(size, *hash)) else { return Ok(None) };
        let candidates: Vec<Donor> = candidates.iter().filter(|c| c.mode == mode).cloned().collect();
        for c in candidates {
            let key = (c.release, c.parent.clone());
            if !self.open_dir(&key) {
                continue;
            }
            let pdir = &self.dirs[&key];
            let Ok(st) = rustix::fs::statat(pdir, c.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) else { continue };
            let (_, indexed_s, indexed_ns) = self.releases[c.release];
            let same = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                && st.st_size as u64 == size
                && st.st_mode & 0o7777 == mode
                && (st.st_uid, st.st_gid) == (self.owner.0.as_raw(), self.owner.1.as_raw())
                && (st.st_mtime, st.st_mtime_nsec as i64) <= (indexed_s, indexed_ns);
            if !same {
                continue;
            }
            if let Some(done) = self.reflink(pdir, &c.name, dir, name, mode)? {
                return Ok(Some(done));
            }
            if self.mode == ReuseMode::Reflink {
                return Ok(None);
            }
            match rustix::fs::linkat(pdir, c.name.as_slice(), dir, name, AtFlags::empty()) {
                Ok(()) => {}
                // The name is taken, too many links to that inode, a filesystem without hard links: write it.
                Err(e) => {
                    tracing::debug!("cannot hard-link a reused file: {e}");
                    continue;
                }
            }
            // The link is to what was checked, or it goes (a donor replaced in between is never shared).
            let now = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            if now.st_ino != st.st_ino || now.st_dev != st.st_dev {
                rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
                continue;
            }
            return Ok(Some((Shared::HardLinked, st.st_ino)));
        }
        Ok(None)
    }

    /// A reflink of the donor `name` in `pdir` as a new file `name` in `dir`, when the mode allows it and the
    /// filesystem supports it.
    fn reflink(
        &self,
        pdir: &OwnedFd,
        donor: &[u8],
        dir: BorrowedFd<'_>,
        name: &[u8],
        mode: u32,
    ) -> std::io::Result<Option<(Shared, u64)>> {
        if self.mode == ReuseMode::Hardlink || self.no_reflink.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let Ok(src) = open_beneath(pdir.as_fd(), donor, OFlags::RDONLY, Mode::empty()) else { return Ok(None) };
        let created =
            open_beneath(dir, name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, Mode::from_raw_mode(0o600));
        let dst = match created {
            Ok(fd) => fd,
            // The name is taken (by an entry of the archive), or cannot be made: not shared, written.
            Err(e) => {
                tracing::debug!("cannot make a reflink: {e}");
                return Ok(None);
            }
        };
        if let Err(e) = rustix::fs::ioctl_ficlone(&dst, &src) {
            drop(dst);
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
            if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::XDEV || e == rustix::io::Errno::INVAL {
                self.no_reflink.store(true, Ordering::Relaxed);
            }
            return Ok(None);
        }
        if self.owner.1 != rustix::process::getegid() {
            rustix::fs::fchown(&dst, None, Some(self.owner.1))?;
        }
        rustix::fs::fchmod(&dst, Mode::from_raw_mode(mode))?;
        Ok(Some((Shared::Reflinked, rustix::fs::fstat(&dst)?.st_ino)))
    }

    /// Opens the directory `key.1` of donor release `key.0` (one component at a time, without following links)
    /// unless it is open already; false if it cannot be.
    fn open_dir(&mut self, key: &(usize, Vec<u8>)) -> bool {
        if self.dirs.contains_key(key) {
            return true;
        }
        let Some((root, _, _)) = self.releases.get(key.0) else { return false };
        let mut cur: Option<OwnedFd> = None;
        for c in key.1.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            let at = cur.as_ref().map_or(root.as_fd(), |f| f.as_fd());
            match open_beneath(at, c, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()) {
                Ok(fd) => cur = Some(fd),
                Err(_) => return false,
            }
        }
        let fd = match cur {
            Some(fd) => fd,
            None => match open_beneath(root.as_fd(), b".", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()) {
                Ok(fd) => fd,
                Err(_) => return false,
            },
        };
        // A few hundred directories per release at most: kept for the whole unpack.
        self.dirs.insert(key.clone(), fd);
        true
    }
}
