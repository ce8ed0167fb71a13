//! Downloads and the host: a download is a step of the deploy (and of its duration), with progress on a terminal;
//! a write fault of the host while unpacking is not the archive's fault, and the daemon tries again; the daemon stays
//! responsive (`STATUS=`, the watchdog) while it hashes and writes a large download.

use std::os::unix::fs::DirBuilderExt;
use std::time::{Duration, Instant};

use super::deploy_event;
#[cfg(feature = "crash-points")]
use super::status;
use crate::bucket::{publish, release_dir, wait_for, Daemon};
use crate::daemon::{file_host, notify_socket, wait_served, S3Host, HEALTH, LIVE};
use crate::harness::*;

fn noise(n: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::new();
    let mut v = vec![0u8; n];
    rng.fill(&mut v);
    v
}

fn step<'a>(steps: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    steps.as_array().unwrap().iter().find(|s| s["step"] == name).unwrap_or_else(|| panic!("no {name} step: {steps:#}"))
}

fn ms_sum(steps: &serde_json::Value) -> u64 {
    steps.as_array().unwrap().iter().map(|s| s["ms"].as_u64().unwrap()).sum()
}

/// Point 12.
#[test]
fn deploy_by_version_from_s3_shows_its_download_as_a_step_that_counts_in_history() {
    let s = S3Host::new(HEALTH);
    let dir = release_dir(&s.host, "1.0.0", 200);
    std::fs::write(dir.join("blob.bin"), noise(16 << 20)).unwrap();
    let published = s.publish_with_key(&s.key, "1.0.0", &["--json", dir.to_str().unwrap()]).expect(0).json();
    let size = published["size"].as_u64().unwrap();
    let env: Vec<(&str, &str)> = s.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let out = s.host.run_env(&["--json", "deploy", "web", "--version", "1.0.0"], &env).expect(0).json();
    assert_eq!(out["downloaded"].as_u64(), Some(size), "{out:#}");
    assert_eq!(out["steps"][0]["step"], "download", "the download is the first step: {out:#}");
    let detail = out["steps"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("from s3://releases/web/releases/1.0.0.tar.zst"), "{detail}");
    assert_eq!(s.proxy.requests("GET /releases/web/releases/1.0.0.tar.zst").len(), 1);
    let ev = s.host.history().into_iter().rfind(|e| e["op"] == "deploy").unwrap();
    assert_eq!(step(&ev["steps"], "download")["ms"], out["steps"][0]["ms"], "{ev}");
    let (took, steps) = (ev["duration_ms"].as_u64().unwrap(), ms_sum(&ev["steps"]));
    eprintln!("deploy: {took} ms; steps: {steps} ms, of which the download {} ms", out["steps"][0]["ms"]);
    assert!(took >= steps, "history says {took} ms for steps that took {steps} ms (the download left out?): {ev}");

    // On a terminal, the download shows its progress (and the steps their lines).
    let dir2 = release_dir(&s.host, "2.0.0", 200);
    std::fs::write(dir2.join("blob.bin"), noise(4 << 20)).unwrap();
    s.publish_with_key(&s.key, "2.0.0", &[dir2.to_str().unwrap()]).expect(0);
    let cmd = format!("{BIN} --config {} deploy web --version 2.0.0", s.host.config.display());
    let tty: Out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .envs(env.iter().copied())
        .output()
        .unwrap()
        .into();
    tty.expect(0);
    assert!(tty.stdout.contains("downloading 2.0.0: ") && tty.stdout.contains("(100%)"), "{}", tty.stdout);
    assert!(tty.stdout.lines().any(|l| l.trim_start().starts_with("download ")), "{}", tty.stdout);
    wait_served(&s.svc, "2.0.0");
}

/// Point 14: a read-only filesystem under the unpack (EROFS) is a fault of this host, not a refused archive: it
/// is said as such, nothing is refused for good, and the daemon deploys the same artifact once the host is fixed.
#[cfg(feature = "crash-points")]
#[test]
fn a_host_write_fault_while_unpacking_is_not_blamed_on_the_archive_and_the_daemon_retries() {
    let h = Host::new();
    let _fs = crate::faults::Tmpfs::mount(&h.root(), "128m");
    h.write_config(&format!("source = \"file://{}/bucket/web\"\ntrusted_keys = [\"PUBLIC_KEY\"]", h.path().display()));
    let key = crate::bucket::trust_new_key(&h);
    let base = format!("file://{}/bucket", h.path().display());
    let dir = release_dir(&h, "1.0.0", 200);
    for i in 0..4 {
        std::fs::write(dir.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    publish(&h, &[], &base, &key, "1.0.0", &[dir.to_str().unwrap()]).expect(0);
    let pause = h.path().join("pause");
    let env =
        [("SWITCHBACK_PAUSE_AT", "mid-unpack:1".to_owned()), ("SWITCHBACK_PAUSE_FILE", pause.display().to_string())]
            .map(|(k, v)| (k.to_owned(), v))
            .to_vec();
    let mut d = Daemon::start(&h, &env);
    // One entry is written; then the filesystem under the release goes read-only (a failing disk, remounted).
    wait_for("the daemon to pause mid-unpack", LIVE, || pause.exists());
    remount(&h.root(), "ro");
    std::fs::remove_file(&pause).unwrap();
    wait_for("the unpack to fail", LIVE, || d.log().contains("this host's filesystem failed"));
    std::thread::sleep(Duration::from_secs(2));
    let log = d.log();
    assert!(log.contains("Read-only file system"), "{log}");
    assert!(!log.contains("refused archive") && !log.contains("refused the artifact"), "blamed on the archive:\n{log}");
    let st = status(&h);
    assert!(st["last_refusal"].is_null(), "{st:#}");
    let ev = h.history().into_iter().find(|e| e["op"] == "deploy").expect("the failed deploy is recorded");
    let reason = ev["reason"].as_str().unwrap();
    assert_eq!(ev["outcome"], "failed", "{ev}");
    assert!(reason.contains("this host's filesystem failed (not the archive: it will be tried again)"), "{reason}");
    assert!(reason.contains("Read-only file system") && !reason.contains("refused archive"), "{reason}");
    assert_eq!(h.current(), None);

    // The disk is fixed: the same artifact deploys, with nothing published again.
    remount(&h.root(), "rw");
    wait_for("the daemon to deploy 1.0.0 after all", LIVE, || h.current().as_deref() == Some("1.0.0"));
    assert_eq!(h.read_current("f3.txt"), "file 3\n");
    assert_eq!(d.stop(), 0);
}

#[cfg(feature = "crash-points")]
fn remount(dir: &std::path::Path, how: &str) {
    let st = std::process::Command::new("mount").args(["-o", &format!("remount,{how}")]).arg(dir).status();
    assert!(st.is_ok_and(|s| s.success()), "cannot remount {} {how}", dir.display());
}

/// Point 15: while the daemon hashes what an earlier run left of a large download (64 MiB), then downloads the
/// rest (32 MiB), its event loop stays free: the watchdog pings keep their pace and `STATUS=` shows the progress.
#[test]
fn the_daemon_stays_responsive_while_it_hashes_and_writes_a_large_download() {
    let (h, svc, key, base) = file_host(HEALTH);
    let dir = release_dir(&h, "1.0.0", 200);
    std::fs::write(dir.join("blob.bin"), noise(96 << 20)).unwrap();
    let published = publish(&h, &[], &base, &key, "1.0.0", &["--json", dir.to_str().unwrap()]).expect(0).json();
    let sha = published["sha256"].as_str().unwrap();
    let artifact = std::fs::read(h.path().join("bucket/web/releases/1.0.0.tar.zst")).unwrap();
    let downloads = h.state_dir().join("downloads");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&downloads).unwrap();
    let left = artifact.len() - (32 << 20);
    std::fs::write(downloads.join(format!("{sha}.tar.zst.part")), &artifact[..left]).unwrap();
    drop(artifact);

    // A watchdog of 400 ms: the daemon pings every 200 to 400 ms while its event loop runs.
    let (sock, mut env) = notify_socket(&h);
    env.retain(|(k, _)| k != "WATCHDOG_USEC");
    env.push(("WATCHDOG_USEC".to_owned(), "400000".to_owned()));
    let mut d = Daemon::start(&h, &env);
    let start = Instant::now();
    let mut seen: Vec<(Duration, String)> = Vec::new();
    let mut buf = [0u8; 4096];
    sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    while !seen.iter().any(|(_, m)| m.contains("deploying 1.0.0")) {
        assert!(start.elapsed() < Duration::from_secs(90), "no deploy of 1.0.0; got {seen:#?}\n{}", d.log());
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push((start.elapsed(), String::from_utf8_lossy(&buf[..n]).into_owned()));
        }
    }
    wait_for("1.0.0 to go live", LIVE, || h.current().as_deref() == Some("1.0.0"));
    wait_served(&svc, "1.0.0");

    // The download's window: from the first word of it to the deploy.
    let from = seen.iter().find(|(_, m)| m.contains("downloading 1.0.0")).expect("STATUS= names the download").0;
    let to = seen.iter().find(|(_, m)| m.contains("deploying 1.0.0")).unwrap().0;
    let pings: Vec<Duration> =
        seen.iter().filter(|(t, m)| *t >= from && *t <= to && m.contains("WATCHDOG=1")).map(|(t, _)| *t).collect();
    let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.extend(pings.first().map(|p| *p - from));
    gaps.extend(pings.last().map(|p| to - *p));
    let worst = gaps.iter().max().copied().unwrap_or(to - from);
    eprintln!("download window {:?}, {} pings, worst gap {worst:?}", to - from, pings.len());
    assert!(to - from >= Duration::from_secs(1), "the download took {:?}: too quick to show anything", to - from);
    assert!(worst < Duration::from_millis(800), "the event loop stalled for {worst:?} during the download");
    let progress: Vec<&String> =
        seen.iter().map(|(_, m)| m).filter(|m| m.contains("STATUS=web on nothing; downloading 1.0.0 (")).collect();
    assert!(progress.iter().any(|m| m.contains("%)")), "no progress in STATUS=: {seen:#?}");
    // It resumed from what was left (hashed, not fetched again).
    let ev = deploy_event(&h, "1.0.0");
    let detail = ev["steps"][0]["detail"].as_str().unwrap();
    assert!(detail.starts_with("32.0 MiB of "), "{detail}");
    assert_eq!(d.stop(), 0);
}
