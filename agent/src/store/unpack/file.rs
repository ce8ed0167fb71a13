//! A regular file of the archive: written into staging (created with `O_EXCL`, never through a link), hashed as
//! it is written, given its owner and sanitized mode; or, when a release on disk holds the same content with the
//! same mode and owner, shared with it (see [`crate::store::reuse`]) instead of written. A small file is read
//! whole first, so that a shared one costs no new inode, and one to write is handed to the writing threads
//! ([`super::writers`]); a large one is written here as it streams, and replaced by the shared file afterwards
//! when one matches (the disk is spared, the write is not).

use std::io;

use rustix::fs::{AtFlags, Mode, OFlags};
use sha2::Digest;

use super::error::Here;
use super::format::{Blocks, DataError};
use super::tree::file_mode;
use super::writers::Job;
use super::{short, Refusal, UnpackError, Unpacker};
use crate::base::fsutil::open_beneath;

/// Files up to this size are read whole before anything is created for them.
const READ_WHOLE: u64 = 1 << 20;

impl Unpacker<'_> {
    /// Unpacks the file `name` in the staging directory `parent` from the next `size` bytes of data.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn file<R: io::Read>(
        &mut self,
        blocks: &mut Blocks<R>,
        here: Here<'_>,
        parent: &[Vec<u8>],
        name: &[u8],
        size: u64,
        mode: u32,
        replaces: bool,
    ) -> Result<(), UnpackError> {
        let limits = self.limits;
        let group = self.group;
        let final_mode = file_mode(mode, group.is_some());
        let read_error = |e: DataError| match e {
            DataError::Short(s) => short(here, s, "the file's data", limits),
            DataError::Sink(e) => here.write(e),
        };
        if replaces {
            // The earlier file of that name may still be in flight.
            self.writers.drain(&mut self.report.hashes)?;
            let dir = self.tree.dir(parent).map_err(|e| here.write(e))?;
            rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| here.write(e.into()))?;
        }
        if size <= READ_WHOLE {
            let mut buf = self.writers.buffer();
            blocks
                .data(size, &mut |chunk| {
                    buf.extend_from_slice(chunk);
                    Ok(())
                })
                .map_err(read_error)?;
            // With releases to share with, the content is looked up first (a shared file costs a link and no new
            // inode); otherwise the writer hashes it.
            let mut hash = None;
            if !self.donors.is_empty() {
                let h: [u8; 32] = sha2::Sha256::digest(&buf).into();
                let dir = self.tree.dir(parent).map_err(|e| here.write(e))?;
                if let Some((_, ino)) = self.donors.share(size, &h, final_mode, dir, name).map_err(|e| here.write(e))? {
                    self.report.reused += 1;
                    self.report.reused_bytes += size;
                    self.report.hashes.insert(ino, h);
                    return Ok(());
                }
                hash = Some(h);
            }
            let dir = self.tree.dir_handle(parent).map_err(|e| here.write(e))?;
            let job = Job {
                dir,
                name: name.to_vec(),
                data: buf,
                hash,
                mode: final_mode,
                group,
                path: here.path.unwrap_or_default().to_vec(),
                offset: here.offset.unwrap_or_default(),
            };
            return self.writers.submit(job, &mut self.report.hashes);
        }
        let dir = self.tree.dir(parent).map_err(|e| here.write(e))?;
        let file = create(dir, name, here)?;
        let mut hasher = sha2::Sha256::new();
        blocks
            .data(size, &mut |chunk| {
                io::Write::write_all(&mut &file, chunk)?;
                hasher.update(chunk);
                Ok(())
            })
            .map_err(read_error)?;
        let hash: [u8; 32] = hasher.finalize().into();
        let mut ino = finish(&file, final_mode, group, here)?;
        drop(file);
        if !self.donors.is_empty() {
            // Written already; shared instead when a release on disk has it, so that it costs no disk: the shared
            // file is made beside it, then renamed over it.
            let dir = self.tree.dir(parent).map_err(|e| here.write(e))?;
            // A short name, whatever the length of the file's own (an entry of the archive by that name is never
            // replaced: sharing into a taken name fails, and the file stays as written).
            let beside = format!(".switchback-shared-{}", self.report.entries).into_bytes();
            if let Some((_, shared)) =
                self.donors.share(size, &hash, final_mode, dir, &beside).map_err(|e| here.write(e))?
            {
                rustix::fs::renameat(dir, beside.as_slice(), dir, name).map_err(|e| here.write(e.into()))?;
                self.report.reused += 1;
                self.report.reused_bytes += size;
                ino = shared;
            }
        }
        self.report.hashes.insert(ino, hash);
        Ok(())
    }
}

impl Unpacker<'_> {
    /// A delta's file that its base release holds: shared with it, or the delta is refused (its base is not what
    /// the delta was made against).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn shared_file(
        &mut self,
        here: Here<'_>,
        parent: &[Vec<u8>],
        name: &[u8],
        size: u64,
        hash: &[u8; 32],
        mode: u32,
        replaces: bool,
    ) -> Result<(), UnpackError> {
        if replaces {
            self.writers.drain(&mut self.report.hashes)?;
        }
        let dir = self.tree.dir(parent).map_err(|e| here.write(e))?;
        if replaces {
            rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| here.write(e.into()))?;
        }
        let final_mode = file_mode(mode, self.group.is_some());
        match self.donors.share(size, hash, final_mode, dir, name).map_err(|e| here.write(e))? {
            Some((_, ino)) => {
                self.report.reused += 1;
                self.report.reused_bytes += size;
                self.report.hashes.insert(ino, *hash);
                Ok(())
            }
            None => Err(here.refuse(Refusal::DeltaBaseMissing { size, sha256: hex::encode(hash) })),
        }
    }
}

pub(super) fn create(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &[u8],
    here: Here<'_>,
) -> Result<std::fs::File, UnpackError> {
    let fd = open_beneath(dir, name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, Mode::from_raw_mode(0o600))
        .map_err(|e| here.write(e))?;
    Ok(std::fs::File::from(fd))
}

/// Gives a written file its group and final mode; returns its inode.
pub(super) fn finish(
    file: &std::fs::File,
    mode: u32,
    group: Option<rustix::fs::Gid>,
    here: Here<'_>,
) -> Result<u64, UnpackError> {
    if let Some(g) = group {
        rustix::fs::fchown(file, None, Some(g)).map_err(|e| here.write(e.into()))?;
    }
    rustix::fs::fchmod(file, Mode::from_raw_mode(mode)).map_err(|e| here.write(e.into()))?;
    Ok(rustix::fs::fstat(file).map_err(|e| here.write(e.into()))?.st_ino)
}
