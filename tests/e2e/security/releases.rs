//! The app's own user against its releases: releases are root's and read-only, hooks and exec checks run as the
//! app user with a clean environment, a tampered release never runs, links planted in `shared/` are not followed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{chmod, marks, mode, open_up, tree, User};
use crate::harness::{Host, Out, Release};

/// A host whose app `web` belongs to `u`, reachable by it; `extra` follows `owner` in `[apps.web]`.
fn user_host(u: &User, extra: &str) -> Host {
    let h = Host::with_app_config(&format!("owner = \"{}\"\n{extra}", u.name));
    open_up(&h);
    h
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

/// What a directory tree looks like to an auditor: each path with its owner, group, mode and size.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, u32, u32, u64)> {
    let mut v: Vec<_> = tree(dir).into_iter().map(|(p, m)| (p, m.uid(), m.gid(), m.mode(), m.len())).collect();
    v.sort();
    v
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
