//! Safe streaming unpack of a `.tar.zst` archive into a staging directory.
//!
//! This module owns everything between the compressed bytes and the files of a staged release. It must never write
//! outside the staging directory, never follow a link while writing, and never hold more than a few buffers in
//! memory. The tar format is read here (`format`), so that what the release holds is what GNU tar would extract,
//! or a refusal on purpose naming the entry (or the byte offset) and the rule; every file is created relative to
//! an open directory handle, one path component at a time, with `O_NOFOLLOW` and `O_EXCL` (`tree`). Symlinks are
//! created last, after their targets have been resolved against the archive's own tree and judged by the link
//! policy (`links`), so nothing is ever written through one. Any refusal aborts the whole archive: the caller
//! removes the staging directory.
//!
//! Three kinds of threads share the work: zstd decodes on its own (`pipe`), this one reads the tar stream and
//! decides every entry, and a few write small files (`writers`), since creating a file waits on the disk. Every
//! thread has ended when an unpack returns, whatever its outcome.

mod compression;
mod error;
mod file;
mod format;
mod limits;
mod links;
mod pax;
mod pipe;
#[cfg(test)]
mod reuse_tests;
mod tree;
mod writers;

use std::io::{self, Read};
use std::os::fd::BorrowedFd;

use rustix::fs::{AtFlags, Gid, Mode};
use serde::Serialize;

use crate::store::reuse::Donors;
use compression::{not_zstd, zstd_error, ZstdErrors};
use error::{display_bytes, Here};
pub use error::{Refusal, UnpackError};
pub use limits::Limits;
pub use links::LinkPolicy;
pub use pax::SHARED_KEY;
use pax::{parse_global_pax, parse_pax};
use tree::dir_mode;

use format::{Blocks, DataError, Header, Short};
use tree::{normalize, Comps, Node, PathMap, Tree};
use writers::Writers;

/// What was unpacked.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes: u64,
    /// Files shared with a release on disk instead of written (see `store::reuse`), and their bytes.
    pub reused: u64,
    pub reused_bytes: u64,
    /// The sha256 of each regular file written, by inode (hard links share theirs), for the release's index.
    #[serde(skip)]
    pub hashes: crate::store::index::Hashes,
}

/// Unpacks a zstd-compressed tar stream into the directory `dir` (normally a fresh, empty staging directory),
/// refusing every link that leaves the release.
///
/// Everything unpacked belongs to this process's user (root on a server) and has no write bit: nobody else can
/// change a release. With `group` (the app user's), the group gets the read and execute bits the archive gave
/// the owner, so the service can read its code, and nothing more.
pub fn unpack_tar_zst<R: Read + Send>(
    input: R,
    dir: BorrowedFd<'_>,
    limits: &Limits,
    group: Option<Gid>,
) -> Result<Report, UnpackError> {
    unpack_tar_zst_with(input, dir, limits, group, &LinkPolicy::default())
}

/// Like [`unpack_tar_zst`], with links that leave the release judged by `links`.
pub fn unpack_tar_zst_with<R: Read + Send>(
    input: R,
    dir: BorrowedFd<'_>,
    limits: &Limits,
    group: Option<Gid>,
    links: &LinkPolicy,
) -> Result<Report, UnpackError> {
    unpack_tar_zst_reusing(input, dir, limits, group, links, &mut Donors::none())
}

/// Like [`unpack_tar_zst_with`], sharing unchanged files with `donors` (releases on disk).
pub fn unpack_tar_zst_reusing<R: Read + Send>(
    input: R,
    dir: BorrowedFd<'_>,
    limits: &Limits,
    group: Option<Gid>,
    links: &LinkPolicy,
    donors: &mut Donors,
) -> Result<Report, UnpackError> {
    // The first bytes say whether this is zstd at all: another format is named, not called corrupt.
    let mut input = input;
    let mut head = Vec::with_capacity(512);
    (&mut input).take(512).read_to_end(&mut head).map_err(|e| zstd_error(e, limits))?;
    if let Some(format) = not_zstd(&head) {
        return Err(Here::at(0).refuse(Refusal::NotZstd { format }));
    }
    let input = io::Cursor::new(head).chain(input);
    let corrupt = |e: io::Error| Here { path: None, offset: None }.io(Refusal::Corrupt { what: e.to_string() }, e);
    let mut decoder = zstd::stream::read::Decoder::new(input).map_err(corrupt)?;
    let window_log = 63 - limits.max_window.leading_zeros();
    decoder.window_log_max(window_log).map_err(corrupt)?;
    // zstd decodes on a thread of its own while this one reads the tar stream and hands out the files.
    std::thread::scope(|s| {
        let decoded = pipe::spawn(s, ZstdErrors { inner: decoder, limits });
        unpack_tar_with(decoded, dir, limits, group, links, donors)
    })
}

/// Unpacks an uncompressed tar stream, refusing every link that leaves the release. Exposed for tests and for the
/// fuzz target.
pub fn unpack_tar<R: Read>(
    input: R,
    dir: BorrowedFd<'_>,
    limits: &Limits,
    group: Option<Gid>,
) -> Result<Report, UnpackError> {
    unpack_tar_with(input, dir, limits, group, &LinkPolicy::default(), &mut Donors::none())
}

fn unpack_tar_with<R: Read>(
    input: R,
    dir: BorrowedFd<'_>,
    limits: &Limits,
    group: Option<Gid>,
    links: &LinkPolicy,
    donors: &mut Donors,
) -> Result<Report, UnpackError> {
    let mut blocks = Blocks::new(input);
    // The writing threads end with the unpacker (written out, or dropped early on a refusal) and are joined by
    // the scope, before the caller can remove the staging directory.
    std::thread::scope(|s| {
        let mut unpacker = Unpacker {
            tree: Tree::new(dir),
            limits,
            group,
            links,
            donors,
            writers: Writers::start(s),
            seen: PathMap::new(),
            symlinks: Vec::new(),
            report: Report::default(),
        };
        if let Some(marker) = unpacker.run(&mut blocks)? {
            trailer(&mut blocks, marker, limits)?;
        }
        unpacker.finish()
    })
}

/// A short read, as a refusal at `at`: the stream ended (truncated) or failed.
fn short(here: Here<'_>, e: Short, what: &str, limits: &Limits) -> UnpackError {
    match e {
        Short::End { got } => {
            here.refuse(Refusal::Truncated { what: format!("it ends inside {what} (after {got} bytes of it)") })
        }
        Short::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            here.io(Refusal::Truncated { what: format!("it ends inside {what} ({e})") }, e)
        }
        Short::Io(e) => zstd_error(e, limits),
    }
}

/// Tar writes in records of 20 blocks, and pads the last record.
const RECORD: u64 = 10240;

/// What follows the end-of-archive marker (at `marker`). GNU tar stops reading there; the unpacker reads on (up to
/// 1 MiB, which also lets zstd verify its checksum) and ignores what tools leave after the marker: zero padding,
/// junk or stale buffer contents in the rest of the last record (AIX tar, Ant), a lone zero block then garbage, a
/// trailer that is not a tar header. What it refuses is a second archive: a valid tar header after the marker,
/// unless the stream is made of whole records and that header lies in the padding of the marker's own record
/// (where writers that do not clear their buffer leave copies of earlier headers).
fn trailer<R: Read>(blocks: &mut Blocks<R>, marker: u64, limits: &Limits) -> Result<(), UnpackError> {
    let mut headers = Vec::new();
    loop {
        let at = blocks.offset;
        match blocks.block() {
            Ok(None) | Err(Short::End { .. }) => break,
            Err(e) => return Err(short(Here::at(at), e, "the data after the end of the archive", limits)),
            Ok(Some(b)) => {
                let h = Header { block: b, offset: at };
                if b.iter().any(|x| *x != 0) && h.checksum_ok() && !h.name().is_empty() {
                    headers.push(at);
                }
            }
        }
        if blocks.offset - marker > 1 << 20 {
            return Err(Here::at(at).refuse(Refusal::TrailingData));
        }
    }
    let whole_records = blocks.offset.is_multiple_of(RECORD);
    let padding_end = if whole_records { (marker / RECORD + 1) * RECORD } else { marker };
    match headers.into_iter().find(|at| *at >= padding_end) {
        Some(at) => Err(Here::at(at).refuse(Refusal::SecondArchive { at })),
        None => Ok(()),
    }
}

/// Extension records that describe the next real entry. A later record of a kind replaces an earlier one (a second
/// PAX header replaces the first one whole; a second long name the first), as GNU tar reads them.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_link: Option<Vec<u8>>,
    pax_size: Option<u64>,
    /// A delta's reference to a file of its base release: (size, sha256).
    shared: Option<(u64, [u8; 32])>,
    /// Where the first of them was, while any is pending.
    offset: Option<u64>,
}

struct Unpacker<'a> {
    tree: Tree<'a>,
    limits: &'a Limits,
    group: Option<Gid>,
    links: &'a LinkPolicy,
    donors: &'a mut Donors,
    /// Small files are written by these threads.
    writers: Writers,
    seen: PathMap,
    symlinks: Vec<(Comps, Vec<u8>, u64)>,
    report: Report,
}

/// What an entry is, from its type flag.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    File,
    Dir,
    HardLink,
    Symlink,
}

impl Unpacker<'_> {
    /// Unpacks every entry; returns the offset of the end-of-archive marker (`None`: the stream ended without one).
    fn run<R: Read>(&mut self, blocks: &mut Blocks<R>) -> Result<Option<u64>, UnpackError> {
        let mut pending = Pending::default();
        let mut real_entries = 0u64;
        let mut ended = false;
        let mut marker = None;
        loop {
            let at = blocks.offset;
            let block = match blocks.block() {
                Ok(Some(b)) => b,
                // The stream ends where an entry ends, without the end-of-archive marker: GNU tar extracts such
                // archives, and so does the unpacker (zstd's frame, and the artifact's sha256, say the stream is
                // whole). Extension records with no entry after them are a cut stream.
                Ok(None) => match pending.offset {
                    Some(o) => {
                        let what = format!("it ends after the extension records at byte {o}, before their entry");
                        return Err(Here::at(at).refuse(Refusal::Truncated { what }));
                    }
                    None => {
                        ended = true;
                        break;
                    }
                },
                Err(e) => return Err(short(Here::at(at), e, "a header", self.limits)),
            };
            if block.iter().all(|b| *b == 0) {
                if let Some(o) = pending.offset {
                    let what = format!("the end-of-archive marker follows the extension records at byte {o}");
                    return Err(Here::at(at).refuse(Refusal::Truncated { what }));
                }
                marker = Some(at);
                break;
            }
            self.report.entries += 1;
            crate::base::progress::beat();
            crate::base::progress::step_progress(|| {
                format!(
                    "unpacking: {} entries, {}",
                    self.report.entries,
                    bytesize::ByteSize(self.report.bytes).display().iec()
                )
            });
            // A shutdown is a flag; a cancel request is a file, looked for every 256 entries.
            if crate::base::progress::shutting_down()
                || (self.report.entries.is_multiple_of(256) && crate::base::progress::interrupted().is_some())
            {
                return Err(Here::at(at).refuse(Refusal::Stopped));
            }
            if self.report.entries > self.limits.max_entries {
                return Err(Here::at(at).refuse(Refusal::TooManyEntries { max: self.limits.max_entries }));
            }
            let h = Header { block, offset: at };
            if !h.checksum_ok() {
                let what = "the header checksum does not match (this is not a tar header)".to_owned();
                return Err(Here::at(at).refuse(Refusal::Corrupt { what }));
            }
            match h.typeflag() {
                t @ (b'L' | b'K') => {
                    let what = if t == b'L' { "long name" } else { "long link" };
                    let mut data = self.record(blocks, &h, what)?;
                    // The name ends at its first NUL (GNU tar and Go read it as a C string).
                    if let Some(n) = data.iter().position(|b| *b == 0) {
                        data.truncate(n);
                    }
                    pending.offset.get_or_insert(at);
                    if t == b'L' {
                        pending.long_name = Some(data);
                    } else {
                        pending.long_link = Some(data);
                    }
                }
                // `X` is the Solaris spelling of a PAX extended header.
                b'x' | b'X' => {
                    let data = self.record(blocks, &h, "PAX")?;
                    pending.offset.get_or_insert(at);
                    // A later extended header replaces an earlier one for the same entry (GNU tar, Go).
                    (pending.pax_path, pending.pax_link, pending.pax_size, pending.shared) = (None, None, None, None);
                    parse_pax(&data, &mut pending, at)?;
                }
                b'g' => {
                    // Global headers (git archive writes one with the commit id) may only carry harmless keys.
                    let data = self.record(blocks, &h, "PAX global")?;
                    parse_global_pax(&data, at)?;
                }
                // A GNU volume label names the archive: GNU tar extracts nothing for it.
                b'V' => {
                    let size = h.size().map_err(|field| Here::at(at).refuse(Refusal::BadField { field }))?;
                    blocks.skip(size).map_err(|e| self.data_error(Here::at(at), e))?;
                }
                _ => {
                    real_entries += 1;
                    let p = std::mem::take(&mut pending);
                    self.entry(blocks, &h, p)?;
                    crate::base::crashpoint::hit(crate::base::crashpoint::Point::MidUnpack);
                }
            }
        }
        if real_entries == 0 {
            return Err(Here::at(0).refuse(Refusal::Empty));
        }
        debug_assert!(ended || marker.is_some());
        Ok(marker)
    }

    /// Reads an extension record's data (a PAX header, a GNU long name), refusing one over `max_record`.
    fn record<R: Read>(&self, blocks: &mut Blocks<R>, h: &Header, what: &'static str) -> Result<Vec<u8>, UnpackError> {
        let here = Here::at(h.offset);
        let size = h.size().map_err(|field| here.refuse(Refusal::BadField { field }))?;
        if size > self.limits.max_record {
            return Err(here.refuse(Refusal::RecordTooLarge { what, size, max: self.limits.max_record }));
        }
        let mut data = Vec::with_capacity(size as usize);
        blocks
            .data(size, &mut |chunk| {
                data.extend_from_slice(chunk);
                Ok(())
            })
            .map_err(|e| self.data_error(here, e))?;
        Ok(data)
    }

    fn data_error(&self, here: Here<'_>, e: DataError) -> UnpackError {
        match e {
            DataError::Short(s) => short(here, s, "the entry's data", self.limits),
            DataError::Sink(e) => here.write(e),
        }
    }

    fn entry<R: Read>(&mut self, blocks: &mut Blocks<R>, h: &Header, pending: Pending) -> Result<(), UnpackError> {
        let raw_path: Vec<u8> = pending.pax_path.or(pending.long_name).unwrap_or_else(|| h.name());
        let raw_link: Vec<u8> = pending.pax_link.or(pending.long_link).unwrap_or_else(|| h.linkname());
        let here = Here { path: Some(raw_path.as_slice()), offset: Some(h.offset) };
        let bad = |field| here.refuse(Refusal::BadField { field });
        let t = h.typeflag();
        // Old-style archives mark directories with a trailing slash on a regular entry.
        let kind = match t {
            b'0' | 0 if raw_path.ends_with(b"/") => Kind::Dir,
            b'0' | 0 | b'7' => Kind::File,
            b'5' | b'D' => Kind::Dir,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'3' | b'4' => return Err(here.refuse(Refusal::Device)),
            b'6' => return Err(here.refuse(Refusal::Fifo)),
            b'S' => return Err(here.refuse(Refusal::Sparse)),
            other => return Err(here.refuse(Refusal::UnknownType(other as char))),
        };
        // The size field counts data only for types that have data (POSIX; GNU tar): a directory's or a link's
        // size is ignored, and a PAX `size` overrides the header's. A GNU dumpdir (`D`) carries a listing, skipped.
        let size = match pending.pax_size {
            Some(s) => s,
            None => h.size().map_err(bad)?,
        };
        let data = match (kind, t) {
            (Kind::File, _) => size,
            (Kind::Dir, b'D') => size,
            _ => 0,
        };
        let mode = h.mode().map_err(bad)?;
        // Outside a delta the key means nothing (GNU tar ignores it too): the entry is the file it carries.
        let shared = pending.shared.filter(|_| kind == Kind::File && self.donors.is_delta());
        if shared.is_some() && data != 0 {
            return Err(here.refuse(Refusal::DeltaRefWithData));
        }
        // An empty name is read as `.` (GNU tar): for a directory, the release root.
        let comps = if raw_path.is_empty() && kind == Kind::Dir {
            Vec::new()
        } else {
            normalize(&raw_path, self.limits).map_err(|r| here.refuse(r))?
        };
        if comps.is_empty() {
            // "./" (or an empty name, which GNU tar reads as ".") names the release root itself: nothing to create.
            return if kind == Kind::Dir {
                blocks.skip(data).map_err(|e| self.data_error(here, e))
            } else {
                Err(here.refuse(Refusal::EmptyPath))
            };
        }
        self.check_parents(&comps).map_err(|r| here.refuse(r))?;
        let replaces = match (self.seen.get(&comps), kind) {
            (None, _) => false,
            (Some(Node::Dir { .. }), Kind::Dir) => false,
            // The same regular file again (what `tar -r` and `tar -u` append): the last one wins, as in GNU tar.
            (Some(Node::File), Kind::File) => true,
            (Some(Node::Dir { .. }), _) | (Some(_), Kind::Dir) => return Err(here.refuse(Refusal::TypeChange)),
            (Some(_), _) => return Err(here.refuse(Refusal::Duplicate)),
        };
        let (parent, name) = comps.split_at(comps.len() - 1);
        let name = &name[0];
        match kind {
            Kind::Dir => {
                let existed = self.seen.insert(&comps, Node::Dir { mode: Some(mode) }).is_some();
                if !existed {
                    self.report.dirs += 1;
                    self.tree.dir(&comps).map_err(|e| here.write(e))?;
                }
                blocks.skip(data).map_err(|e| self.data_error(here, e))?;
            }
            Kind::Symlink => {
                links::check_target(&raw_link, self.limits).map_err(|r| here.refuse(r))?;
                self.seen.insert(&comps, Node::Symlink { target: raw_link.clone() });
                self.symlinks.push((comps, raw_link, h.offset));
                self.report.symlinks += 1;
            }
            Kind::HardLink => {
                let shown = display_bytes(&raw_link);
                if raw_link.is_empty() {
                    return Err(here.refuse(Refusal::HardlinkEmpty));
                }
                let tcomps = match normalize(&raw_link, self.limits) {
                    Ok(c) if !c.is_empty() => c,
                    Ok(_) => return Err(here.refuse(Refusal::HardlinkNotFile { target: shown })),
                    Err(_) => return Err(here.refuse(Refusal::HardlinkOutside { target: shown })),
                };
                match self.seen.get(&tcomps) {
                    None => return Err(here.refuse(Refusal::HardlinkUnseen { target: shown })),
                    Some(Node::File) => {}
                    Some(_) => return Err(here.refuse(Refusal::HardlinkNotFile { target: shown })),
                }
                // Its target may still be in flight.
                self.writers.drain(&mut self.report.hashes)?;
                let (tparent, tname) = tcomps.split_at(tcomps.len() - 1);
                let tdir = self.tree.open_dir(tparent).map_err(|e| here.write(e))?;
                let ldir = self.tree.dir(parent).map_err(|e| here.write(e))?;
                // No AT_SYMLINK_FOLLOW: the link is made to the entry itself, which we know is our regular file.
                rustix::fs::linkat(&tdir, tname[0].as_slice(), ldir, name.as_slice(), AtFlags::empty())
                    .map_err(|e| here.write(e.into()))?;
                self.seen.insert(&comps, Node::File);
                self.report.hardlinks += 1;
            }
            Kind::File => {
                if self.report.bytes.saturating_add(size) > self.limits.max_unpacked {
                    return Err(here.refuse(Refusal::TooLarge { max: self.limits.max_unpacked }));
                }
                match shared {
                    Some((size, hash)) => {
                        if self.report.bytes.saturating_add(size) > self.limits.max_unpacked {
                            return Err(here.refuse(Refusal::TooLarge { max: self.limits.max_unpacked }));
                        }
                        self.shared_file(here, parent, name, size, &hash, mode, replaces)?;
                        self.report.bytes += size;
                    }
                    None => self.file(blocks, here, parent, name, size, mode, replaces)?,
                }
                self.seen.insert(&comps, Node::File);
                if !replaces {
                    self.report.files += 1;
                }
                self.report.bytes += size;
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
        self.writers.drain(&mut self.report.hashes)?;
        let symlinks = std::mem::take(&mut self.symlinks);
        for (comps, target, offset) in &symlinks {
            let path = comps.join(&b'/');
            let here = Here { path: Some(&path), offset: Some(*offset) };
            links::check(&self.seen, comps, target, self.links).map_err(|r| here.refuse(r))?;
        }
        for (comps, target, offset) in &symlinks {
            let path = comps.join(&b'/');
            let here = Here { path: Some(&path), offset: Some(*offset) };
            let (parent, name) = comps.split_at(comps.len() - 1);
            let dir = self.tree.dir(parent).map_err(|e| here.write(e))?;
            rustix::fs::symlinkat(target.as_slice(), dir, name[0].as_slice()).map_err(|e| here.write(e.into()))?;
        }
        // The release root itself (a staging directory made private while it was filled) is readable like any
        // other directory of the release, so a service running as another user can read its code.
        let root = Here { path: None, offset: None };
        if let Some(g) = self.group {
            rustix::fs::fchown(self.tree.root, None, Some(g)).map_err(|e| root.write(e.into()))?;
        }
        rustix::fs::fchmod(self.tree.root, Mode::from_raw_mode(0o755)).map_err(|e| root.write(e.into()))?;
        let mut dirs = self.seen.dirs();
        dirs.sort();
        for (comps, mode) in &dirs {
            let path = comps.join(&b'/');
            let here = Here { path: Some(&path), offset: None };
            let fd = self.tree.open_dir(comps).map_err(|e| here.write(e))?;
            if let Some(g) = self.group {
                rustix::fs::fchown(&fd, None, Some(g)).map_err(|e| here.write(e.into()))?;
            }
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(dir_mode(mode.unwrap_or(0o755), self.group.is_some())))
                .map_err(|e| here.write(e.into()))?;
        }
        Ok(self.report)
    }
}

#[cfg(test)]
mod tests {
    use super::tree::file_mode;
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
