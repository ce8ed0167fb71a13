//! Safe streaming unpack of a `.tar.zst` archive into a staging directory.
//!
//! This module owns everything between the compressed bytes and the files of a staged release. It must never write
//! outside the staging directory, never follow a link while writing, and never hold more than a few buffers in
//! memory. The tar crate only parses entries (in raw mode, so that PAX and GNU long-name records are size-checked
//! here before they are read); every file is created relative to an open directory handle, one path component at
//! a time, with `O_NOFOLLOW` and `O_EXCL`. Symlinks are created last, after their targets have been resolved
//! against the archive's own tree, so nothing is ever written through one. Any refusal aborts the whole archive:
//! the caller removes the staging directory.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use serde::Serialize;
use sha2::Digest;
use tar::EntryType;

use crate::config::Limits;
use rustix::fs::Gid;

/// Why an archive was refused. Messages are lowercase and say what was wrong with the entry.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("a link target of {len} bytes is longer than the limit of {max}")]
    LinkTargetTooLong { len: usize, max: usize },
    #[error("absolute paths are refused")]
    AbsolutePath,
    #[error("`..` components are refused")]
    ParentComponent,
    #[error("the path is empty")]
    EmptyPath,
    #[error("the path contains a NUL byte")]
    NulInPath,
    #[error("the path is {len} bytes long (limit {max})")]
    PathTooLong { len: usize, max: usize },
    #[error("a path component is longer than 255 bytes")]
    NameTooLong,
    #[error("the path is {depth} levels deep (limit {max})")]
    TooDeep { depth: usize, max: usize },
    #[error("the path appears twice in the archive")]
    Duplicate,
    #[error("the path appears twice with a different type")]
    TypeChange,
    #[error("the path goes through `{through}`, which is not a directory of the archive")]
    ThroughNonDirectory { through: String },
    #[error("symlink target `{target}` is absolute")]
    SymlinkAbsolute { target: String },
    #[error("symlink target `{target}` escapes the release")]
    SymlinkEscapes { target: String },
    #[error("symlink target `{target}` is empty")]
    SymlinkEmpty { target: String },
    #[error("symlink target `{target}` resolves through too many links")]
    SymlinkLoop { target: String },
    #[error("hard link target `{target}` is outside the release")]
    HardlinkOutside { target: String },
    #[error("hard link target `{target}` has not appeared earlier in the archive")]
    HardlinkUnseen { target: String },
    #[error("hard link target `{target}` is not a regular file (hard links to directories and links are refused)")]
    HardlinkNotFile { target: String },
    #[error("device nodes are refused")]
    Device,
    #[error("fifos are refused")]
    Fifo,
    #[error("sparse files are refused")]
    Sparse,
    #[error("unknown entry type {0:?}")]
    UnknownType(char),
    #[error(
        "PAX record `{key}` is refused (extended attributes, ACLs, capabilities and sparse files are not unpacked)"
    )]
    PaxRefused { key: String },
    #[error("PAX size {pax} disagrees with the header size {header}")]
    PaxSizeMismatch { pax: u64, header: u64 },
    #[error("malformed PAX record")]
    PaxMalformed,
    #[error("a {what} record of {size} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { what: &'static str, size: u64, max: u64 },
    #[error("two {what} records describe the same entry")]
    RecordTwice { what: &'static str },
    #[error("more than {max} entries")]
    TooManyEntries { max: u64 },
    #[error("unpacked size exceeds the limit of {max} bytes")]
    TooLarge { max: u64 },
    #[error("the archive is empty")]
    Empty,
    #[error("the stream is truncated")]
    Truncated,
    #[error("the stream is corrupt")]
    Corrupt,
    #[error("it is {format}, not zstd: releases are .tar.zst, tar compressed with zstd (`tar --zstd -cf`, or `switchback publish DIR`)")]
    NotZstd { format: &'static str },
    #[error("the zstd window exceeds the limit of {max} bytes")]
    WindowTooLarge { max: u64 },
    #[error("non-zero data follows the end of the archive")]
    TrailingData,
    #[error("cannot write it")]
    Write,
    #[error("stopped: the agent is shutting down, or an operator cancelled the deploy")]
    Stopped,
}

/// A refused or failed unpack: which entry (if any) and why. The OS error, if any, is the source.
#[derive(Debug, thiserror::Error)]
#[error("{}{reason}", entry.as_ref().map(|e| format!("entry `{e}`: ")).unwrap_or_default())]
pub struct UnpackError {
    pub entry: Option<String>,
    pub reason: Refusal,
    #[source]
    pub source: Option<io::Error>,
}

impl UnpackError {
    fn new(entry: Option<&[u8]>, reason: Refusal) -> Self {
        UnpackError { entry: entry.map(display_bytes), reason, source: None }
    }
    fn io(entry: Option<&[u8]>, reason: Refusal, source: io::Error) -> Self {
        UnpackError { entry: entry.map(display_bytes), reason, source: Some(source) }
    }
}

/// What was unpacked.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes: u64,
    /// The sha256 of each regular file written, by inode (hard links share theirs), for the release's index.
    #[serde(skip)]
    pub hashes: crate::index::Hashes,
}

fn display_bytes(b: &[u8]) -> String {
    String::from_utf8_lossy(b).escape_debug().to_string()
}

/// Unpacks a zstd-compressed tar stream into the directory `dir` (normally a fresh, empty staging directory).
///
/// Everything unpacked belongs to this process's user (root on a server) and has no write bit: nobody else can
/// change a release. With `group` (the app user's), the group gets the read and execute bits the archive gave
/// the owner, so the service can read its code, and nothing more.
pub fn unpack_tar_zst<R: Read>(
    input: R,
    dir: BorrowedFd<'_>,
    limits: &Limits,
    group: Option<Gid>,
) -> Result<Report, UnpackError> {
    // The first bytes say whether this is zstd at all: another format is named, not called corrupt.
    let mut input = input;
    let mut head = Vec::with_capacity(512);
    (&mut input).take(512).read_to_end(&mut head).map_err(|e| stream_error(None, e, limits))?;
    if let Some(format) = not_zstd(&head) {
        return Err(UnpackError::new(None, Refusal::NotZstd { format }));
    }
    let input = io::Cursor::new(head).chain(input);
    let mut decoder =
        zstd::stream::read::Decoder::new(input).map_err(|e| UnpackError::io(None, Refusal::Corrupt, e))?;
    let window_log = 63 - limits.max_window.leading_zeros();
    decoder.window_log_max(window_log).map_err(|e| UnpackError::io(None, Refusal::Corrupt, e))?;
    unpack_tar(EofWatch { inner: decoder, eof: false }, dir, limits, group)
}

/// What a stream that does not start like zstd is, when its first bytes say so.
fn not_zstd(head: &[u8]) -> Option<&'static str> {
    const ZSTD: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    // Skippable frames (0x184D2A50..5F, little-endian) may come first in a zstd stream.
    let skippable = head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18];
    if head.len() < 4 || head.starts_with(&ZSTD) || skippable {
        return None;
    }
    Some(if head.starts_with(&[0x1f, 0x8b]) {
        "a gzip stream (.tar.gz)"
    } else if head.starts_with(b"BZh") {
        "a bzip2 stream (.tar.bz2)"
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        "an xz stream (.tar.xz)"
    } else if head.starts_with(&[0x04, 0x22, 0x4d, 0x18]) {
        "an lz4 stream"
    } else if head.starts_with(b"PK\x03\x04") {
        "a zip archive"
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        "an uncompressed tar archive"
    } else {
        // Unknown bytes: zstd itself says what is wrong with them (the stream is corrupt).
        return None;
    })
}

/// Unpacks an uncompressed tar stream. Exposed for tests and for the fuzz target.
pub fn unpack_tar<R: Read>(
    input: R,
    dir: BorrowedFd<'_>,
    limits: &Limits,
    group: Option<Gid>,
) -> Result<Report, UnpackError> {
    let mut input = EofWatch { inner: input, eof: false };
    let mut unpacker = Unpacker {
        tree: Tree::new(dir)?,
        limits,
        group,
        seen: PathMap::new(),
        symlinks: Vec::new(),
        report: Report::default(),
    };
    {
        let mut archive = tar::Archive::new(&mut input);
        let entries = archive.entries().map_err(|e| stream_error(None, e, limits))?.raw(true);
        unpacker.run(entries)?;
    }
    if input.eof {
        // The tar parser also stops at a clean end of input; without the end-of-archive block the stream was cut.
        return Err(UnpackError::new(None, Refusal::Truncated));
    }
    drain_trailer(&mut input, limits)?;
    unpacker.finish()
}

/// Reads what follows the end-of-archive block: only zero padding is allowed, and reading it to the end lets zstd
/// verify the frame's checksum.
fn drain_trailer<R: Read>(input: &mut R, limits: &Limits) -> Result<(), UnpackError> {
    let mut buf = [0u8; 8192];
    let mut total = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(|e| stream_error(None, e, limits))?;
        if n == 0 {
            return Ok(());
        }
        total += n as u64;
        if buf[..n].iter().any(|b| *b != 0) || total > 1 << 20 {
            return Err(UnpackError::new(None, Refusal::TrailingData));
        }
    }
}

fn stream_error(entry: Option<&[u8]>, e: io::Error, limits: &Limits) -> UnpackError {
    let text = e.to_string();
    // The tar crate reports a stream that ends inside data it skips (a directory's or link's body) as an
    // `Other` error with "unexpected EOF" in its text.
    let reason = if e.kind() == io::ErrorKind::UnexpectedEof
        || text.contains("unexpected EOF")
        || text.contains("incomplete frame")
        || text.contains("entire block")
    {
        Refusal::Truncated
    } else if text.contains("too much memory") || text.contains("indowLog") {
        Refusal::WindowTooLarge { max: limits.max_window }
    } else {
        Refusal::Corrupt
    };
    UnpackError::io(entry, reason, e)
}

/// Remembers whether the inner reader reached its end.
struct EofWatch<R> {
    inner: R,
    eof: bool,
}

impl<R: Read> Read for EofWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        Ok(n)
    }
}

#[derive(Debug)]
enum Node {
    Dir { mode: Option<u32> },
    File,
    Symlink { target: Vec<u8> },
}

type Comps = Vec<Vec<u8>>;

/// What the archive named so far, by path: a tree of components, so that memory grows with the bytes of the
/// names (one copy of each component) and a lookup costs one step per component. (A map keyed by whole paths
/// kept a full copy of every parent prefix: one 64-level path cost about 200 KiB, and a few thousand of them in a
/// 10 KB archive took gigabytes.)
#[derive(Default)]
struct PathMap {
    /// Index 0 is the release root (it never holds a node of its own).
    slots: Vec<Slot>,
}

#[derive(Default)]
struct Slot {
    parent: u32,
    name: Vec<u8>,
    node: Option<Node>,
    children: HashMap<Vec<u8>, u32>,
}

impl PathMap {
    fn new() -> PathMap {
        PathMap { slots: vec![Slot::default()] }
    }

    fn find(&self, comps: &[Vec<u8>]) -> Option<u32> {
        comps.iter().try_fold(0u32, |at, c| self.slots[at as usize].children.get(c.as_slice()).copied())
    }

    fn get(&self, comps: &[Vec<u8>]) -> Option<&Node> {
        self.find(comps).and_then(|i| self.slots[i as usize].node.as_ref())
    }

    /// Sets the node at `comps` (creating empty slots on the way); returns the node it replaced.
    fn insert(&mut self, comps: &[Vec<u8>], node: Node) -> Option<Node> {
        let mut at = 0u32;
        for c in comps {
            at = match self.slots[at as usize].children.get(c.as_slice()) {
                Some(&i) => i,
                None => {
                    let i = self.slots.len() as u32;
                    self.slots.push(Slot { parent: at, name: c.clone(), node: None, children: HashMap::new() });
                    self.slots[at as usize].children.insert(c.clone(), i);
                    i
                }
            };
        }
        self.slots[at as usize].node.replace(node)
    }

    /// Every directory with its path and mode.
    fn dirs(&self) -> Vec<(Comps, Option<u32>)> {
        let path = |mut i: u32| {
            let mut comps = Vec::new();
            while i != 0 {
                comps.push(self.slots[i as usize].name.clone());
                i = self.slots[i as usize].parent;
            }
            comps.reverse();
            comps
        };
        (1..self.slots.len() as u32)
            .filter_map(|i| match self.slots[i as usize].node {
                Some(Node::Dir { mode }) => Some((path(i), mode)),
                _ => None,
            })
            .collect()
    }
}

/// Extension records that describe the next real entry.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_link: Option<Vec<u8>>,
    pax_size: Option<u64>,
    pax_seen: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && !self.pax_seen
    }
}

struct Unpacker<'a> {
    tree: Tree<'a>,
    limits: &'a Limits,
    group: Option<Gid>,
    seen: PathMap,
    symlinks: Vec<(Comps, Vec<u8>)>,
    report: Report,
}

impl Unpacker<'_> {
    fn run<R: Read>(&mut self, entries: tar::Entries<'_, R>) -> Result<(), UnpackError> {
        let mut pending = Pending::default();
        let mut real_entries = 0u64;
        for entry in entries {
            let mut entry = entry.map_err(|e| stream_error(None, e, self.limits))?;
            self.report.entries += 1;
            crate::progress::beat();
            crate::progress::step_progress(|| {
                format!(
                    "unpacking: {} entries, {}",
                    self.report.entries,
                    bytesize::ByteSize(self.report.bytes).display().iec()
                )
            });
            // A shutdown is a flag; a cancel request is a file, looked for every 256 entries.
            if crate::progress::shutting_down()
                || (self.report.entries.is_multiple_of(256) && crate::progress::interrupted().is_some())
            {
                return Err(UnpackError::new(None, Refusal::Stopped));
            }
            if self.report.entries > self.limits.max_entries {
                return Err(UnpackError::new(None, Refusal::TooManyEntries { max: self.limits.max_entries }));
            }
            let kind = entry.header().entry_type();
            match kind {
                EntryType::GNULongName | EntryType::GNULongLink => {
                    let what = if kind == EntryType::GNULongName { "long name" } else { "long link" };
                    let mut data = self.read_record(&mut entry, what)?;
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                    let slot =
                        if kind == EntryType::GNULongName { &mut pending.long_name } else { &mut pending.long_link };
                    if slot.replace(data).is_some() {
                        return Err(UnpackError::new(None, Refusal::RecordTwice { what }));
                    }
                }
                EntryType::XHeader => {
                    if pending.pax_seen {
                        return Err(UnpackError::new(None, Refusal::RecordTwice { what: "PAX" }));
                    }
                    let data = self.read_record(&mut entry, "PAX")?;
                    parse_pax(&data, &mut pending, false)?;
                    pending.pax_seen = true;
                }
                EntryType::XGlobalHeader => {
                    // Global headers (git archive writes one with the commit id) may only carry harmless keys.
                    let data = self.read_record(&mut entry, "PAX global")?;
                    parse_pax(&data, &mut Pending::default(), true)?;
                }
                _ => {
                    real_entries += 1;
                    let p = std::mem::take(&mut pending);
                    self.entry(&mut entry, kind, p)?;
                    crate::crashpoint::hit("mid-unpack");
                }
            }
        }
        if !pending.is_empty() {
            return Err(UnpackError::new(None, Refusal::Truncated));
        }
        if real_entries == 0 {
            return Err(UnpackError::new(None, Refusal::Empty));
        }
        Ok(())
    }

    fn read_record<R: Read>(&self, entry: &mut tar::Entry<'_, R>, what: &'static str) -> Result<Vec<u8>, UnpackError> {
        let size = entry.size();
        if size > self.limits.max_record {
            return Err(UnpackError::new(None, Refusal::RecordTooLarge { what, size, max: self.limits.max_record }));
        }
        let mut data = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut data).map_err(|e| stream_error(None, e, self.limits))?;
        if (data.len() as u64) < size {
            return Err(UnpackError::new(None, Refusal::Truncated));
        }
        Ok(data)
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: EntryType,
        pending: Pending,
    ) -> Result<(), UnpackError> {
        let header = entry.header();
        let raw_path: Vec<u8> =
            pending.pax_path.or(pending.long_name).unwrap_or_else(|| header.path_bytes().into_owned());
        let raw_link: Option<Vec<u8>> =
            pending.pax_link.or(pending.long_link).or_else(|| header.link_name_bytes().map(|c| c.into_owned()));
        let here = Some(raw_path.as_slice());
        let header_size = header.entry_size().map_err(|e| UnpackError::io(here, Refusal::Corrupt, e))?;
        if let Some(pax) = pending.pax_size {
            if pax != header_size {
                return Err(UnpackError::new(here, Refusal::PaxSizeMismatch { pax, header: header_size }));
            }
        }
        let mode = header.mode().map_err(|e| UnpackError::io(here, Refusal::Corrupt, e))?;
        // Old-style archives mark directories with a trailing slash on a regular entry.
        let is_dir = kind == EntryType::Directory || (kind == EntryType::Regular && raw_path.ends_with(b"/"));
        match kind {
            EntryType::Char | EntryType::Block => return Err(UnpackError::new(here, Refusal::Device)),
            EntryType::Fifo => return Err(UnpackError::new(here, Refusal::Fifo)),
            EntryType::GNUSparse => return Err(UnpackError::new(here, Refusal::Sparse)),
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link => {}
            other => return Err(UnpackError::new(here, Refusal::UnknownType(other.as_byte() as char))),
        }
        let comps = normalize(&raw_path, self.limits).map_err(|r| UnpackError::new(here, r))?;
        if comps.is_empty() {
            // "./" names the release root itself: nothing to create.
            return if is_dir { Ok(()) } else { Err(UnpackError::new(here, Refusal::EmptyPath)) };
        }
        self.check_parents(&comps).map_err(|r| UnpackError::new(here, r))?;
        if let Some(existing) = self.seen.get(&comps) {
            let refusal = match existing {
                Node::Dir { .. } if is_dir => None,
                Node::Dir { .. } => Some(Refusal::TypeChange),
                Node::File | Node::Symlink { .. } if is_dir => Some(Refusal::TypeChange),
                _ => Some(Refusal::Duplicate),
            };
            if let Some(r) = refusal {
                return Err(UnpackError::new(here, r));
            }
        }
        let (parent, name) = comps.split_at(comps.len() - 1);
        let name = &name[0];
        if is_dir {
            let existed = self.seen.insert(&comps, Node::Dir { mode: Some(mode) }).is_some();
            if !existed {
                self.report.dirs += 1;
                self.tree.dir(&comps).map_err(|e| UnpackError::io(here, Refusal::Write, e))?;
            }
            return Ok(());
        }
        match kind {
            EntryType::Symlink => {
                let target = raw_link.unwrap_or_default();
                check_link_target(&target, self.limits).map_err(|r| UnpackError::new(here, r))?;
                self.seen.insert(&comps, Node::Symlink { target: target.clone() });
                self.symlinks.push((comps, target));
                self.report.symlinks += 1;
            }
            EntryType::Link => {
                let target = raw_link.unwrap_or_default();
                let shown = display_bytes(&target);
                let tcomps = match normalize(&target, self.limits) {
                    Ok(c) if !c.is_empty() => c,
                    Ok(_) => return Err(UnpackError::new(here, Refusal::HardlinkNotFile { target: shown })),
                    Err(_) => return Err(UnpackError::new(here, Refusal::HardlinkOutside { target: shown })),
                };
                match self.seen.get(&tcomps) {
                    None => return Err(UnpackError::new(here, Refusal::HardlinkUnseen { target: shown })),
                    Some(Node::File) => {}
                    Some(_) => return Err(UnpackError::new(here, Refusal::HardlinkNotFile { target: shown })),
                }
                let (tparent, tname) = tcomps.split_at(tcomps.len() - 1);
                let tdir = self.tree.open_dir(tparent).map_err(|e| UnpackError::io(here, Refusal::Write, e))?;
                let ldir = self.tree.dir(parent).map_err(|e| UnpackError::io(here, Refusal::Write, e))?;
                // No AT_SYMLINK_FOLLOW: the link is made to the entry itself, which we know is our regular file.
                rustix::fs::linkat(&tdir, tname[0].as_slice(), ldir, name.as_slice(), AtFlags::empty())
                    .map_err(|e| UnpackError::io(here, Refusal::Write, e.into()))?;
                self.seen.insert(&comps, Node::File);
                self.report.hardlinks += 1;
            }
            _ => {
                if self.report.bytes.saturating_add(header_size) > self.limits.max_unpacked {
                    return Err(UnpackError::new(here, Refusal::TooLarge { max: self.limits.max_unpacked }));
                }
                let dir = self.tree.dir(parent).map_err(|e| UnpackError::io(here, Refusal::Write, e))?;
                let fd =
                    open_beneath(dir, name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, Mode::from_raw_mode(0o600))
                        .map_err(|e| UnpackError::io(here, Refusal::Write, e))?;
                let mut file = std::fs::File::from(fd);
                let mut hasher = sha2::Sha256::new();
                let copied =
                    copy_exact(entry, &mut file, header_size, &mut hasher).map_err(|(reading, e)| match reading {
                        true => stream_error(here, e, self.limits),
                        false => UnpackError::io(here, Refusal::Write, e),
                    })?;
                if copied < header_size {
                    return Err(UnpackError::new(here, Refusal::Truncated));
                }
                let st = rustix::fs::fstat(&file).map_err(|e| UnpackError::io(here, Refusal::Write, e.into()))?;
                self.report.hashes.insert(st.st_ino, hasher.finalize().into());
                if let Some(g) = self.group {
                    rustix::fs::fchown(&file, None, Some(g))
                        .map_err(|e| UnpackError::io(here, Refusal::Write, e.into()))?;
                }
                rustix::fs::fchmod(&file, Mode::from_raw_mode(file_mode(mode, self.group.is_some())))
                    .map_err(|e| UnpackError::io(here, Refusal::Write, e.into()))?;
                self.seen.insert(&comps, Node::File);
                self.report.files += 1;
                self.report.bytes += header_size;
            }
        }
        Ok(())
    }

    /// Every parent of a path must be a directory of the archive (or not yet named, which makes it one).
    fn check_parents(&mut self, comps: &[Vec<u8>]) -> Result<(), Refusal> {
        for i in 1..comps.len() {
            let prefix = &comps[..i];
            match self.seen.get(prefix) {
                Some(Node::Dir { .. }) => {}
                Some(_) => return Err(Refusal::ThroughNonDirectory { through: display_bytes(&prefix.join(&b'/')) }),
                None => {
                    self.seen.insert(prefix, Node::Dir { mode: None });
                    self.report.dirs += 1;
                }
            }
        }
        Ok(())
    }

    /// Creates the symlinks, gives directories their final modes and owners.
    fn finish(mut self) -> Result<Report, UnpackError> {
        let symlinks = std::mem::take(&mut self.symlinks);
        for (comps, target) in &symlinks {
            let here = comps.join(&b'/');
            resolve_inside(&self.seen, comps, target, &mut 0).map_err(|r| UnpackError::new(Some(&here), r))?;
        }
        for (comps, target) in &symlinks {
            let here = comps.join(&b'/');
            let (parent, name) = comps.split_at(comps.len() - 1);
            let dir = self.tree.dir(parent).map_err(|e| UnpackError::io(Some(&here), Refusal::Write, e))?;
            rustix::fs::symlinkat(target.as_slice(), dir, name[0].as_slice())
                .map_err(|e| UnpackError::io(Some(&here), Refusal::Write, e.into()))?;
        }
        // The release root itself (a staging directory made private while it was filled) is readable like any
        // other directory of the release, so a service running as another user can read its code.
        if let Some(g) = self.group {
            rustix::fs::fchown(self.tree.root, None, Some(g))
                .map_err(|e| UnpackError::io(None, Refusal::Write, e.into()))?;
        }
        rustix::fs::fchmod(self.tree.root, Mode::from_raw_mode(0o755))
            .map_err(|e| UnpackError::io(None, Refusal::Write, e.into()))?;
        let mut dirs = self.seen.dirs();
        dirs.sort();
        for (comps, mode) in &dirs {
            let here = comps.join(&b'/');
            let fd = self.tree.open_dir(comps).map_err(|e| UnpackError::io(Some(&here), Refusal::Write, e))?;
            if let Some(g) = self.group {
                rustix::fs::fchown(&fd, None, Some(g))
                    .map_err(|e| UnpackError::io(Some(&here), Refusal::Write, e.into()))?;
            }
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(dir_mode(mode.unwrap_or(0o755), self.group.is_some())))
                .map_err(|e| UnpackError::io(Some(&here), Refusal::Write, e.into()))?;
        }
        Ok(self.report)
    }
}

/// Releases are immutable: files lose every write bit and setuid/setgid/sticky, and stay readable by their owner
/// (root). With a read group, the group gets the owner's read and execute bits.
fn file_mode(mode: u32, group_reads: bool) -> u32 {
    with_group((mode & 0o555) | 0o400, group_reads)
}

/// Directories keep owner write (root's, so that it can prune) but never group/world write or special bits.
fn dir_mode(mode: u32, group_reads: bool) -> u32 {
    with_group((mode & 0o755) | 0o700, group_reads)
}

fn with_group(mode: u32, group_reads: bool) -> u32 {
    if group_reads {
        mode | ((mode >> 3) & 0o050)
    } else {
        mode
    }
}

/// Splits an archive path into components: `.` and empty components vanish, `..` and absolute paths are refused.
fn normalize(raw: &[u8], limits: &Limits) -> Result<Comps, Refusal> {
    if raw.is_empty() {
        return Err(Refusal::EmptyPath);
    }
    if raw.len() > limits.max_path_len {
        return Err(Refusal::PathTooLong { len: raw.len(), max: limits.max_path_len });
    }
    if raw.contains(&0) {
        return Err(Refusal::NulInPath);
    }
    if raw[0] == b'/' {
        return Err(Refusal::AbsolutePath);
    }
    let mut comps = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(Refusal::ParentComponent),
            c if c.len() > 255 => return Err(Refusal::NameTooLong),
            c => comps.push(c.to_vec()),
        }
    }
    if comps.len() > limits.max_depth {
        return Err(Refusal::TooDeep { depth: comps.len(), max: limits.max_depth });
    }
    Ok(comps)
}

/// A symlink target the kernel would take, and short enough to resolve cheaply: no NUL, at most `max_path_len`
/// bytes (and PATH_MAX), at most twice `max_depth` components (room for `..` up to the root and down again).
fn check_link_target(target: &[u8], limits: &Limits) -> Result<(), Refusal> {
    let max = limits.max_path_len.min(4095);
    if target.len() > max {
        return Err(Refusal::LinkTargetTooLong { len: target.len(), max });
    }
    if target.contains(&0) {
        return Err(Refusal::NulInPath);
    }
    let depth = target.split(|b| *b == b'/').filter(|c| !c.is_empty() && *c != b".").count();
    if depth > limits.max_depth * 2 {
        return Err(Refusal::TooDeep { depth, max: limits.max_depth * 2 });
    }
    Ok(())
}

/// Resolves a symlink's target as the kernel would, against the archive's own tree (following the archive's other
/// symlinks), and refuses it if any step leaves the release. Returns the resolved path. Like the kernel, it
/// follows at most 40 links in one resolution in total (`hops` counts them across the recursion), so a chain of
/// links that each name the previous one twice costs 40 steps, not 2^n.
fn resolve_inside(seen: &PathMap, link: &[Vec<u8>], target: &[u8], hops: &mut u32) -> Result<Comps, Refusal> {
    let shown = || display_bytes(target);
    if target.is_empty() {
        return Err(Refusal::SymlinkEmpty { target: shown() });
    }
    if target[0] == b'/' {
        return Err(Refusal::SymlinkAbsolute { target: shown() });
    }
    let mut at: Comps = link[..link.len() - 1].to_vec();
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if at.pop().is_none() {
                    return Err(Refusal::SymlinkEscapes { target: shown() });
                }
            }
            name => {
                at.push(name.to_vec());
                if let Some(Node::Symlink { target: next }) = seen.get(&at) {
                    *hops += 1;
                    if *hops > 40 {
                        return Err(Refusal::SymlinkLoop { target: shown() });
                    }
                    let link_path = at.clone();
                    at = resolve_inside(seen, &link_path, next, hops).map_err(|inner| match inner {
                        Refusal::SymlinkEscapes { .. } | Refusal::SymlinkAbsolute { .. } => {
                            Refusal::SymlinkEscapes { target: shown() }
                        }
                        other => other,
                    })?;
                }
            }
        }
    }
    Ok(at)
}

/// Parses a PAX record. Keys that would make us write something other than a plain file are refused; path,
/// linkpath and size are honoured; times, owners and other informational keys are ignored.
fn parse_pax(data: &[u8], pending: &mut Pending, global: bool) -> Result<(), UnpackError> {
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.map_err(|e| UnpackError::io(None, Refusal::PaxMalformed, e))?;
        let key = ext.key().map_err(|_| UnpackError::new(None, Refusal::PaxMalformed))?;
        let refused = key.starts_with("SCHILY.xattr.")
            || key.starts_with("LIBARCHIVE.xattr.")
            || key.starts_with("SCHILY.acl")
            || key.starts_with("GNU.sparse")
            || key.starts_with("SCHILY.fflags")
            || key.starts_with("RHT.security")
            || key.contains("capability")
            || (global && matches!(key, "path" | "linkpath" | "size"));
        if refused {
            return Err(UnpackError::new(None, Refusal::PaxRefused { key: key.to_owned() }));
        }
        match key {
            "path" => pending.pax_path = Some(ext.value_bytes().to_vec()),
            "linkpath" => pending.pax_link = Some(ext.value_bytes().to_vec()),
            "size" => {
                let size = ext
                    .value()
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| UnpackError::new(None, Refusal::PaxMalformed))?;
                pending.pax_size = Some(size);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Copies at most `size` bytes, hashing them; the error says whether reading (`true`) or writing failed.
fn copy_exact<R: Read, W: Write>(
    from: &mut R,
    to: &mut W,
    size: u64,
    hasher: &mut sha2::Sha256,
) -> Result<u64, (bool, io::Error)> {
    let mut buf = vec![0u8; 64 << 10];
    let mut done = 0u64;
    while done < size {
        let want = buf.len().min((size - done) as usize);
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((true, e)),
        };
        to.write_all(&buf[..n]).map_err(|e| (false, e))?;
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(done)
}

/// Directories of the staging tree, opened one component at a time without following links. The last opened
/// directory is cached, since archives list files of one directory together.
struct Tree<'a> {
    root: BorrowedFd<'a>,
    cache: Option<(Comps, OwnedFd)>,
}

impl<'a> Tree<'a> {
    fn new(root: BorrowedFd<'a>) -> Result<Self, UnpackError> {
        Ok(Tree { root, cache: None })
    }

    /// The directory at `comps`, created (mode 0700 until `finish`) where missing.
    fn dir(&mut self, comps: &[Vec<u8>]) -> io::Result<BorrowedFd<'_>> {
        if comps.is_empty() {
            return Ok(self.root);
        }
        let hit = matches!(&self.cache, Some((c, _)) if c.as_slice() == comps);
        if !hit {
            let fd = self.walk(comps, true)?;
            self.cache = Some((comps.to_vec(), fd));
        }
        Ok(self.cache.as_ref().map(|(_, fd)| fd.as_fd()).unwrap_or(self.root))
    }

    /// Opens an existing directory (never creates), as an owned handle.
    fn open_dir(&self, comps: &[Vec<u8>]) -> io::Result<OwnedFd> {
        if comps.is_empty() {
            return open_beneath(self.root, b".", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty());
        }
        self.walk(comps, false)
    }

    fn walk(&self, comps: &[Vec<u8>], create: bool) -> io::Result<OwnedFd> {
        let mut cur: Option<OwnedFd> = None;
        for c in comps {
            let parent = cur.as_ref().map_or(self.root, |f| f.as_fd());
            let flags = OFlags::RDONLY | OFlags::DIRECTORY;
            let next = match open_beneath(parent, c, flags, Mode::empty()) {
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                    rustix::fs::mkdirat(parent, c.as_slice(), Mode::from_raw_mode(0o700))?;
                    open_beneath(parent, c, flags, Mode::empty())?
                }
                other => other?,
            };
            cur = Some(next);
        }
        cur.ok_or_else(|| io::Error::other("empty path"))
    }
}

/// 0 = not yet known, 1 = openat2 works, 2 = the kernel lacks it.
static OPENAT2: AtomicU8 = AtomicU8::new(0);

/// Opens one path component below `dir`: never following a link, and with `openat2(RESOLVE_BENEATH)` where the
/// kernel has it, so that even a bug here could not resolve outside `dir`.
pub(crate) fn open_beneath(dir: BorrowedFd<'_>, name: &[u8], flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if OPENAT2.load(Ordering::Relaxed) != 2 {
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(dir, name, flags, mode, resolve) {
            Ok(fd) => {
                OPENAT2.store(1, Ordering::Relaxed);
                return Ok(fd);
            }
            Err(e)
                if e == rustix::io::Errno::NOSYS
                    || e == rustix::io::Errno::PERM && OPENAT2.load(Ordering::Relaxed) == 0 =>
            {
                OPENAT2.store(2, Ordering::Relaxed);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(rustix::fs::openat(dir, name, flags, mode)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn normalize_drops_dots_and_refuses_escapes() {
        let l = limits();
        assert_eq!(normalize(b"./a//b/./c", &l).unwrap(), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert!(normalize(b"./", &l).unwrap().is_empty());
        assert!(matches!(normalize(b"/etc/passwd", &l), Err(Refusal::AbsolutePath)));
        assert!(matches!(normalize(b"a/../../x", &l), Err(Refusal::ParentComponent)));
        assert!(matches!(normalize(b"a/..", &l), Err(Refusal::ParentComponent)));
        let deep = "d/".repeat(65);
        assert!(matches!(normalize(deep.as_bytes(), &l), Err(Refusal::TooDeep { .. })));
    }

    fn tree(entries: &[(&str, Node)]) -> PathMap {
        let mut map = PathMap::new();
        for (p, n) in entries {
            let node = match n {
                Node::Dir { mode } => Node::Dir { mode: *mode },
                Node::File => Node::File,
                Node::Symlink { target } => Node::Symlink { target: target.clone() },
            };
            map.insert(&comps(p), node);
        }
        map
    }

    fn comps(p: &str) -> Comps {
        p.split('/').map(|c| c.as_bytes().to_vec()).collect()
    }

    #[test]
    fn symlink_resolution_follows_other_links() {
        let link = |t: &str| Node::Symlink { target: t.as_bytes().to_vec() };
        let seen = tree(&[
            ("a", Node::Dir { mode: None }),
            ("a/b", Node::Dir { mode: None }),
            ("dot", link(".")),
            ("deep", link("a/b")),
        ]);
        // Lexically "dot/.." is the root, but "dot" is "." so it really is the parent of the release.
        assert!(matches!(resolve_inside(&seen, &comps("x"), b"dot/..", &mut 0), Err(Refusal::SymlinkEscapes { .. })));
        // Lexically "deep/../.." escapes; really it is a/b/../.. = the release root.
        assert!(resolve_inside(&seen, &comps("x"), b"deep/../..", &mut 0).is_ok());
        assert!(resolve_inside(&seen, &comps("a/b/x"), b"../../a", &mut 0).is_ok());
        assert!(matches!(resolve_inside(&seen, &comps("a/x"), b"../..", &mut 0), Err(Refusal::SymlinkEscapes { .. })));
        assert!(matches!(resolve_inside(&seen, &comps("x"), b"/etc", &mut 0), Err(Refusal::SymlinkAbsolute { .. })));
        let loops = tree(&[("p", link("q")), ("q", link("p"))]);
        assert!(matches!(resolve_inside(&loops, &comps("x"), b"p", &mut 0), Err(Refusal::SymlinkLoop { .. })));
    }

    #[test]
    fn modes_are_sanitized() {
        assert_eq!(file_mode(0o4777, false), 0o555);
        assert_eq!(file_mode(0o2644, false), 0o444);
        assert_eq!(file_mode(0o000, false), 0o400);
        assert_eq!(dir_mode(0o1777, false), 0o755);
        assert_eq!(dir_mode(0o500, false), 0o700);
        // The app's group reads what the archive let its owner read, and never writes.
        assert_eq!(file_mode(0o600, true), 0o440);
        assert_eq!(file_mode(0o700, true), 0o550);
        assert_eq!(file_mode(0o604, true), 0o444);
        assert_eq!(dir_mode(0o700, true), 0o750);
    }
}
