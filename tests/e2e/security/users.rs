//! Any local user against root: the app's lock and state, the configuration root uses, credentials in a source
//! URL, who the history says acted; and a command whose stdout is closed.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{chmod, mode, open_up, run, status, tree, User, LIVE};
use crate::bucket::{keygen, publish, wait_for, Daemon};
use crate::harness::{Host, Out, Release, BIN};

/// A child process killed (by its pid) and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `switchback --config CONFIG` as root, without the test's own SWITCHBACK_CONFIG or SUDO_USER.
fn sb(config: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config").arg(config).env_remove("SWITCHBACK_CONFIG").env_remove("SUDO_USER");
    c
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
