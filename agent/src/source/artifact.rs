//! An artifact about to be deployed, opened exactly once: never through a link, regular files only, without
//! blocking (a FIFO is refused at once, not waited on). It is hashed, its size checked and it is unpacked from
//! that one descriptor, so renaming another file over its path changes nothing. A file that someone other than
//! root could still write (an inbox drop belongs to whoever dropped it) is first copied, while hashing, into the
//! app's root-only `downloads/` directory, and everything after reads that private copy: what is unpacked is
//! byte for byte what was hashed.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use sha2::{Digest, Sha256};

use super::error::{Refusal, SourceError};

#[derive(Debug)]
pub struct Artifact {
    file: File,
    /// The path it was given as (for messages).
    pub shown: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// The private copy, removed when the artifact is dropped.
    _copy: Option<tempfile::TempPath>,
}

impl Artifact {
    /// Opens and hashes `path`. `private` is a directory only root can write (the copy goes there when needed);
    /// `max_size` caps what is read (a signed manifest's size).
    pub fn open(path: &Path, private: &Path, max_size: Option<u64>) -> Result<Artifact, SourceError> {
        let refuse = |refusal: Refusal| SourceError::Refused { artifact: path.to_owned(), refusal };
        let file = |action: &'static str| {
            move |e: std::io::Error| SourceError::File { action, path: path.to_owned(), source: e }
        };
        let fd = match rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) if e == rustix::io::Errno::LOOP => return Err(refuse(Refusal::Symlink)),
            Err(e) => return Err(file("opening")(e.into())),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| file("inspecting")(e.into()))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::RegularFile {
            return Err(refuse(Refusal::NotRegular { kind: format!("{kind:?}").to_lowercase() }));
        }
        let size = st.st_size as u64;
        if let Some(max) = max_size {
            if size > max {
                return Err(refuse(Refusal::TooLarge { size, max }));
            }
        }
        // Reads block again from here on (a regular file never did).
        rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(|e| file("opening")(e.into()))?;
        let mut source = File::from(fd);
        let me = rustix::process::geteuid().as_raw();
        let only_root_writes = st.st_uid == me && st.st_mode & 0o022 == 0;
        if only_root_writes {
            let (sha256, n) = hash(&mut source, max_size.map(|m| m.saturating_add(1))).map_err(file("reading"))?;
            source.seek(SeekFrom::Start(0)).map_err(file("reading"))?;
            return Ok(Artifact { file: source, shown: path.to_owned(), sha256, size: n, _copy: None });
        }
        crate::base::trust::private_dir(private, None).map_err(SourceError::PrivateDir)?;
        let tmp = tempfile::Builder::new().prefix(".artifact-").tempfile_in(private).map_err(|e| {
            SourceError::File { action: "creating a private copy in", path: private.to_owned(), source: e }
        })?;
        let (mut copy, tmp_path) = tmp.into_parts();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut n = 0u64;
        let cap = max_size.map_or(u64::MAX, |m| m.saturating_add(1));
        loop {
            let want = buf.len().min(cap.saturating_sub(n).max(1) as usize);
            let got = source.read(&mut buf[..want]).map_err(file("reading"))?;
            if got == 0 {
                break;
            }
            copy.write_all(&buf[..got]).map_err(|e| SourceError::Copy {
                from: path.to_owned(),
                to: tmp_path.to_path_buf(),
                source: e,
            })?;
            hasher.update(&buf[..got]);
            n += got as u64;
            if n >= cap {
                return Err(refuse(Refusal::Grew { max: cap - 1 }));
            }
            crate::base::progress::beat();
        }
        copy.seek(SeekFrom::Start(0)).map_err(|e| SourceError::File {
            action: "reading",
            path: tmp_path.to_path_buf(),
            source: e,
        })?;
        Ok(Artifact {
            file: copy,
            shown: path.to_owned(),
            sha256: hex::encode(hasher.finalize()),
            size: n,
            _copy: Some(tmp_path),
        })
    }

    /// The first bytes (for the zstd frame header).
    pub fn head(&self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        let got = self.file.read_at(&mut buf, 0).unwrap_or(0);
        buf.truncate(got);
        buf
    }

    /// The content from its start.
    pub fn reader(&mut self) -> Result<&File, SourceError> {
        self.file.seek(SeekFrom::Start(0)).map_err(|source| SourceError::File {
            action: "reading",
            path: self.shown.clone(),
            source,
        })?;
        Ok(&self.file)
    }
}

/// The sha256 (hex) and length of what `r` yields, reading at most `limit` bytes.
fn hash(r: &mut impl Read, limit: Option<u64>) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    let mut r = r.take(limit.unwrap_or(u64::MAX));
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), total));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        crate::base::progress::beat();
    }
}
