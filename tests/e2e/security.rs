//! Attacks on a host running Switchback, each made for real and each expected to fail: by an unprivileged local
//! user the test creates (the app's own user, an inbox or bucket writer without the signing key, anyone with a
//! shell), and by hostile network peers. Every test drives the real binary on its own temporary host.
//! This file holds the users the tests create and what the tests share; `security/releases.rs` the app user
//! against its releases, hooks and checks; `security/sources.rs` inbox and bucket writers and a bucket that
//! redirects; `security/users.rs` any local user against root's lock, state, configuration and history.

mod releases;
mod sources;
mod users;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::harness::{Host, Out, BIN};

const LIVE: Duration = Duration::from_secs(30);

/// useradd, userdel and groupadd lock /etc/passwd and /etc/group: one at a time in this process.
static ACCOUNTS: Mutex<()> = Mutex::new(());

/// Runs an account command, retrying while another process holds the account files' lock.
fn account(program: &str, args: &[&str]) -> Result<(), String> {
    let _one = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let mut last = String::new();
    for _ in 0..20 {
        let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("{program} {args:?}: {last}"))
}

/// A real unprivileged user with its own group (and, optionally, membership in one more new group), made for one
/// test and removed with its home on drop, whatever the test's outcome. Other modules (`reuse`) use it too.
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    extra_group: Option<String>,
}

impl User {
    pub(crate) fn new() -> User {
        User::create(None)
    }

    /// A user who is also in a new group of its own (`extra_group`), as for `[agent] read_group`.
    fn in_new_group() -> User {
        User::create(Some(format!("sbg{:08x}", fastrand::u32(..))))
    }

    fn create(extra_group: Option<String>) -> User {
        let mut u = User { name: format!("sbt{:08x}", fastrand::u32(..)), uid: 0, gid: 0, extra_group };
        if let Some(g) = &u.extra_group {
            account("groupadd", &[g]).unwrap();
        }
        let mut args = vec!["--create-home", "--shell", "/bin/sh", "--user-group"];
        if let Some(g) = &u.extra_group {
            args.extend(["--groups", g]);
        }
        args.push(&u.name);
        account("useradd", &args).unwrap();
        let pw = nix::unistd::User::from_name(&u.name).unwrap().expect("the new user exists");
        (u.uid, u.gid) = (pw.uid.as_raw(), pw.gid.as_raw());
        assert_ne!(u.uid, 0);
        u
    }

    fn home(&self) -> PathBuf {
        PathBuf::from(format!("/home/{}", self.name))
    }

    /// `program` run as this user and its groups, with a minimal environment of its own.
    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.name)).arg(format!("--regid={}", self.gid)).args(["--init-groups", "--"]);
        c.arg(program).env_clear().env("PATH", "/usr/local/bin:/usr/bin:/bin").env("HOME", self.home());
        c.env("USER", &self.name).current_dir("/").stdin(Stdio::null());
        c
    }

    fn sh(&self, script: &str) -> Out {
        run(self.cmd("sh").arg("-c").arg(script))
    }

    /// `switchback --config CONFIG ARGS...` as this user.
    fn switchback(&self, host: &Host, args: &[&str]) -> Out {
        run(self.cmd(BIN).arg("--config").arg(&host.config).args(args))
    }

    /// Asserts that `script`, run as this user, fails on a permission error.
    #[track_caller]
    fn denied(&self, script: &str) {
        let out = self.sh(script);
        let text = out.stderr.to_lowercase();
        assert!(
            out.code != 0 && (text.contains("permission denied") || text.contains("operation not permitted")),
            "as {}: `{script}` was not refused: {out:#?}",
            self.name
        );
    }
}

impl Drop for User {
    fn drop(&mut self) {
        if let Err(e) = account("userdel", &["--force", "--remove", &self.name]) {
            eprintln!("cannot remove test user {}: {e}", self.name);
        }
        if let Some(g) = &self.extra_group {
            let _ = account("groupdel", &[g]);
        }
    }
}

/// Lets other users reach the host's directory (tempfile makes it 0700); the config file stays root's, 0644.
fn open_up(h: &Host) {
    chmod(h.path(), 0o755);
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// A sticky, world-writable directory in the host where hooks (as any user) leave their records.
fn marks(h: &Host) -> PathBuf {
    let d = h.path().join("marks");
    std::fs::create_dir_all(&d).unwrap();
    chmod(&d, 0o1777);
    d
}

/// Every entry under `dir` (links not followed), with its metadata.
fn tree(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = vec![(dir.to_owned(), std::fs::symlink_metadata(dir).unwrap())];
    let mut i = 0;
    while i < out.len() {
        if out[i].1.is_dir() {
            for e in std::fs::read_dir(&out[i].0).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                out.push((p, m));
            }
        }
        i += 1;
    }
    out
}

fn run(c: &mut Command) -> Out {
    c.output().unwrap().into()
}

fn status(h: &Host) -> serde_json::Value {
    h.run(&["status", "web", "--json"]).expect(0).json()["apps"][0].clone()
}
