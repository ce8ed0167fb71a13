//! One writer per app: an exclusive `flock` on `STATE_DIR/APP/lock`. The file itself stays (it is never "stale":
//! the lock dies with the process that holds it, even after `kill -9`). It is root's alone (0600, never opened
//! through a link): `flock` works on a read-only descriptor, so a file anyone can open is a lock anyone can hold.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustix::fs::FlockOperation;

use crate::error::Error;

/// Held for as long as the value lives.
#[derive(Debug)]
pub struct AppLock {
    _file: File,
}

impl AppLock {
    /// Takes the lock, waiting up to `wait`; then fails with [`Error::Busy`].
    pub fn acquire(app: &str, path: &Path, wait: Duration) -> anyhow::Result<AppLock> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        crate::trust::share(&file, None, false).with_context(|| format!("setting the mode of {}", path.display()))?;
        let start = Instant::now();
        loop {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(AppLock { _file: file }),
                Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {}
                Err(e) => return Err(std::io::Error::from(e)).with_context(|| format!("locking {}", path.display())),
            }
            if start.elapsed() >= wait {
                return Err(
                    Error::Busy { app: app.to_owned(), path: path.to_owned(), waited_secs: wait.as_secs() }.into()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
