//! The Debian package that `packaging/build-deb` builds into `target/debian/` (tests/run builds it before the
//! tests): its control data, contents and modes; its man pages and completions, which must be what this build's
//! command line generates; then the package installed with dpkg on the nspawn root file system (see nspawn.rs),
//! where the service it ships is enabled but not started, idles on the shipped configuration, and once an app is
//! configured deploys from a bucket and rolls back; `dpkg -r` keeps the configuration and the state, `dpkg -P`
//! removes them.
//!
//! The package holds the release binary; the tests' own (debug) binary publishes releases and generates the
//! reference man pages and completions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::bucket::wait_for;
use crate::harness::{free_port, Out, BIN};
use crate::nspawn::{get, rootfs, signing_key, Bind, Container};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The commands a person sees (`--help`), each with a man page and in every completion script.
const COMMANDS: &[&str] = &[
    "daemon",
    "deploy",
    "rollback",
    "status",
    "releases",
    "history",
    "report",
    "pin",
    "unpin",
    "clear",
    "prune",
    "check",
    "keygen",
    "publish",
    "fleet",
    "config",
    "completions",
    "demo",
];

/// The one package in target/debian/; a missing one fails, saying how to build it.
fn deb() -> PathBuf {
    let dir = Path::new(REPO).join("target/debian");
    let debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().unwrap().to_string_lossy();
                    name.starts_with("switchback_") && name.ends_with(".deb")
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        debs.len(),
        1,
        "want exactly one switchback_*.deb in {} (found {debs:?}): run packaging/build-deb (tests/run does, after \
         installing cargo-deb into target/tools)",
        dir.display()
    );
    debs.into_iter().next().unwrap()
}

fn run(cmd: &mut Command) -> Out {
    let out = cmd.output().map(Out::from).unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert_eq!(out.code, 0, "{cmd:?}: {out:#?}");
    out
}

/// One line of `dpkg-deb --contents`: the mode string and owner of a path (`./usr/bin/switchback`).
struct Entry {
    mode: String,
    owner: String,
}

fn contents(deb: &Path) -> BTreeMap<String, Entry> {
    let out = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    out.stdout
        .lines()
        .map(|line| {
            // drwxr-xr-x root/root         0 2026-12-07 19:00 ./etc/switchback/
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() >= 6, "unexpected line of dpkg-deb --contents: {line}");
            let path = f[5].trim_end_matches('/').to_owned();
            (path, Entry { mode: f[0].to_owned(), owner: f[1].to_owned() })
        })
        .collect()
}

/// The unit's path in the package: /lib or /usr/lib (merged /usr makes them one).
fn unit_path(entries: &BTreeMap<String, Entry>) -> String {
    ["./lib/systemd/system/switchback.service", "./usr/lib/systemd/system/switchback.service"]
        .into_iter()
        .find(|p| entries.contains_key(*p))
        .unwrap_or_else(|| panic!("no switchback.service in the package: {:?}", entries.keys().collect::<Vec<_>>()))
        .to_owned()
}

/// The control data (dpkg-deb --info), the files and their modes, the conffile, the maintainer scripts.
#[test]
fn the_package_holds_the_binary_unit_config_docs_and_completions() {
    let deb = deb();
    let info = run(Command::new("dpkg-deb").arg("--field").arg(&deb)).stdout;
    let field = |name: &str| -> String {
        let prefix = format!("{name}: ");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {name} field in the package's control:\n{info}"))
            .to_owned()
    };
    assert_eq!(field("Package"), "switchback");
    assert!(field("Version").starts_with(env!("CARGO_PKG_VERSION")), "{info}");
    let arch = run(Command::new("dpkg").arg("--print-architecture")).stdout;
    assert_eq!(field("Architecture"), arch.trim());
    assert_eq!(field("Section"), "admin");
    assert_eq!(field("Priority"), "optional");
    assert!(field("Depends").contains("libc6"), "the binary's shared library dependencies: {info}");
    // TLS to the buckets verifies against the system's trust store.
    assert!(field("Recommends").split(", ").any(|r| r == "ca-certificates"), "{info}");
    assert!(field("Maintainer").contains('<'), "{info}");
    assert!(!field("Description").is_empty());
    let words = info.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words.contains("enabled but not started"), "the description says how the service is installed: {info}");

    let entries = contents(&deb);
    let unit = unit_path(&entries);
    let mut want: Vec<(String, &str)> = vec![
        ("./usr/bin/switchback".into(), "-rwxr-xr-x"),
        (unit.clone(), "-rw-r--r--"),
        ("./etc/switchback/switchback.toml".into(), "-rw-r--r--"),
        ("./usr/share/bash-completion/completions/switchback".into(), "-rw-r--r--"),
        ("./usr/share/zsh/vendor-completions/_switchback".into(), "-rw-r--r--"),
        ("./usr/share/fish/vendor_completions.d/switchback.fish".into(), "-rw-r--r--"),
        ("./usr/share/doc/switchback/copyright".into(), "-rw-r--r--"),
        ("./usr/share/doc/switchback/changelog.Debian.gz".into(), "-rw-r--r--"),
        ("./usr/share/man/man1/switchback.1.gz".into(), "-rw-r--r--"),
    ];
    for c in COMMANDS {
        want.push((format!("./usr/share/man/man1/switchback-{c}.1.gz"), "-rw-r--r--"));
    }
    want.push(("./usr/share/man/man1/switchback-fleet-status.1.gz".into(), "-rw-r--r--"));
    want.push(("./usr/share/man/man1/switchback-config-check.1.gz".into(), "-rw-r--r--"));
    for (path, mode) in &want {
        let e = entries.get(path).unwrap_or_else(|| panic!("{path} is not in the package"));
        assert_eq!(&e.mode, mode, "mode of {path}");
    }
    for (path, e) in &entries {
        assert!(e.owner == "0/0" || e.owner == "root/root", "{path} belongs to {}, not root", e.owner);
        let bits = e.mode.as_bytes();
        assert!(bits[5] != b'w' && bits[8] != b'w', "{path} is writable by group or others: {}", e.mode);
        assert!(!e.mode.contains(['s', 'S', 't', 'T']), "{path} has a setuid, setgid or sticky bit: {}", e.mode);
        if e.mode.starts_with('-') && !path.starts_with("./usr/bin/") {
            assert!(!e.mode.contains('x'), "{path} is executable: {}", e.mode);
        }
    }
    // Nothing hidden ships a page; no stray files.
    assert!(!entries.keys().any(|p| p.contains("demo-service") || p.contains("manpages")), "{:?}", entries.keys());
    let man_pages = entries.keys().filter(|p| p.starts_with("./usr/share/man/man1/")).count();
    assert_eq!(man_pages, 1 + COMMANDS.len() + 2, "man pages: switchback, one per command, fleet status, config check");

    // The control files: the one conffile, the scripts (valid sh), the unit enabled, and not started, at install.
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control");
    run(Command::new("dpkg-deb").arg("--control").arg(&deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("the package declares conffiles");
    assert_eq!(conffiles.lines().collect::<Vec<_>>(), ["/etc/switchback/switchback.toml"]);
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{script}: {e}"));
        assert!(!text.contains("#DEBHELPER#"), "{script}: the systemd fragment was not inserted");
        run(Command::new("sh").arg("-n").arg(&path));
    }
    // The systemd fragments, each inserted once: enable at install; on an upgrade, restart only a running agent;
    // stop at removal; the state of the unit forgotten at purge.
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert_eq!(postinst.matches("deb-systemd-helper enable switchback.service").count(), 1, "{postinst}");
    assert_eq!(postinst.matches("deb-systemd-invoke try-restart switchback.service").count(), 1, "{postinst}");
    assert!(!postinst.contains("deb-systemd-invoke start"), "the package must not start the agent: {postinst}");
    let prerm = std::fs::read_to_string(control.join("prerm")).unwrap();
    assert_eq!(prerm.matches("deb-systemd-invoke stop switchback.service").count(), 1, "{prerm}");
    let postrm = std::fs::read_to_string(control.join("postrm")).unwrap();
    assert!(postrm.contains("rm -rf /var/lib/switchback"), "{postrm}");
    assert_eq!(postrm.matches("deb-systemd-helper purge switchback.service").count(), 1, "{postrm}");

    // The files themselves: the unit and the configuration as in the repository, the binary this version.
    let root = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("--extract").arg(&deb).arg(&root));
    // md5sums (what `dpkg --verify` checks) lists every regular file, with its sum.
    let md5sums = std::fs::read_to_string(control.join("md5sums")).expect("the package has an md5sums file");
    let mut listed: Vec<String> = md5sums.lines().map(|l| format!("./{}", l.split_once("  ").unwrap().1)).collect();
    listed.sort();
    let files: Vec<String> = entries.iter().filter(|(_, e)| e.mode.starts_with('-')).map(|(p, _)| p.clone()).collect();
    assert_eq!(listed, files, "md5sums lists every file of the package");
    run(Command::new("md5sum")
        .args(["--check", "--quiet", "--strict"])
        .arg(control.join("md5sums"))
        .current_dir(&root));
    let shipped = |p: &str| std::fs::read(root.join(p.trim_start_matches("./"))).unwrap();
    assert_eq!(shipped(&unit), std::fs::read(Path::new(REPO).join("systemd/switchback.service")).unwrap());
    assert_eq!(
        shipped("./etc/switchback/switchback.toml"),
        std::fs::read(Path::new(REPO).join("packaging/switchback.toml")).unwrap()
    );
    // The changelog's newest entry is this version of the package.
    let changelog = gunzip(&root.join("usr/share/doc/switchback/changelog.Debian.gz"));
    assert!(
        changelog.starts_with(&format!("switchback ({}) ", field("Version"))),
        "packaging/debian/changelog's first entry is not version {}:\n{changelog}",
        field("Version")
    );
    let bin = root.join("usr/bin/switchback");
    let version = run(Command::new(&bin).arg("--version")).stdout;
    assert_eq!(version.trim(), format!("switchback {}", env!("CARGO_PKG_VERSION")));
    // The shipped configuration is valid and configures no app.
    let check = run(Command::new(&bin)
        .arg("--config")
        .arg(root.join("etc/switchback/switchback.toml"))
        .args(["--json", "config", "check"]));
    assert_eq!(check.json()["apps"], serde_json::json!([]), "{check:#?}");
}

/// What this build's command line generates, with the test binary.
fn generate(args: &[&str]) -> String {
    run(Command::new(BIN).args(args).env_remove("SWITCHBACK_CONFIG")).stdout
}

fn gunzip(path: &Path) -> String {
    run(Command::new("gzip").arg("-dc").arg(path)).stdout
}

/// The man pages and completions are those this build's clap definitions generate (so they cannot drift from the
/// CLI), the pages render without warnings, and every script names every command.
#[test]
fn the_man_pages_and_completions_are_generated_from_the_command_line() {
    let deb = deb();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("--extract").arg(&deb).arg(&root));

    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/switchback"),
        ("zsh", "usr/share/zsh/vendor-completions/_switchback"),
        ("fish", "usr/share/fish/vendor_completions.d/switchback.fish"),
    ] {
        let shipped = std::fs::read_to_string(root.join(path)).unwrap();
        assert_eq!(
            shipped,
            generate(&["completions", shell]),
            "{path} is not what `switchback completions {shell}` prints now: rebuild the package (packaging/build-deb)"
        );
        for c in COMMANDS {
            assert!(shipped.contains(c), "{shell} completion does not name {c}");
        }
        assert!(!shipped.contains("demo-service") && !shipped.contains("manpages"), "{shell} offers a hidden command");
    }
    run(Command::new("bash").arg("-n").arg(root.join("usr/share/bash-completion/completions/switchback")));
    // The bash completion, loaded, completes the commands.
    let words = run(Command::new("bash").arg("-c").arg(format!(
        "source {}; COMP_WORDS=(switchback de); COMP_CWORD=1; COMP_LINE='switchback de'; COMP_POINT=13; \
         _switchback switchback de switchback; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        root.join("usr/share/bash-completion/completions/switchback").display()
    )))
    .stdout;
    let mut words: Vec<&str> = words.lines().collect();
    words.sort();
    assert_eq!(words, ["demo", "deploy"], "what bash completes for `switchback de`");

    let fresh = tempfile::tempdir().unwrap();
    run(Command::new(BIN).args(["manpages", "--dir"]).arg(fresh.path()).env_remove("SWITCHBACK_CONFIG"));
    let mut generated: Vec<String> = std::fs::read_dir(fresh.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    generated.sort();
    let man1 = root.join("usr/share/man/man1");
    let mut shipped: Vec<String> = std::fs::read_dir(&man1)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".gz").to_owned())
        .collect();
    shipped.sort();
    assert_eq!(shipped, generated, "the package's man pages are those `switchback manpages` writes now");
    for name in &generated {
        let page = gunzip(&man1.join(format!("{name}.gz")));
        assert_eq!(
            page,
            std::fs::read_to_string(fresh.path().join(name)).unwrap(),
            "{name} differs from what this build generates: rebuild the package (packaging/build-deb)"
        );
    }

    // man finds the pages in the package's tree, as it will once installed (the unit's Documentation= names one).
    for page in ["switchback", "switchback-deploy", "switchback-fleet-status"] {
        let found = run(Command::new("man").arg("-w").arg(page).env("MANPATH", root.join("usr/share/man"))).stdout;
        assert_eq!(Path::new(found.trim()), man1.join(format!("{page}.1.gz")), "man -w {page}");
    }

    // switchback(1) renders (groff, as man does) without a warning, with its sections and every command.
    let top = man1.join("switchback.1.gz");
    let out = Command::new("sh")
        .arg("-c")
        .arg("gzip -dc \"$1\" | groff -man -Tutf8 -ww -rLL=100n")
        .arg("sh")
        .arg(&top)
        .output()
        .map(Out::from)
        .unwrap();
    assert_eq!(out.code, 0, "groff: {out:#?}");
    assert!(out.stderr.trim().is_empty(), "groff warns about switchback(1): {}", out.stderr);
    let text = strip_overstrike(&out.stdout);
    for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SUBCOMMANDS", "EXIT STATUS", "FILES", "SEE ALSO"] {
        assert!(text.lines().any(|l| l == section), "switchback(1) has no {section} section:\n{text}");
    }
    for c in COMMANDS {
        assert!(text.contains(&format!("switchback-{c}(1)")), "switchback(1) does not name switchback-{c}(1)");
    }
    for (code, meaning) in switchback::exit::TABLE {
        assert!(text.contains(meaning), "switchback(1) lacks exit code {code}: {meaning}");
    }
    // Each command's page renders too, with its options.
    let deploy = Command::new("sh")
        .arg("-c")
        .arg("gzip -dc \"$1\" | groff -man -Tutf8 -ww -rLL=100n")
        .arg("sh")
        .arg(man1.join("switchback-deploy.1.gz"))
        .output()
        .map(Out::from)
        .unwrap();
    assert!(deploy.code == 0 && deploy.stderr.trim().is_empty(), "{deploy:#?}");
    let deploy = strip_overstrike(&deploy.stdout);
    for want in ["switchback-deploy", "--version", "--file", "--force", "switchback(1)"] {
        assert!(deploy.contains(want), "switchback-deploy(1) lacks {want}:\n{deploy}");
    }
}

/// groff's terminal output with bold and underline (character, backspace, character) and SGR escapes removed.
fn strip_overstrike(s: &str) -> String {
    let mut out: Vec<char> = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{8}' => {
                out.pop();
            }
            '\u{1b}' => {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            c => out.push(c),
        }
    }
    out.into_iter().collect()
}

/// The package installed with dpkg on a fresh Debian root file system under systemd: enabled and not started;
/// started on the shipped configuration, it idles; configured (an app following a file:// bucket, restarted with
/// systemctl), it deploys, rolls a failing release back, and rolls back by hand; installed over itself, the
/// running agent restarts; removed, it keeps the configuration and the state; purged, it leaves neither (nor
/// touches the app's root).
#[test]
fn the_package_installs_runs_the_agent_and_purges_cleanly() {
    let started = Instant::now();
    let deb = deb();
    let rootfs = rootfs();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let port = free_port();
    let public = signing_key(p);
    std::fs::create_dir(p.join("bucket")).unwrap();
    std::fs::write(
        p.join("app.toml"),
        format!(
            r#"[agent]
state_dir = "/var/lib/switchback"
poll_interval = "1s"

[apps.web]
root = "/srv/web"
source = "file:///srv/bucket/web"
trusted_keys = ["{public}"]

[apps.web.service]
unit = "web.service"
timeout = "20s"

[[apps.web.checks]]
http = "http://127.0.0.1:{port}/healthz"
timeout = "1s"

[apps.web.health]
interval = "200ms"
healthy_after = 2
deadline = "3s"
"#
        ),
    )
    .unwrap();
    // The app: the binary's demo HTTP server, run by systemd from the release `current` names when it starts.
    std::fs::write(
        p.join("web.service"),
        format!(
            "[Unit]\nDescription=demo app of the switchback package test\n\n[Service]\n\
             WorkingDirectory=/srv/web/current\n\
             ExecStart=/usr/bin/switchback demo-service serve --dir /srv/web/current --port {port}\n"
        ),
    )
    .unwrap();
    let binds = [
        Bind::ro(&deb, "/root/switchback.deb"),
        Bind::ro(p.join("app.toml"), "/root/app.toml"),
        Bind::ro(p.join("web.service"), "/etc/systemd/system/web.service"),
        Bind::ro(p.join("bucket"), "/srv/bucket"),
    ];
    let c = Container::boot(&rootfs, &p.join("nspawn.log"), &binds);
    let publish = |version: &str, health: u16| {
        let release = p.join(format!("release-{version}"));
        std::fs::create_dir(&release).unwrap();
        std::fs::write(release.join("version.txt"), version).unwrap();
        std::fs::write(release.join("health"), health.to_string()).unwrap();
        run(Command::new(BIN)
            .args(["publish", "--app", "web", "--channel", "production", "--version", version])
            .arg("--to")
            .arg(format!("file://{}", p.join("bucket").display()))
            .arg("--key")
            .arg(p.join("signing.key"))
            .arg(&release)
            .env_remove("SWITCHBACK_CONFIG"));
    };
    let status = || -> serde_json::Value {
        let o = c.exec(&["switchback", "status", "web", "--json"]);
        assert_eq!(o.code, 0, "switchback status inside the container: {o:#?}");
        o.json()["apps"][0].clone()
    };
    let wait_status = |what: &str, done: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        let start = Instant::now();
        loop {
            let s = status();
            if done(&s) {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}; last status: {s:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let serving = |version: &str| {
        let body = get(port, "/version.txt");
        assert!(
            body.as_ref().is_some_and(|(s, b)| *s == 200 && b.ends_with(version)),
            "/version.txt should show {version}: {body:?}"
        );
    };
    let prop = |p: &str| c.prop("switchback.service", p);

    // Installed: enabled, not started; the state directory root's alone; the binary and its pages in place.
    let install = c.ok(&["dpkg", "-i", "/root/switchback.deb"]);
    assert!(install.contains("Setting up switchback"), "{install}");
    assert_eq!(c.exec(&["systemctl", "is-enabled", "switchback.service"]).stdout.trim(), "enabled");
    assert_eq!(prop("ActiveState"), "inactive", "the package does not start the service");
    assert_eq!(prop("UnitFileState"), "enabled");
    assert_eq!(prop("Type"), "notify");
    assert_eq!(c.ok(&["stat", "-c", "%a %U:%G", "/var/lib/switchback"]).trim(), "700 root:root");
    assert_eq!(c.ok(&["switchback", "--version"]).trim(), format!("switchback {}", env!("CARGO_PKG_VERSION")));
    c.ok(&["test", "-s", "/usr/share/man/man1/switchback.1.gz"]);
    let verify = c.exec(&["dpkg", "--verify", "switchback"]);
    assert!(verify.code == 0 && verify.stdout.is_empty(), "dpkg --verify after install: {verify:#?}");
    // (The container has no man(1): the Documentation= page is opened on the host, from the package's tree.)
    let analyze = c.exec(&["systemd-analyze", "verify", "--man=no", "switchback.service"]);
    assert!(analyze.code == 0 && analyze.stderr.trim().is_empty(), "systemd-analyze verify: {analyze:#?}");
    assert!(c.ok(&["systemctl", "show", "-p", "Documentation", "switchback.service"]).contains("man:switchback(1)"));

    // Started on the shipped configuration (no app): ready, and saying it idles.
    c.ok(&["systemctl", "start", "switchback.service"]);
    assert_eq!(prop("ActiveState"), "active");
    assert_eq!(prop("SubState"), "running");
    assert_eq!(prop("StatusText"), "idle: no apps configured");
    let journal = c.journal(&["switchback.service"]);
    assert!(journal.contains("no apps configured in /etc/switchback/switchback.toml"), "{journal}");
    assert_eq!(c.ok(&["stat", "-c", "%a %U:%G", "/var/lib/switchback"]).trim(), "700 root:root", "after a start");

    // Configured as an operator would (the conffile edited), checked, and reloaded: the app is picked up.
    c.ok(&["install", "-m", "0644", "/root/app.toml", "/etc/switchback/switchback.toml"]);
    c.ok(&["switchback", "config", "check"]);
    c.ok(&["systemctl", "reload", "switchback.service"]);
    wait_for("STATUS= about the app after the reload", Duration::from_secs(10), || {
        prop("StatusText").starts_with("web on nothing")
    });
    publish("1.0.0", 200);
    wait_status("1.0.0 to be deployed", &|s| {
        s["current"] == "1.0.0"
            && s["in_flight"].is_null()
            && s["last_health"]["version"] == "1.0.0"
            && s["last_health"]["healthy"] == true
    });
    serving("1.0.0");

    // A restart of the agent reaches READY again, after reconciling the app.
    c.ok(&["systemctl", "restart", "switchback.service"]);
    assert_eq!(prop("ActiveState"), "active");
    wait_for("STATUS= to say the app is on 1.0.0", Duration::from_secs(10), || {
        prop("StatusText").starts_with("web on 1.0.0")
    });

    // A release that fails its health check is rolled back, and marked bad.
    publish("2.0.0", 500);
    // (Waiting also for the way back to finish: 1.0.0 restarted and checked again.)
    let s = wait_status("2.0.0 to be marked bad and 1.0.0 checked again", &|s| {
        s["bad"].as_array().is_some_and(|b| b.iter().any(|b| b["version"] == "2.0.0"))
            && s["in_flight"].is_null()
            && s["last_health"]["version"] == "1.0.0"
            && s["last_health"]["healthy"] == true
    });
    assert_eq!(s["current"], "1.0.0", "{s:#}");
    serving("1.0.0");

    // A healthy release, then a rollback by hand (the daemon's lock is asked for and given).
    publish("3.0.0", 200);
    wait_status("3.0.0 to be deployed", &|s| {
        s["current"] == "3.0.0" && s["in_flight"].is_null() && s["last_health"]["version"] == "3.0.0"
    });
    serving("3.0.0");
    let rollback = c.exec(&["switchback", "--json", "rollback", "web", "--reason", "package test"]);
    assert_eq!(rollback.code, 0, "{rollback:#?}");
    assert_eq!(rollback.json()["to"], "1.0.0", "{rollback:#?}");
    let s = status();
    assert_eq!(s["current"], "1.0.0", "{s:#}");
    serving("1.0.0");
    assert_eq!(prop("NRestarts"), "0");

    // Installed again over itself (as an upgrade is): the running agent is restarted onto the new files, and
    // reaches READY on the app's release.
    let pid = prop("MainPID");
    c.ok(&["dpkg", "-i", "/root/switchback.deb"]);
    assert_eq!(prop("ActiveState"), "active");
    assert_ne!(prop("MainPID"), pid, "an upgrade restarts a running agent");
    wait_for("STATUS= to say the app is on 1.0.0 after the upgrade", Duration::from_secs(10), || {
        prop("StatusText").starts_with("web on 1.0.0")
    });
    assert_eq!(status()["current"], "1.0.0");

    // Removed (while running): stopped, the binary and unit gone; the edited configuration and the state kept.
    c.ok(&["dpkg", "-r", "switchback"]);
    assert_eq!(prop("ActiveState"), "inactive", "removal stops the service");
    assert_eq!(c.exec(&["test", "-e", "/usr/bin/switchback"]).code, 1, "the binary is removed");
    assert_eq!(c.ok(&["dpkg-query", "-W", "-f", "${Status}", "switchback"]), "deinstall ok config-files");
    assert_eq!(
        c.ok(&["cat", "/etc/switchback/switchback.toml"]),
        std::fs::read_to_string(p.join("app.toml")).unwrap(),
        "the configuration survives a remove"
    );
    c.ok(&["test", "-s", "/var/lib/switchback/web/history.jsonl"]);
    c.ok(&["test", "-L", "/srv/web/current"]);

    // Installed again: the state is still the app's (no release lost), the unit enabled again.
    c.ok(&["dpkg", "-i", "/root/switchback.deb"]);
    assert_eq!(prop("UnitFileState"), "enabled");
    let s = status();
    assert_eq!(s["current"], "1.0.0", "{s:#}");
    assert!(s["bad"].as_array().unwrap().iter().any(|b| b["version"] == "3.0.0"), "{s:#}");

    // Purged: the configuration and the state are gone; the app's root stays.
    c.ok(&["dpkg", "-P", "switchback"]);
    assert_eq!(c.exec(&["dpkg-query", "-W", "switchback"]).code, 1, "the package is gone");
    for gone in ["/var/lib/switchback", "/etc/switchback", "/usr/bin/switchback"] {
        assert_eq!(c.exec(&["test", "-e", gone]).code, 1, "{gone} is left after a purge");
    }
    c.ok(&["test", "-d", "/srv/web/releases/1.0.0"]);
    eprintln!("package test took {:?}", started.elapsed());
}
