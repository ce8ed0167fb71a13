//! Writers of what the agent fetches, without the signing key: an inbox writer who swaps the archive behind a
//! signed manifest or leaves fifos and links, a bucket writer who forges, replays or stretches manifests, and a
//! bucket that redirects to another origin.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{marks, open_up, run, status, User, LIVE};
use crate::bucket::{
    accepted_sequence, keygen, publish, release_dir, trust_new_key, wait_for, wait_for_clock_past, Daemon,
};
use crate::harness::{Host, Release};

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
