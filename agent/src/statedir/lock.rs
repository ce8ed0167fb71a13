//! One writer per app: an exclusive `flock` on `STATE_DIR/APP/lock`. The file itself stays (it is never "stale":
//! the lock dies with the process that holds it, even after `kill -9`). It is root's alone (0600, never opened
//! through a link): `flock` works on a read-only descriptor, so a file anyone can open is a lock anyone can hold.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustix::fs::FlockOperation;

use crate::error::Error;

/// The daemon's own lock, `STATE_DIR/daemon.lock`, holding its pid: one daemon per state directory. A second one
/// fails at once with [`Error::DaemonRunning`] naming the first.
pub fn daemon_lock(state_dir: &Path, group: Option<rustix::fs::Gid>) -> anyhow::Result<AppLock> {
    use std::io::{Read, Seek, Write};
    crate::base::trust::private_dir(state_dir, group)?;
    let path = state_dir.join("daemon.lock");
    let mut file = open_lock(&path)?;
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = if pid.trim().is_empty() { "unknown".to_owned() } else { pid.trim().to_owned() };
            return Err(Error::DaemonRunning { state_dir: state_dir.to_owned(), pid }.into());
        }
        Err(e) => return Err(std::io::Error::from(e)).with_context(|| format!("locking {}", path.display())),
    }
    file.set_len(0).and_then(|()| file.rewind()).with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{}", std::process::id()).with_context(|| format!("writing {}", path.display()))?;
    Ok(AppLock { _file: file })
}

/// Opens (creating) a lock file: 0600, never through a link.
fn open_lock(path: &Path) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    crate::base::trust::share(&file, None, false).with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(file)
}

/// Who holds an app's lock, as its holder writes it into the lock file right after taking it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Holder {
    pub pid: u32,
    /// Whether the holder is the daemon (one of its workers).
    pub daemon: bool,
    /// What it is doing: "deploy", "rollback", "accept a manifest", ...
    pub what: String,
    /// The version it is bringing the app to, when it says.
    #[serde(default)]
    pub version: Option<String>,
    pub since: String,
}

impl Holder {
    pub fn describe(&self) -> String {
        format!(
            "{} (pid {}) holds it for `{}{}` since {}",
            if self.daemon { "the daemon" } else { "another switchback command" },
            self.pid,
            self.what,
            self.version.as_ref().map(|v| format!(" {v}")).unwrap_or_default(),
            self.since
        )
    }
}

/// The holder named in a lock file, if it is still alive.
pub fn holder(path: &Path) -> Option<Holder> {
    let text = std::fs::read(path).ok()?;
    let h: Holder = serde_json::from_slice(&text).ok()?;
    let pid = rustix::process::Pid::from_raw(h.pid as i32)?;
    rustix::process::test_kill_process(pid).ok()?;
    Some(h)
}

/// Held for as long as the value lives.
#[derive(Debug)]
pub struct AppLock {
    _file: File,
}

impl AppLock {
    /// Takes the lock for `what`, waiting up to `wait`; then fails with [`Error::Busy`], naming the holder.
    pub fn acquire(
        app: &str,
        path: &Path,
        wait: Duration,
        what: &str,
        version: Option<&str>,
    ) -> anyhow::Result<AppLock> {
        use std::os::unix::fs::FileExt;
        let file = open_lock(path)?;
        let start = Instant::now();
        loop {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    let me = Holder {
                        pid: std::process::id(),
                        daemon: crate::base::progress::in_worker(),
                        what: what.to_owned(),
                        version: version.map(str::to_owned),
                        since: crate::base::fsutil::now_rfc3339(),
                    };
                    // Only for messages: a failure to say who holds it does not fail the command.
                    let text = serde_json::to_vec(&me).unwrap_or_default();
                    let _ = file.set_len(0).and_then(|()| file.write_all_at(&text, 0));
                    return Ok(AppLock { _file: file });
                }
                Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {}
                Err(e) => return Err(std::io::Error::from(e)).with_context(|| format!("locking {}", path.display())),
            }
            if start.elapsed() >= wait {
                let holder =
                    holder(path).map_or_else(|| "another switchback process holds it".to_owned(), |h| h.describe());
                return Err(Error::Busy {
                    app: app.to_owned(),
                    path: path.to_owned(),
                    waited_secs: wait.as_secs(),
                    holder,
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
