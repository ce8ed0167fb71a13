//! Durable small writes: the state file is replaced atomically (temp, fsync, rename, fsync directory), history is
//! appended and fsynced. A reader never sees a torn file: it sees the old bytes or the new ones.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use anyhow::Context;

/// The prefix of [`write_atomic`]'s temporary files.
const TMP_PREFIX: &str = ".tmp-";

/// Replaces `path` with `bytes` atomically and durably. The file is root's alone (0600).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic_shared(path, bytes, None)
}

/// Like [`write_atomic`], for a file the state directory's read group may read (0640 with that group).
pub fn write_atomic_shared(path: &Path, bytes: &[u8], group: Option<rustix::fs::Gid>) -> anyhow::Result<()> {
    let dir = path.parent().context("a file path has a parent")?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    crate::base::trust::share(tmp.as_file(), group, false)
        .with_context(|| format!("setting the mode of {}", tmp.path().display()))?;
    tmp.write_all(bytes).with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.as_file().sync_all().with_context(|| format!("syncing {}", tmp.path().display()))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("renaming into {}", path.display()))?;
    fsync_dir(dir)
}

/// Removes the temporary files of [`write_atomic`] in `dir` that were last modified more than `age` ago: a
/// process killed between creating one and renaming it leaves it behind. A write takes milliseconds, so an old
/// one belongs to nobody; a younger one may be another process's write in progress (the daemon writes its status
/// file without the app's lock) and is left alone. Returns the names removed.
pub fn remove_stale_temps(dir: &Path, age: std::time::Duration) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return Ok(removed) };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = || entry.metadata().ok()?.modified().ok()?.elapsed().ok().map(|e| e > age);
        if name.starts_with(TMP_PREFIX) && entry.file_type().is_ok_and(|t| t.is_file()) && stale() == Some(true) {
            std::fs::remove_file(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Makes a directory's entries (renames, creations, removals) durable.
pub fn fsync_dir(dir: &Path) -> anyhow::Result<()> {
    let f = File::open(dir).with_context(|| format!("opening directory {}", dir.display()))?;
    f.sync_all().with_context(|| format!("syncing directory {}", dir.display()))
}

/// Appends one line and syncs it; the line is written with a single `write` on an `O_APPEND` descriptor.
///
/// A torn last line (power loss mid-append, or a write cut short by a full disk) must not swallow the next one:
/// a failed write is cut back off, and a file that still does not end with a newline gets one first, so the torn
/// fragment stays a line of its own (skipped when reading) instead of gluing onto this event and losing it too.
/// The file is root's, readable by `group` when one is given.
pub fn append_line(path: &Path, line: &[u8], group: Option<rustix::fs::Gid>) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    crate::base::trust::share(&f, group, false).with_context(|| format!("setting the mode of {}", path.display()))?;
    let len = f.metadata().with_context(|| format!("inspecting {}", path.display()))?.len();
    let mut buf = Vec::with_capacity(line.len() + 2);
    let mut last = [0u8; 1];
    if len > 0 && f.read_exact_at(&mut last, len - 1).is_ok() && last[0] != b'\n' {
        buf.push(b'\n');
    }
    buf.extend_from_slice(line);
    buf.push(b'\n');
    if let Err(e) = f.write_all(&buf) {
        let _ = f.set_len(len);
        return Err(e).with_context(|| format!("appending to {}", path.display()));
    }
    f.sync_data().with_context(|| format!("syncing {}", path.display()))
}

/// The current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Creates a new file (never replacing one, never through a link) with `mode`, writes `bytes` and syncs it.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    // create_new fails on any existing name, a dangling link included; the umask may have narrowed `mode`.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Largest small file (a manifest, a signature) [`read_small`] reads.
pub const SMALL_MAX: u64 = 64 << 10;

/// Reads a small file that someone else may have put there (an inbox drop): opened without following a link and
/// without blocking, a regular file only, at most [`SMALL_MAX`] bytes. `Ok(None)`: it does not exist; `Err`: why
/// it can never be read as a small file.
pub fn read_small(path: &Path) -> Result<Option<Vec<u8>>, String> {
    use rustix::fs::{FileType, Mode, OFlags};
    use std::io::Read;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) if e == rustix::io::Errno::NOENT => return Ok(None),
        Err(e) if e == rustix::io::Errno::LOOP => return Err("it is a symlink, and links are never followed".into()),
        Err(e) => return Err(format!("cannot open it: {e}")),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| format!("cannot inspect it: {e}"))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        return Err(format!("it is a {kind:?}, not a regular file").to_lowercase());
    }
    let mut bytes = Vec::new();
    File::from(fd).take(SMALL_MAX + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > SMALL_MAX {
        return Err(format!("it is larger than {SMALL_MAX} bytes"));
    }
    Ok(Some(bytes))
}

/// 0 = not yet known, 1 = openat2 works, 2 = the kernel lacks it.
static OPENAT2: AtomicU8 = AtomicU8::new(0);

/// Opens one path component below `dir`: never following a link, and with `openat2(RESOLVE_BENEATH)` where the
/// kernel has it, so that even a bug here could not resolve outside `dir`.
pub fn open_beneath(dir: BorrowedFd<'_>, name: &[u8], flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
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
