//! Small files written by a few threads. Creating a file costs the disk far more than the bytes it holds (an
//! inode and a directory entry: up to a millisecond on a busy virtual disk), and one thread waits for each in
//! turn; a few threads keep several creations in flight while the unpacker reads on.
//!
//! The unpacker decides everything (the path, the directory, the mode, whether the file is shared instead) and
//! hands over only independent work: create `name` in a directory of staging it holds open (`O_EXCL`, never
//! through a link), write the bytes, give the file its group and mode, and say its inode and sha256. It waits for
//! every file in flight ([`Writers::drain`]) before anything that depends on one: an entry that replaces a path, a
//! hard link, the final modes of directories, the end of the unpack. At most [`MAX_BYTES`] of file data and
//! [`MAX_JOBS`] files are in flight, whatever the archive. When the unpack stops early, the files not yet begun
//! are dropped, and the threads end (the caller's scope joins them) before the staging directory can be removed.

use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::Scope;

use rustix::fs::Gid;
use sha2::Digest;

use super::error::Here;
use super::file::{create, finish};
use super::UnpackError;
use crate::store::index::Hashes;

/// Threads writing files. Creation waits on the disk, not the CPU, so there are more than cores.
const THREADS: usize = 4;
/// File data in flight, at most (one file over it goes alone).
const MAX_BYTES: usize = 4 << 20;
/// Files in flight, at most.
const MAX_JOBS: usize = 64;
/// Spare buffers kept for reuse, and the largest one kept.
const SPARE: usize = 8;
const SPARE_CAPACITY: usize = 256 << 10;

/// A file to write: its whole data, where, and as what.
pub(super) struct Job {
    pub dir: Arc<OwnedFd>,
    pub name: Vec<u8>,
    pub data: Vec<u8>,
    /// Known already when the unpacker hashed it to look for a file to share.
    pub hash: Option<[u8; 32]>,
    pub mode: u32,
    pub group: Option<Gid>,
    /// The entry's path and header offset, for an error.
    pub path: Vec<u8>,
    pub offset: u64,
}

/// A written file (its inode and sha256), or why not; and its buffer, back for reuse.
struct Done {
    result: Result<(u64, [u8; 32]), UnpackError>,
    data: Vec<u8>,
    len: usize,
}

pub(super) struct Writers {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Done>,
    /// Set when the unpack stops early: jobs not yet begun are dropped.
    stop: Arc<AtomicBool>,
    in_flight: usize,
    bytes: usize,
    spare: Vec<Vec<u8>>,
}

impl Writers {
    /// Starts the threads on `scope`, which joins them once these writers are dropped.
    pub(super) fn start<'scope>(scope: &'scope Scope<'scope, '_>) -> Writers {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (report, done) = mpsc::channel::<Done>();
        let queue = Arc::new(Mutex::new(queue));
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..THREADS {
            let (queue, report, stop) = (queue.clone(), report.clone(), stop.clone());
            scope.spawn(move || loop {
                // One thread waits on the queue; the others wait for the lock.
                let next = queue.lock().map(|q| q.recv());
                let Ok(Ok(job)) = next else { return };
                let len = job.data.len();
                let result = if stop.load(Ordering::Relaxed) { Ok((0, [0; 32])) } else { write(&job) };
                if report.send(Done { result, data: job.data, len }).is_err() {
                    return;
                }
            });
        }
        Writers { jobs: Some(jobs), done, stop, in_flight: 0, bytes: 0, spare: Vec::new() }
    }

    /// An empty buffer for a file's data.
    pub(super) fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// Hands a file to the threads, once there is room for it; records what the finished ones say.
    pub(super) fn submit(&mut self, job: Job, hashes: &mut Hashes) -> Result<(), UnpackError> {
        while self.in_flight >= MAX_JOBS || (self.in_flight > 0 && self.bytes + job.data.len() > MAX_BYTES) {
            self.wait_one(hashes)?;
        }
        while let Ok(d) = self.done.try_recv() {
            self.finished(d, hashes)?;
        }
        let len = job.data.len();
        let jobs = self.jobs.as_ref().expect("the writers are live until dropped");
        // Only a thread that panicked can be gone (the scope then says so).
        if let Err(mpsc::SendError(job)) = jobs.send(job) {
            return Err(Here { path: Some(&job.path), offset: Some(job.offset) }.write(stopped()));
        }
        self.in_flight += 1;
        self.bytes += len;
        Ok(())
    }

    /// Waits until every file handed over is written; the first failure is the error.
    pub(super) fn drain(&mut self, hashes: &mut Hashes) -> Result<(), UnpackError> {
        while self.in_flight > 0 {
            self.wait_one(hashes)?;
        }
        Ok(())
    }

    fn wait_one(&mut self, hashes: &mut Hashes) -> Result<(), UnpackError> {
        let d = self.done.recv().map_err(|_| Here { path: None, offset: None }.write(stopped()))?;
        self.finished(d, hashes)
    }

    fn finished(&mut self, d: Done, hashes: &mut Hashes) -> Result<(), UnpackError> {
        self.in_flight -= 1;
        self.bytes -= d.len;
        let mut data = d.data;
        if self.spare.len() < SPARE && data.capacity() <= SPARE_CAPACITY {
            data.clear();
            self.spare.push(data);
        }
        let (ino, hash) = d.result?;
        hashes.insert(ino, hash);
        Ok(())
    }
}

impl Drop for Writers {
    /// Whatever is still queued is dropped unwritten (a finished unpack has drained them all); the threads end
    /// with the queue.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.jobs = None;
    }
}

fn stopped() -> io::Error {
    io::Error::other("the file writing threads stopped")
}

/// Writes one file: created beside nothing (`O_EXCL`, no link followed), its data, its group and mode.
fn write(job: &Job) -> Result<(u64, [u8; 32]), UnpackError> {
    let here = Here { path: Some(&job.path), offset: Some(job.offset) };
    let hash = job.hash.unwrap_or_else(|| sha2::Sha256::digest(&job.data).into());
    let file = create(job.dir.as_fd(), &job.name, here)?;
    (&file).write_all(&job.data).map_err(|e| here.write(e))?;
    let ino = finish(&file, job.mode, job.group, here)?;
    Ok((ino, hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::fsutil::open_beneath;
    use rustix::fs::{Mode, OFlags};

    fn dir(path: &std::path::Path) -> Arc<OwnedFd> {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        Arc::new(fd)
    }

    fn job(dir: &Arc<OwnedFd>, name: &str, data: Vec<u8>) -> Job {
        Job {
            dir: dir.clone(),
            name: name.as_bytes().to_vec(),
            data,
            hash: None,
            mode: 0o444,
            group: None,
            path: name.as_bytes().to_vec(),
            offset: 0,
        }
    }

    #[test]
    fn every_file_is_written_with_its_hash_and_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path());
        let mut hashes = Hashes::new();
        std::thread::scope(|s| {
            let mut w = Writers::start(s);
            for i in 0..500 {
                // Sizes up to 100 KiB: the byte limit holds some back while others are written.
                let data = vec![(i % 251) as u8; (i * 211) % (100 << 10)];
                w.submit(job(&d, &format!("f{i}"), data), &mut hashes).unwrap();
            }
            w.drain(&mut hashes).unwrap();
        });
        assert_eq!(hashes.len(), 500);
        for i in 0..500 {
            let p = tmp.path().join(format!("f{i}"));
            let data = std::fs::read(&p).unwrap();
            assert_eq!(data, vec![(i % 251) as u8; (i * 211) % (100 << 10)]);
            let st = rustix::fs::stat(&p).unwrap();
            assert_eq!(st.st_mode & 0o7777, 0o444);
            let want: [u8; 32] = sha2::Sha256::digest(&data).into();
            assert_eq!(hashes[&st.st_ino], want);
        }
    }

    #[test]
    fn a_failure_names_its_entry_and_nothing_is_written_through_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/nonexistent-target", tmp.path().join("taken")).unwrap();
        let d = dir(tmp.path());
        let mut hashes = Hashes::new();
        let err = std::thread::scope(|s| {
            let mut w = Writers::start(s);
            w.submit(job(&d, "fine", b"a".to_vec()), &mut hashes).unwrap();
            w.submit(job(&d, "taken", b"b".to_vec()), &mut hashes).unwrap();
            w.drain(&mut hashes).unwrap_err()
        });
        assert_eq!(err.entry.as_deref(), Some("taken"), "{err}");
        assert!(std::fs::symlink_metadata(tmp.path().join("taken")).unwrap().file_type().is_symlink());
        assert!(open_beneath(d.as_fd(), b"fine", OFlags::RDONLY, Mode::empty()).is_ok());
    }

    #[test]
    fn dropped_writers_write_nothing_more_and_their_threads_end() {
        let tmp = tempfile::tempdir().unwrap();
        let d = dir(tmp.path());
        let mut hashes = Hashes::new();
        std::thread::scope(|s| {
            let mut w = Writers::start(s);
            for i in 0..MAX_JOBS {
                w.submit(job(&d, &format!("f{i}"), vec![1; 10]), &mut hashes).unwrap();
            }
            drop(w);
        });
        // The scope ended: every thread is gone. Whatever was written is whole.
        for e in std::fs::read_dir(tmp.path()).unwrap() {
            assert_eq!(std::fs::read(e.unwrap().path()).unwrap(), vec![1; 10]);
        }
    }
}
