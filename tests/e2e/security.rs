//! Attacks on a host running Switchback, each made for real and each expected to fail: by an unprivileged local
//! user the test creates (the app's own user, an inbox or bucket writer without the signing key, anyone with a
//! shell), and by hostile network peers. Every test drives the real binary on its own temporary host.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bucket::{
    accepted_sequence, keygen, publish, release_dir, trust_new_key, wait_for, wait_for_clock_past, Daemon,
};
use crate::harness::{Host, Out, Release, BIN};

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
/// test and removed with its home on drop, whatever the test's outcome.
struct User {
    name: String,
    uid: u32,
    gid: u32,
    extra_group: Option<String>,
}

impl User {
    fn new() -> User {
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

/// A child process killed (by its pid) and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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

/// A host whose app `web` belongs to `u`, reachable by it; `extra` follows `owner` in `[apps.web]`.
fn user_host(u: &User, extra: &str) -> Host {
    let h = Host::with_app_config(&format!("owner = \"{}\"\n{extra}", u.name));
    open_up(&h);
    h
}

/// A sticky, world-writable directory in the host where hooks (as any user) leave their records.
fn marks(h: &Host) -> PathBuf {
    let d = h.path().join("marks");
    std::fs::create_dir_all(&d).unwrap();
    chmod(&d, 0o1777);
    d
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).trim().to_owned()
}

/// A release whose `version.txt` says `v`, with one executable more at `path`.
fn with_exec(v: &str, path: &str, script: &str) -> Release {
    Release::new().file("version.txt", v.as_bytes(), 0o644).file(path, script.as_bytes(), 0o755)
}

fn deploy(h: &Host, v: &str, r: Release, env: &[(&str, &str)]) -> Out {
    let a = h.archive(&format!("{v}.tar.zst"), &r.build());
    h.run_env(&["deploy", "web", "--file", a.to_str().unwrap(), "--version", v], env)
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

/// What a directory tree looks like to an auditor: each path with its owner, group, mode and size.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, u32, u32, u64)> {
    let mut v: Vec<_> = tree(dir).into_iter().map(|(p, m)| (p, m.uid(), m.gid(), m.mode(), m.len())).collect();
    v.sort();
    v
}

/// `switchback --config CONFIG` as root, without the test's own SWITCHBACK_CONFIG or SUDO_USER.
fn sb(config: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config").arg(config).env_remove("SWITCHBACK_CONFIG").env_remove("SUDO_USER");
    c
}

fn run(c: &mut Command) -> Out {
    c.output().unwrap().into()
}

fn status(h: &Host) -> serde_json::Value {
    h.run(&["status", "web", "--json"]).expect(0).json()["apps"][0].clone()
}

#[test]
fn releases_are_roots_and_the_app_user_cannot_change_them() {
    let u = User::new();
    let h = Host::new();
    let marks = marks(&h);
    // bin/migrate runs as root before each switch: whatever the app user could plant in it would run as root.
    h.write_config(&format!(
        "owner = \"{}\"\nrun_as = \"root\"\nshared = [\"log\"]\n[apps.web.hooks]\nbefore_activate = [\"bin/migrate\"]\n",
        u.name
    ));
    open_up(&h);
    let migrate = format!("#!/bin/sh\necho \"$(id -u) original\" > {}/migrate-$SWITCHBACK_VERSION\n", marks.display());
    for v in ["v1", "v2"] {
        let r = Release::new()
            .file("version.txt", v.as_bytes(), 0o664)
            .file("secret.conf", b"key=1", 0o600)
            .dir("bin", 0o777)
            .file("bin/migrate", migrate.as_bytes(), 0o775);
        deploy(&h, v, r, &[]).expect(0);
    }
    assert_eq!(read(&marks.join("migrate-v2")), "0 original");

    let v1 = h.root().join("releases/v1");
    for (p, m) in tree(&v1) {
        assert_eq!(m.uid(), 0, "{} is not root's", p.display());
        if m.is_dir() {
            assert_eq!(m.mode() & 0o022, 0, "{} is writable by group or others: {:o}", p.display(), m.mode());
        } else if m.is_file() {
            assert_eq!(m.mode() & 0o222, 0, "{} has a write bit: {:o}", p.display(), m.mode());
            assert_eq!(m.gid(), u.gid, "{} is not in the app user's group", p.display());
        }
    }
    assert_eq!(mode(&v1.join("secret.conf")), 0o440, "a 0600 file is 0440 root:GROUP");
    // The service user reads its release through its group, but writes nothing in it.
    assert_eq!(u.sh(&format!("cat {}/secret.conf", v1.display())).expect(0).stdout, "key=1");
    let payload = marks.join("payload");
    std::fs::write(&payload, format!("#!/bin/sh\nid -u > {}/ran-as-root\n", marks.display())).unwrap();
    let (v, p) = (v1.display(), payload.display());
    u.denied(&format!("mkdir -p {v}/.switchback/hooks && cp {p} {v}/.switchback/hooks/after_rollback"));
    u.denied(&format!("cp {p} {v}/bin/migrate"));
    u.denied(&format!("cat {p} >> {v}/bin/migrate"));
    u.denied(&format!("chmod u+w {v}/bin/migrate"));
    u.denied(&format!("touch {v}/planted"));
    u.denied(&format!("mv {v} {v}.moved"));
    u.denied(&format!("ln -sfn releases/v1 {}/current.new && mv -T {0}/current.new {0}/current", h.root().display()));
    assert_eq!(std::fs::read_to_string(v1.join("bin/migrate")).unwrap(), migrate);
    assert!(!v1.join(".switchback").exists() && !v1.join("planted").exists());

    // Root rolls back and deploys again: only what was verified runs, as root.
    h.run(&["rollback", "web"]).expect(0);
    h.run(&["deploy", "web", "--version", "v2", "--force"]).expect(0);
    assert_eq!(h.current().as_deref(), Some("v2"));
    assert!(!marks.join("ran-as-root").exists(), "something the app user wrote ran as root");
    assert_eq!(read(&marks.join("migrate-v2")), "0 original");
    // What the agent creates under shared/ is the app user's.
    let log = std::fs::symlink_metadata(h.root().join("shared/log")).unwrap();
    assert!(log.is_dir() && log.uid() == u.uid, "shared/log: uid {} (want {})", log.uid(), u.uid);
}

#[test]
fn hooks_and_exec_checks_run_as_the_app_user_with_a_clean_environment() {
    let u = User::new();
    let h = Host::new();
    open_up(&h);
    let o = marks(&h);
    let o = o.display();
    let config = |keys: &str, hooks: &str| {
        h.write_config(&format!(
            "owner = \"{user}\"\n{keys}\n[[apps.web.checks]]\nexec = [\"sh\", \"-c\", \"id -u > {o}/check-$SWITCHBACK_VERSION\"]\n\
             [apps.web.health]\ninterval = \"100ms\"\nhealthy_after = 1\ndeadline = \"5s\"\n\
             [apps.web.hooks]\nbefore_activate = [\"sh\", \"-c\", \"id -u > {o}/hook-$SWITCHBACK_VERSION; env > {o}/env-$SWITCHBACK_VERSION\"]\n{hooks}\n",
            user = u.name
        ))
    };
    let shipped = format!("#!/bin/sh\nid -u > {o}/shipped-$SWITCHBACK_VERSION\n");
    let release = |v: &str| with_exec(v, ".switchback/hooks/after_activate", &shipped);
    let uid = u.uid.to_string();
    let secret = [("AWS_SECRET_ACCESS_KEY", "topsecret")];

    // Default run_as: the owner.
    config("", "");
    deploy(&h, "v1", release("v1"), &secret).expect(0);
    let rec = |name: &str| h.path().join("marks").join(name);
    assert_eq!(read(&rec("hook-v1")), uid, "the configured hook ran as another user");
    assert_eq!(read(&rec("check-v1")), uid, "the exec check ran as another user");
    assert_eq!(read(&rec("shipped-v1")), uid, "the shipped hook ran as another user");
    let env = read(&rec("env-v1"));
    assert!(!env.contains("topsecret") && !env.contains("AWS_SECRET_ACCESS_KEY"), "the agent's env leaked:\n{env}");
    let lines: Vec<&str> = env.lines().collect();
    for want in ["SWITCHBACK_APP=web", "SWITCHBACK_VERSION=v1", &format!("USER={}", u.name)] {
        assert!(lines.contains(&want), "the hook's env lacks {want}:\n{env}");
    }
    assert!(lines.iter().any(|l| l.starts_with("HOME=")), "{env}");

    // run_as = "root" keeps root.
    config("run_as = \"root\"", "");
    deploy(&h, "v2", release("v2"), &[]).expect(0);
    assert_eq!(read(&rec("hook-v2")), "0");
    assert_eq!(read(&rec("check-v2")), "0");

    // from_archive = false: the archive's hooks do not run; configured ones still do, as the owner.
    config("", "from_archive = false");
    deploy(&h, "v3", release("v3"), &[]).expect(0);
    assert!(!rec("shipped-v3").exists(), "a shipped hook ran with from_archive = false");
    assert_eq!(read(&rec("hook-v3")), uid);
}

#[test]
fn a_tampered_release_is_refused_before_it_runs_or_goes_live() {
    let u = User::new();
    let h = user_host(&u, "");
    let mark = marks(&h).join("tampered-hook-ran");
    let evil = format!("#!/bin/sh\ntouch {}\n", mark.display());
    let good = format!("#!/bin/sh\nexit 0\n{}\n", "#".repeat(evil.len() - 18));
    assert_eq!(good.len(), evil.len());
    for v in ["v1", "v2"] {
        deploy(&h, v, with_exec(v, ".switchback/hooks/after_rollback", &good), &[]).expect(0);
    }
    let v1 = h.root().join("releases/v1");
    let rollback = ["rollback", "web", "--to", "v1"];
    let refused = |what: &str, args: &[&str]| {
        let out = h.run(args);
        assert_eq!(out.code, 1, "{what}: {out:#?}");
        assert!(out.stderr.contains("not the release that was verified"), "{what}: {}", out.stderr);
        assert_eq!(h.current().as_deref(), Some("v2"), "{what}: current moved");
    };

    // A file made writable and changed.
    let file = v1.join("version.txt");
    let (m, gid) = (mode(&file), std::fs::metadata(&file).unwrap().gid());
    chmod(&file, m | 0o200);
    std::fs::write(&file, "v1 changed").unwrap();
    refused("a changed file", &rollback);
    std::fs::write(&file, "v1").unwrap();
    chmod(&file, m);
    // A file given to the app user.
    std::os::unix::fs::chown(&file, Some(u.uid), None).unwrap();
    refused("a file given to the app user", &rollback);
    std::os::unix::fs::chown(&file, Some(0), Some(gid)).unwrap();
    // A file more.
    std::fs::write(v1.join("extra"), "x").unwrap();
    refused("an extra file", &rollback);
    refused("an extra file, deployed from disk", &["deploy", "web", "--version", "v1"]);
    std::fs::remove_file(v1.join("extra")).unwrap();
    // A shipped hook with other bytes: same size, mode and owner, so only its content tells.
    let hook = v1.join(".switchback/hooks/after_rollback");
    std::fs::write(&hook, &evil).unwrap();
    refused("a tampered shipped hook", &rollback);
    assert!(!mark.exists(), "a tampered hook ran");
    std::fs::write(&hook, &good).unwrap();

    // Back as it was verified, v1 is accepted again.
    h.run(&rollback).expect(0);
    assert_eq!(h.current().as_deref(), Some("v1"));
    assert!(!mark.exists());
}

/// A host whose app `web` deploys drops from an inbox owned by `u`. Returns the host, the signing key, the base
/// `publish` writes to (the drops are copied from there) and the inbox.
fn inbox_host(u: &User) -> (Host, PathBuf, String, PathBuf) {
    let h = Host::new();
    open_up(&h);
    let inbox = h.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    std::os::unix::fs::chown(&inbox, Some(u.uid), Some(u.gid)).unwrap();
    h.write_config(&format!("inbox = \"{}\"\ntrusted_keys = [\"PUBLIC_KEY\"]\n", inbox.display()));
    let key = trust_new_key(&h);
    let base = format!("file://{}/bucket", h.path().display());
    (h, key, base, inbox)
}

/// The inbox writer `u` drops each (file, name) the documented way: copied to a hidden name, renamed into place.
fn drop_as(u: &User, inbox: &Path, files: &[(PathBuf, String)]) {
    for (from, name) in files {
        let (f, i) = (from.display(), inbox.display());
        u.sh(&format!("cp {f} {i}/.{name}.tmp && mv {i}/.{name}.tmp {i}/{name}")).expect(0);
    }
}

/// The drop of what `publish` just wrote for `v`: the archive, then the signature, then the manifest.
fn signed_drop(h: &Host, v: &str) -> Vec<(PathBuf, String)> {
    let web = h.path().join("bucket/web");
    vec![
        (web.join(format!("releases/{v}.tar.zst")), format!("{v}.tar.zst")),
        (web.join("channels/production.json.minisig"), "web.json.minisig".to_owned()),
        (web.join("channels/production.json"), "web.json".to_owned()),
    ]
}

#[test]
fn an_inbox_writer_cannot_change_the_archive_behind_a_signed_manifest() {
    let u = User::new();
    let (h, key, base, inbox) = inbox_host(&u);
    let dir = release_dir(&h, "1.0.0", 200);
    // Large and incompressible, so most of it is still unread when the first entry is written.
    let noise: Vec<u8> = (0..2 << 20).map(|_| fastrand::u8(..)).collect();
    std::fs::write(dir.join("z.bin"), &noise).unwrap();
    publish(&h, &[], &base, &key, "1.0.0", &[dir.to_str().unwrap()]).expect(0);
    let evil = h.archive("evil.tar.zst", &Release::new().file("version.txt", b"evil", 0o644).build());
    let pause = h.path().join("pause");
    let pause_env = vec![
        ("SWITCHBACK_PAUSE_AT".to_owned(), "mid-unpack:1".to_owned()),
        ("SWITCHBACK_PAUSE_FILE".to_owned(), pause.display().to_string()),
    ];
    let mut d = Daemon::start(&h, &pause_env);
    wait_for("the daemon to be ready", LIVE, || d.log().contains("daemon ready"));

    // The drop is hashed and half unpacked when its writer rewrites the archive in place.
    drop_as(&u, &inbox, &signed_drop(&h, "1.0.0"));
    wait_for("the daemon to pause mid-unpack", LIVE, || pause.exists());
    u.sh(&format!("cat {} > {}/1.0.0.tar.zst", evil.display(), inbox.display())).expect(0);
    std::fs::remove_file(&pause).unwrap();
    wait_for("1.0.0 to go live", LIVE, || h.current().as_deref() == Some("1.0.0"));
    assert_eq!(h.read_current("version.txt"), "1.0.0");
    assert!(std::fs::read(h.root().join("current/z.bin")).unwrap() == noise, "z.bin is not the signed content");

    // A signed manifest for 2.0.0, dropped with other bytes under its archive's name.
    let dir2 = release_dir(&h, "2.0.0", 200);
    publish(&h, &[], &base, &key, "2.0.0", &[dir2.to_str().unwrap()]).expect(0);
    let mut files = signed_drop(&h, "2.0.0");
    files[0].0 = evil.clone();
    drop_as(&u, &inbox, &files);
    wait_for("the daemon to refuse the other bytes", LIVE, || d.log().contains("does not match its manifest"));
    // Its next decision holds 2.0.0 for its refused artifact.
    wait_for("the daemon to hold 2.0.0", LIVE, || {
        status(&h)["daemon"]["activity"].as_str().is_some_and(|a| a.contains("the artifact of 2.0.0 was refused"))
            || h.current().as_deref() != Some("1.0.0")
    });
    assert_eq!(h.current().as_deref(), Some("1.0.0"));
    assert_eq!(h.read_current("version.txt"), "1.0.0");
    assert!(!h.release_dirs().contains(&"2.0.0".to_owned()), "{:?}", h.release_dirs());
    assert!(d.alive());
    assert_eq!(d.stop(), 0, "log:\n{}", d.log());
}

#[test]
fn fifos_and_links_in_the_inbox_do_not_hang_the_daemon() {
    let u = User::new();
    let (h, key, base, inbox) = inbox_host(&u);
    let mut d = Daemon::start(&h, &[]);
    wait_for("the daemon to be ready", LIVE, || d.log().contains("daemon ready"));
    let i = inbox.display();
    u.sh(&format!(
        "mkfifo {i}/x.json && ln -s /dev/zero {i}/y.json && echo '{{}}' > {i}/z.json && mkfifo {i}/z.json.minisig"
    ))
    .expect(0);
    let dir = release_dir(&h, "1.0.0", 200);
    publish(&h, &[], &base, &key, "1.0.0", &[dir.to_str().unwrap()]).expect(0);
    drop_as(&u, &inbox, &signed_drop(&h, "1.0.0"));
    wait_for("the valid drop to go live", LIVE, || h.current().as_deref() == Some("1.0.0"));
    for name in ["x.json", "y.json", "z.json"] {
        wait_for(&format!("{name} to be set aside"), LIVE, || inbox.join(format!("{name}.refused")).exists());
        assert!(std::fs::symlink_metadata(inbox.join(name)).is_err(), "{name} is still in the inbox");
    }
    let st = status(&h);
    assert!(!st["daemon"].is_null(), "{st:#}");
    let pid = d.child.as_ref().unwrap().id();
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 =
        rss.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap();
    assert!(kib < 100 << 10, "the daemon's RSS is {kib} KiB");
    let start = Instant::now();
    assert_eq!(d.stop(), 0, "log:\n{}", d.log());
    assert!(start.elapsed() < Duration::from_secs(5), "SIGTERM took {:?}", start.elapsed());
}

/// Signs `manifest` with the minisign tool and the key `key` into `DIR/NAME` and `DIR/NAME.minisig`.
fn sign(manifest: &serde_json::Value, key: &Path, dir: &Path, name: &str) {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(manifest).unwrap()).unwrap();
    run(Command::new("minisign").args(["-S", "-s"]).arg(key).arg("-m").arg(&path).stdin(Stdio::null())).expect(0);
}

#[test]
fn a_bucket_writer_without_the_key_cannot_freeze_the_channel() {
    let u = User::new();
    let h = Host::new();
    open_up(&h);
    h.write_config(&format!(
        "source = \"file://{}/bucket/web\"\ntrusted_keys = [\"PUBLIC_KEY\"]\n",
        h.path().display()
    ));
    let key = trust_new_key(&h);
    let base = format!("file://{}/bucket", h.path().display());
    let publish_v = |v: &str, extra: &[&str]| {
        let dir = release_dir(&h, v, 200);
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        args.push(dir.to_str().unwrap());
        publish(&h, &[], &base, &key, v, &args)
    };
    publish_v("1.0.0", &[]).expect(0);
    // The bucket writer may replace anything in the channel directory.
    let channels = h.path().join("bucket/web/channels");
    std::os::unix::fs::chown(&channels, Some(u.uid), Some(u.gid)).unwrap();
    let marks = marks(&h);
    let put = |name: &str| {
        let (m, c) = (marks.display(), channels.display());
        for ext in [".minisig", ""] {
            u.sh(&format!("cp {m}/{name}{ext} {c}/.tmp && mv {c}/.tmp {c}/production.json{ext}")).expect(0);
        }
    };
    let mut d = Daemon::start(&h, &[]);
    wait_for("1.0.0 to go live", LIVE, || h.current().as_deref() == Some("1.0.0"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();

    let manifest = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(channels.join("production.json")).unwrap()).unwrap()
    };
    // The highest sequence there is, signed by a key of the writer's own.
    let mut forged = manifest();
    (forged["sequence"], forged["version"]) = ((u64::MAX - 1).into(), "6.6.6".into());
    sign(&forged, &keygen(&h, "intruder").0, &marks, "forged.json");
    put("forged.json");
    wait_for("the daemon to refuse the forged manifest", LIVE, || d.log().contains("not among the trusted_keys"));
    assert_eq!(h.current().as_deref(), Some("1.0.0"));

    // CI publishes as usual: it warns, ignores the forged sequence (taking the clock's), and the agent follows.
    wait_for_clock_past(accepted_sequence(&h));
    let out = publish_v("2.0.0", &[]);
    out.expect(0);
    assert!(out.stderr.contains("not signed by this key") || out.stderr.contains("not trusted"), "{}", out.stderr);
    let seq = out.json()["sequence"].as_u64().unwrap();
    assert!(seq < now + 2 * 86400, "publish took the forged sequence: {seq}");
    wait_for("2.0.0 to go live", LIVE, || h.current().as_deref() == Some("2.0.0"));
    // The same, unsigned (a signature that is not one): the next publish moves the channel again.
    std::fs::write(marks.join("unsigned.json"), serde_json::to_vec_pretty(&forged).unwrap()).unwrap();
    std::fs::write(marks.join("unsigned.json.minisig"), "untrusted comment: none\nRWQ=\n").unwrap();
    put("unsigned.json");
    wait_for("the daemon to refuse the unsigned manifest", LIVE, || d.log().contains("unreadable signature"));
    wait_for_clock_past(accepted_sequence(&h));
    let out = publish_v("3.0.0", &[]);
    assert!(out.expect(0).stderr.contains("not signed by this key"), "{}", out.stderr);
    assert!(out.json()["sequence"].as_u64().unwrap() < now + 2 * 86400, "{}", out.stdout);
    wait_for("3.0.0 to go live", LIVE, || h.current().as_deref() == Some("3.0.0"));

    // Signed with the real key, but ten years ahead of the clock: refused, and the channel is not frozen.
    let accepted = manifest();
    let mut ahead = accepted.clone();
    (ahead["sequence"], ahead["version"]) = ((now + 3650 * 86400).into(), "4.0.0".into());
    sign(&ahead, &key, &marks, "ahead.json");
    put("ahead.json");
    wait_for("the agent to refuse a sequence far ahead", LIVE, || d.log().contains("ahead of this host's clock"));
    // Signed, in sequence, but valid until the year 9999: refused.
    let mut forever = accepted.clone();
    let next = accepted["sequence"].as_u64().unwrap() + 1;
    (forever["sequence"], forever["version"], forever["expires"]) =
        (next.into(), "5.0.0".into(), "9999-12-31T23:59:59Z".into());
    sign(&forever, &key, &marks, "forever.json");
    put("forever.json");
    wait_for("the agent to refuse a lifetime too long", LIVE, || d.log().contains("max_manifest_lifetime"));
    assert_eq!(h.current().as_deref(), Some("3.0.0"));
    assert_eq!(status(&h)["channel"]["version"], "3.0.0");

    let out = publish_v("6.0.0", &["--expires-in", "2914000d"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(d.alive());
    assert_eq!(d.stop(), 0, "log:\n{}", d.log());
}

#[test]
fn a_local_user_cannot_block_root_or_read_more_than_status() {
    let u = User::in_new_group();
    let group = u.extra_group.clone().unwrap();
    let h = Host::new();
    open_up(&h);
    h.deploy_simple("v1").expect(0);
    h.deploy_simple("v2").expect(0);
    let (top, state, lock) = (h.path().join("state"), h.state_dir(), h.state_dir().join("lock"));
    for d in [&top, &state] {
        assert_eq!((mode(d), std::fs::metadata(d).unwrap().uid()), (0o700, 0), "{}", d.display());
    }
    assert_eq!((mode(&lock), std::fs::metadata(&lock).unwrap().uid()), (0o600, 0));

    // Anyone may try to take the app's lock and hold it: flock(1) would sit on it for 30 s had it opened it.
    let mut taker = u.cmd("flock");
    taker.arg(&lock).args(["sleep", "30"]).stderr(Stdio::piped());
    let mut taker = Reaped(taker.spawn().unwrap());
    let mut exit = None;
    wait_for("the user's flock to give up", Duration::from_secs(10), || {
        exit = taker.0.try_wait().unwrap();
        exit.is_some()
    });
    let mut err = String::new();
    taker.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!exit.unwrap().success() && err.contains("Permission denied"), "{err}");
    h.run(&["--wait", "2s", "rollback", "web"]).expect(0);
    u.denied(&format!("cat {}/state.json", state.display()));

    // With read_group, the group reads status and history, and still nothing else.
    let cfg = std::fs::read_to_string(&h.config)
        .unwrap()
        .replace("poll_interval = \"500ms\"\n", &format!("poll_interval = \"500ms\"\nread_group = \"{group}\"\n"));
    std::fs::write(&h.config, cfg).unwrap();
    assert_eq!(mode(&h.config), 0o644);
    // An archive the user owns is copied into downloads/ before it is used.
    let a = h.archive("v3.tar.zst", &Release::new().file("version.txt", b"v3", 0o644).build());
    std::os::unix::fs::chown(&a, Some(u.uid), Some(u.gid)).unwrap();
    h.deploy(&a, "v3").expect(0);
    assert_eq!(mode(&top), 0o750);
    let st = u.switchback(&h, &["--json", "status", "web"]);
    assert_eq!(st.expect(0).json()["apps"][0]["current"], "v3");
    assert!(u.switchback(&h, &["history", "web"]).expect(0).stdout.contains("v3"));
    u.denied(&format!("flock -n {} true", lock.display()));
    let downloads = state.join("downloads");
    assert!(downloads.is_dir(), "no downloads/ after deploying an archive the user owns");
    u.denied(&format!("ls {}", downloads.display()));
    // Reading is not writing.
    let out = u.switchback(&h, &["pin", "web", "v1"]);
    assert_ne!(out.code, 0, "{out:#?}");
    assert!(status(&h)["pin"].is_null());
}

#[test]
fn root_uses_only_a_configuration_nobody_else_can_change() {
    let u = User::new();
    let h = Host::new();
    open_up(&h);
    let check = |cfg: &Path| run(sb(cfg).args(["config", "check"]));
    let refused = |what: &str, out: Out| {
        assert_eq!(out.code, 2, "{what}: {out:#?}");
        assert!(out.stderr.contains("not root's alone"), "{what}: {}", out.stderr);
    };
    check(&h.config).expect(0);
    chmod(&h.config, 0o666);
    refused("a config others can write", check(&h.config));
    chmod(&h.config, 0o644);
    std::os::unix::fs::chown(&h.config, Some(u.uid), None).unwrap();
    refused("a config the user owns", check(&h.config));
    std::os::unix::fs::chown(&h.config, Some(0), None).unwrap();

    // The user's own configuration, in the user's home, by --config and by SWITCHBACK_CONFIG.
    let mine = u.home().join("switchback.toml");
    u.sh(&format!("cat > {} <<'EOF'\n{}EOF", mine.display(), std::fs::read_to_string(&h.config).unwrap())).expect(0);
    refused("the user's config", check(&mine));
    refused(
        "the user's config by SWITCHBACK_CONFIG",
        run(Command::new(BIN).arg("status").env("SWITCHBACK_CONFIG", &mine)),
    );

    // Root's file in a directory others can write: the file could be swapped. Sticky and root's, like /tmp: fine.
    let etc = h.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::copy(&h.config, etc.join("switchback.toml")).unwrap();
    chmod(&etc, 0o777);
    refused("a config in a world-writable directory", check(&etc.join("switchback.toml")));
    chmod(&etc, 0o1777);
    check(&etc.join("switchback.toml")).expect(0);

    // --config only before the command.
    let out = run(Command::new(BIN).args(["status", "--config"]).arg(&h.config));
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(out.stderr.contains("--config") && out.stderr.contains("Usage"), "{}", out.stderr);
}

#[test]
fn credentials_in_a_source_url_are_refused_and_never_shown() {
    let u = User::new();
    let h = Host::new();
    open_up(&h);
    h.deploy_simple("v1").expect(0);
    let (_, pk) = keygen(&h, "ci");
    for keys in [
        "source = \"https://user:secret@127.0.0.1:1/base/web\"",
        "source = \"https://127.0.0.1:1/base/web?sig=secret\"",
        "source = \"s3://bucket/web\"\nendpoint = \"http://id:secret@127.0.0.1:1\"\nallow_http = true",
    ] {
        h.write_config(&format!("{keys}\ntrusted_keys = [\"{pk}\"]\n"));
        let out = h.run(&["config", "check"]);
        assert_eq!(out.code, 2, "{keys}: {out:#?}");
        assert!(out.stderr.contains("environment") && out.stderr.contains("instance"), "{}", out.stderr);
        assert!(out.stderr.contains("***"), "not shown redacted: {}", out.stderr);
        let mut outs = vec![out, u.switchback(&h, &["config", "check"])];
        for args in [&["status"][..], &["--json", "status"], &["history", "web"], &["deploy", "web", "--version", "v2"]]
        {
            outs.push(h.run(args));
        }
        let mut d = Daemon::start(&h, &[]);
        wait_for("the daemon to refuse its configuration", LIVE, || !d.alive());
        let code = d.child.take().unwrap().wait().unwrap().code().unwrap_or(-1);
        outs.push(Out { code, stdout: String::new(), stderr: d.log() });
        for out in outs {
            assert_ne!(out.code, 0, "{keys}: {out:#?}");
            assert!(
                !out.stdout.contains("secret") && !out.stderr.contains("secret"),
                "{keys}: a secret shown: {out:#?}"
            );
        }
    }
    let out =
        publish(&h, &[], "https://user:secret@127.0.0.1:1/base", &h.path().join("ci.key"), "v9", &["--promote-only"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(!out.stderr.contains("secret") && !out.stdout.contains("secret"), "{out:#?}");
    for (p, _) in tree(&h.path().join("state")) {
        assert!(!std::fs::read_to_string(&p).unwrap_or_default().contains("secret"), "{}", p.display());
    }
}

/// A loopback TCP server that hands each connection to `f` and counts them; it stops when dropped.
struct Server {
    port: u16,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(f: impl Fn(TcpStream) + Send + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let (hits, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let s = Server { port: listener.local_addr().unwrap().port(), hits: hits.clone(), stop: stop.clone() };
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => {
                        hits.fetch_add(1, Ordering::SeqCst);
                        c.set_nonblocking(false).unwrap();
                        f(c)
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_bucket_that_redirects_elsewhere_is_not_followed() {
    let elsewhere = Server::start(|_| {});
    let other = elsewhere.port;
    let bucket = Server::start(move |mut c| {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => head.extend_from_slice(&buf[..k]),
            }
        }
        let text = String::from_utf8_lossy(&head);
        let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let _ = write!(
            c,
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{other}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    });
    let port = bucket.port;
    let h = Host::new();
    h.write_config(&format!(
        "source = \"http://127.0.0.1:{port}/base/web\"\nallow_http = true\ntrusted_keys = [\"PUBLIC_KEY\"]\n"
    ));
    let key = trust_new_key(&h);
    let out = h.run(&["deploy", "web", "--version", "1.0.0"]);
    assert!(out.code != 0 && out.code != 101, "{out:#?}");
    assert!(out.stderr.contains("302") || out.stderr.to_lowercase().contains("redirect"), "{}", out.stderr);
    assert!(bucket.hits.load(Ordering::SeqCst) > 0, "the bucket was never asked");

    let mut d = Daemon::start(&h, &[]);
    let mut poll = String::new();
    wait_for("a failed poll", LIVE, || {
        poll = status(&h)["daemon"]["last_poll"].as_str().unwrap_or("").to_owned();
        poll.contains("poll failed")
    });
    assert!(poll.contains("302") || poll.to_lowercase().contains("redirect"), "{poll}");
    assert_eq!(d.stop(), 0, "log:\n{}", d.log());
    let dir = release_dir(&h, "1.0.0", 200);
    let base = format!("http://127.0.0.1:{port}/base");
    let out = publish(&h, &[], &base, &key, "1.0.0", &["--allow-http", dir.to_str().unwrap()]);
    assert!(out.code != 0 && out.code != 101, "{out:#?}");
    assert_eq!(elsewhere.hits.load(Ordering::SeqCst), 0, "a redirect to another origin was followed");
    assert_eq!(h.current(), None);
}

#[test]
fn links_the_app_user_plants_in_shared_are_never_followed() {
    let u = User::new();
    let h = user_host(&u, "shared = [\"log\"]\n");
    h.deploy_simple("v1").expect(0);
    let shared = h.root().join("shared");
    assert_eq!(std::fs::metadata(shared.join("log")).unwrap().uid(), u.uid);
    let etc = h.outside().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    let before = snapshot(&etc);
    let (s, e) = (shared.display(), etc.display());
    u.sh(&format!("rm -r {s}/log && ln -s {e} {s}/log && ln -s {e} {s}/cache")).expect(0);

    // Through the link, root would create log/app in /etc (and give it to the user).
    h.write_config(&format!("owner = \"{}\"\nshared = [\"log/app\"]\n", u.name));
    let out = h.deploy_simple("v2");
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("is a link or not a directory"), "{}", out.stderr);
    assert_eq!(h.current().as_deref(), Some("v1"));
    assert_eq!(snapshot(&etc), before, "something changed outside the app root");

    // A link at the shared path itself is the user's business: the release links to it, nothing is done through it.
    h.write_config(&format!("owner = \"{}\"\nshared = [\"cache\"]\n", u.name));
    h.deploy_simple("v3").expect(0);
    assert_eq!(std::fs::read_link(h.root().join("releases/v3/cache")).unwrap(), Path::new("../../shared/cache"));
    assert_eq!(snapshot(&etc), before, "something changed outside the app root");
}

#[test]
fn history_records_the_real_uid_and_sudo_user_only_as_claimed() {
    let u = User::new();
    let h = Host::new();
    h.deploy_simple("v1").expect(0);
    // Effective root with the user's real uid (as a setuid wrapper would run it), claiming to be mallory.
    let argv = ["--", BIN, "--config", h.config.to_str().unwrap(), "pin", "web", "v1"];
    run(Command::new("setpriv").arg(format!("--ruid={}", u.uid)).args(argv).env("SUDO_USER", "mallory")).expect(0);
    let events = h.history();
    let who = &events.last().unwrap()["who"];
    assert_eq!(events.last().unwrap()["op"], "pin");
    assert_eq!(who["uid"], u.uid, "{who:#}");
    assert_eq!(who["sudo_user"], "mallory", "{who:#}");
    let login = std::fs::read_to_string("/proc/self/loginuid").ok().and_then(|s| s.trim().parse::<u32>().ok());
    match login.filter(|l| *l != u32::MAX) {
        Some(l) => assert_eq!(who["login_uid"], l, "{who:#}"),
        None => assert!(who["login_uid"].is_null(), "{who:#}"),
    }
    let text = h.run(&["history", "web"]).expect(0).stdout.clone();
    assert!(text.contains("mallory") && text.contains("(claimed)"), "{text}");

    run(sb(&h.config).args(["unpin", "web"])).expect(0);
    let who = h.history().last().unwrap()["who"].clone();
    assert_eq!((who["uid"].as_u64(), who["sudo_user"].is_null()), (Some(0), true), "{who:#}");
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let h = Host::new();
    h.deploy_simple("v1").expect(0);
    h.deploy_simple("v2").expect(0);
    for args in [&["status"][..], &["--json", "status"], &["history", "web"], &["releases", "web"]] {
        // A pipe whose read end is already closed: the first write fails with EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = run(sb(&h.config).args(args).stdout(writer));
        assert_eq!(out.code, 0, "{args:?}: {out:#?}");
        assert!(!out.stderr.contains("panicked"), "{args:?}: {}", out.stderr);
    }
    let script = format!("set -o pipefail; {BIN} --config {} status | head -1", h.config.display());
    let out = run(Command::new("bash").arg("-c").arg(script));
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(!out.stderr.contains("panicked") && !out.stdout.is_empty(), "{out:#?}");
}
