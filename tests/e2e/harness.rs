//! Test harness: a temporary "host" (app root, state dir, config file) and a wrapper that runs the real binary
//! against it, plus a builder for release archives.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchback");

/// The result of one run of the binary.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Out {
    fn from(o: std::process::Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Out {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }

    #[track_caller]
    pub fn expect(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        self
    }
}

/// A temporary host with one app `web` rooted at `DIR/srv/web`, state in `DIR/state`, and an empty `DIR/outside`
/// that nothing may ever touch.
pub struct Host {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Host {
    pub fn new() -> Host {
        Host::with_app_config("")
    }

    /// `extra` is TOML appended after `[apps.web]`'s own keys (it may open sub-tables like `[apps.web.service]`).
    pub fn with_app_config(extra: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::create_dir_all(dir.path().join("archives")).unwrap();
        let config = dir.path().join("switchback.toml");
        let host = Host { dir, config };
        host.write_config(extra);
        host
    }

    pub fn write_config(&self, extra: &str) {
        let text = format!(
            "[agent]\nstate_dir = \"{}\"\npoll_interval = \"500ms\"\n\n[apps.web]\nroot = \"{}\"\nkeep = 3\n{extra}\n",
            self.state_dir().parent().unwrap().display(),
            self.root().display()
        );
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn root(&self) -> PathBuf {
        self.path().join("srv/web")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state/web")
    }
    pub fn outside(&self) -> PathBuf {
        self.path().join("outside")
    }

    /// Runs `switchback --config CONFIG ARGS...`.
    pub fn run(&self, args: &[&str]) -> Out {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("SWITCHBACK_CONFIG")
            .output()
            .expect("running switchback")
            .into()
    }

    /// Writes archive bytes under `DIR/archives/NAME` and returns the path.
    pub fn archive(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path().join("archives").join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    pub fn deploy(&self, archive: &Path, version: &str) -> Out {
        self.run(&["deploy", "web", "--file", archive.to_str().unwrap(), "--version", version])
    }

    /// Builds and deploys a small valid release whose `version.txt` says `version`.
    pub fn deploy_simple(&self, version: &str) -> Out {
        let a = self.archive(
            &format!("{version}.tar.zst"),
            &Release::new().file("version.txt", version.as_bytes(), 0o644).build(),
        );
        self.deploy(&a, version)
    }

    /// The version `current` points at (read from the symlink, not from the tool).
    pub fn current(&self) -> Option<String> {
        let t = std::fs::read_link(self.root().join("current")).ok()?;
        assert_eq!(t.parent(), Some(Path::new("releases")), "current must be a relative link into releases/");
        Some(t.file_name()?.to_string_lossy().into_owned())
    }

    pub fn read_current(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root().join("current").join(rel)).unwrap()
    }

    /// Everything under `DIR/outside` and every path anywhere under DIR whose name contains `marker`.
    pub fn escapes(&self, marker: &str) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(self.outside()).unwrap().map(|e| e.unwrap().path()).collect();
        walk(self.path(), &mut |p| {
            if p.file_name().is_some_and(|n| n.to_string_lossy().contains(marker)) {
                found.push(p.to_owned());
            }
        });
        found
    }

    /// Names under `releases/` (including hidden staging dirs).
    pub fn release_dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root().join("releases"))
            .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn history(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["--json", "history", "web"]);
        out.json()["events"].as_array().unwrap().clone()
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        f(&p);
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&p, f);
        }
    }
}

/// A benign release archive, built with the tar crate's builder and compressed with zstd.
pub struct Release {
    builder: tar::Builder<Vec<u8>>,
}

impl Release {
    pub fn new() -> Release {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        Release { builder }
    }

    pub fn file(mut self, path: &str, data: &[u8], mode: u32) -> Release {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        self.builder.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Release {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Directory);
        self.builder.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Release {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_entry_type(tar::EntryType::Symlink);
        self.builder.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Release {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Link);
        self.builder.append_link(&mut h, path, target).unwrap();
        self
    }

    /// The uncompressed tar bytes.
    pub fn tar(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }

    /// The .tar.zst bytes.
    pub fn build(self) -> Vec<u8> {
        zstd::encode_all(&self.tar()[..], 3).unwrap()
    }
}

pub fn zst(tar: &[u8]) -> Vec<u8> {
    zstd::encode_all(tar, 3).unwrap()
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The demo HTTP service of the binary, restarted through the configured `restart` command. Stopped on drop.
pub struct Service {
    pub port: u16,
    pub pidfile: PathBuf,
}

impl Service {
    /// App config that restarts the demo service and checks its /healthz, plus `extra` TOML.
    pub fn host(health: &str, extra: &str) -> (Host, Service) {
        Service::host_with(|_| String::new(), health, extra)
    }

    /// Like [`Service::host`], with more keys of `[apps.web]` itself (made from the new host).
    pub fn host_with(app_keys: impl FnOnce(&Host) -> String, health: &str, extra: &str) -> (Host, Service) {
        let h = Host::new();
        let port = free_port();
        let pidfile = h.path().join("service.pid");
        let cfg = format!(
            "{keys}\n[apps.web.service]\nrestart = [\"{BIN}\", \"demo-service\", \"restart\", \"--root\", \"{root}\", \"--port\", \"{port}\", \"--pidfile\", \"{pid}\"]\ntimeout = \"10s\"\n\n[[apps.web.checks]]\nhttp = \"http://127.0.0.1:{port}/healthz\"\nexpect_status = 200\ntimeout = \"1s\"\n\n[apps.web.health]\n{health}\n{extra}",
            keys = app_keys(&h),
            root = h.root().display(),
            pid = pidfile.display()
        );
        h.write_config(&cfg);
        (h, Service { port, pidfile })
    }

    /// GET a path from the service: (status, body), or None when nothing answers.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, text.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned()))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new(BIN).args(["demo-service", "stop", "--pidfile"]).arg(&self.pidfile).status();
    }
}

/// A release of the demo service: `health` is the status /healthz answers; extra files may follow.
pub fn service_release(version: &str, health: u16) -> Release {
    Release::new().file("version.txt", version.as_bytes(), 0o644).file("health", health.to_string().as_bytes(), 0o644)
}
