//! Real application trees, run from `current`: a Python virtualenv and a node_modules tree, packed by GNU tar,
//! deployed, and serving.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{put_file, run};
use crate::harness::*;

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A host whose service is started by `start` (a shell command run in `ROOT/current`, with `PORT` and `PIDFILE`
/// replaced), stopping the previous instance first, and checked on its /healthz. The returned [`Service`] stops
/// what the pid file names when dropped.
fn app_host(start: &str) -> (Host, Service) {
    let h = Host::new();
    let port = free_port();
    let pidfile = h.path().join("service.pid");
    let pid = pidfile.display().to_string();
    let start = start.replace("PORT", &port.to_string()).replace("PIDFILE", &pid);
    let script = format!(
        "{BIN} demo-service stop --pidfile {pid}; cd {root}/current && (nohup {start} </dev/null >/dev/null 2>&1 & echo $! > {pid})",
        root = h.root().display()
    );
    h.write_config(&format!(
        "[apps.web.service]\nrestart = [\"/bin/sh\", \"-c\", {}]\ntimeout = \"10s\"\n\n[[apps.web.checks]]\nhttp = \"http://127.0.0.1:{port}/healthz\"\nexpect_status = 200\ntimeout = \"1s\"\n\n[apps.web.health]\ninterval = \"100ms\"\nhealthy_after = 2\ndeadline = \"15s\"\n",
        toml_str(&script)
    ));
    (h, Service { port, pidfile })
}

/// Packs `dir` with GNU tar and zstd as an archive under the host.
fn pack(h: &Host, dir: &Path, name: &str) -> PathBuf {
    let out = h.path().join("archives").join(format!("{name}.tar.zst"));
    run(Command::new("tar").arg("--zstd").arg("-cf").arg(&out).arg("-C").arg(dir).arg("."));
    out
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(program)).find(|p| p.is_file())
}

const APP_PY: &str = r#"import http.server, sys
import greeting

PORT = int(sys.argv[1])
VERSION = open("version.txt").read().strip()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok" if self.path == "/healthz" else greeting.hello(VERSION, sys.prefix != sys.base_prefix).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
"#;

#[test]
fn python_virtualenv_runs_from_current() {
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        eprintln!("skipping python_virtualenv_runs_from_current: /usr/bin/python3 is absent");
        return;
    }
    let (h, svc) = app_host("venv/bin/python3 app.py PORT");
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("app");
    run(Command::new(python).args(["-m", "venv", "--without-pip"]).arg(app.join("venv")));
    let lib = app.join("venv/lib");
    let pyver = std::fs::read_dir(&lib)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .find(|n| n.to_string_lossy().starts_with("python3"));
    let site = lib.join(pyver.expect("venv/lib/python3.*")).join("site-packages");
    // A module only the virtualenv has: the service imports it, so it runs in the venv or not at all.
    let greeting = "def hello(version, in_venv):\n    return f\"hello from {version} (venv: {in_venv})\"\n";
    put_file(&site, "greeting.py", greeting.as_bytes(), 0o644);
    put_file(&app, "app.py", APP_PY.as_bytes(), 0o644);

    for v in ["v1", "v2"] {
        put_file(&app, "version.txt", v.as_bytes(), 0o644);
        let out = h.deploy(&pack(&h, &app, v), v);
        out.expect(0);
        assert_eq!(h.current().as_deref(), Some(v));
        assert_eq!(svc.get("/"), Some((200, format!("hello from {v} (venv: True)"))), "{out:#?}");
    }
    let link = h.root().join("current/venv/bin/python3");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), python);
    let status = run(Command::new(&link).args(["-c", "import sys, greeting; print(sys.prefix != sys.base_prefix)"]));
    assert_eq!(status.trim(), "True");
}

#[test]
fn node_modules_tree_runs_from_current() {
    let (Some(node), Some(npm)) = (which("node"), which("npm")) else {
        eprintln!("skipping node_modules_tree_runs_from_current: node or npm is missing");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (lib, app) = (work.path().join("lib"), work.path().join("app"));
    let npm_cmd = |dir: &Path, args: &[&str]| {
        run(Command::new(&npm)
            .args(args)
            .args(["--offline", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .env("npm_config_cache", work.path().join("npm-cache"))
            .env("npm_config_update_notifier", "false"))
    };
    put_file(&lib, "package.json", br#"{"name":"lib","version":"1.0.0","main":"index.js","bin":{"x":"bin/x"}}"#, 0o644);
    put_file(&lib, "index.js", b"exports.greet = (v) => `hello from ${v} via lib`;\n", 0o644);
    put_file(&lib, "bin/x", b"#!/usr/bin/env node\nconsole.log(require('../index.js').greet('x'));\n", 0o755);
    put_file(&app, "package.json", br#"{"name":"app","version":"1.0.0","private":true}"#, 0o644);
    npm_cmd(&lib, &["pack", "--pack-destination", app.to_str().unwrap()]);
    npm_cmd(&app, &["install", "./lib-1.0.0.tgz"]);
    assert_eq!(std::fs::read_link(app.join("node_modules/.bin/x")).unwrap(), Path::new("../lib/bin/x"));
    let server = "const http = require('http'), fs = require('fs'), lib = require('lib');\n\
        const version = fs.readFileSync('version.txt', 'utf8').trim();\n\
        http.createServer((req, res) => {\n  res.setHeader('Connection', 'close');\n  \
        res.end(req.url === '/healthz' ? 'ok' : lib.greet(version));\n}).listen(Number(process.argv[2]), '127.0.0.1');\n";
    put_file(&app, "server.js", server.as_bytes(), 0o644);
    put_file(&app, "version.txt", b"v1", 0o644);

    let (h, svc) = app_host(&format!("{} server.js PORT", node.display()));
    let out = h.deploy(&pack(&h, &app, "v1"), "v1");
    out.expect(0);
    assert_eq!(svc.get("/"), Some((200, "hello from v1 via lib".to_owned())), "{out:#?}");
    let bin = h.root().join("current/node_modules/.bin/x");
    let target = std::fs::read_link(&bin).unwrap();
    assert!(target.is_relative(), "{}", target.display());
    let release = h.root().join("releases/v1").canonicalize().unwrap();
    let resolved = bin.canonicalize().unwrap();
    assert!(resolved.starts_with(&release), "{} resolves outside the release", resolved.display());
    assert_eq!(run(&mut Command::new(&bin)).trim(), "hello from x via lib");
}
