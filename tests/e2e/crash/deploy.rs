//! A deploy killed at each of its crash points (the cases in `DEPLOY_CASES`), and the daemon killed between
//! downloading an artifact and deploying it.

use std::time::Duration;

use super::{
    archive, configure, crash_at, deploy, deploy_works_after, in_pairs, leftovers, state, AFTER_DOWNLOAD, DEPLOY_CASES,
    FAST,
};
use crate::harness::{Host, Service};

/// A healthy deploy of v2 over v1, killed at each of its points.
#[cfg(feature = "crash-points")]
#[test]
fn every_deploy_crash_point_converges() {
    in_pairs(DEPLOY_CASES, |case| {
        let h = Host::new();
        configure(&h, 10, FAST);
        deploy(&h, "v1", true).expect(0);
        let a = archive(&h, "v2", true);
        crash_at(&h, &["deploy", "web", "--file", &a, "--version", "v2"], case);
        if !case.2.is_empty() && case.1 == "v2" {
            // v2 went live unproven; the reconcile verified and committed it.
            assert_eq!(state(&h)["last_good"], "v2", "{}", case.0);
        }
        deploy_works_after(&h, case.0);
    });
}

/// The daemon killed right after downloading an artifact: the download is in `downloads/`, nothing changed, and
/// the restarted daemon deploys the release.
#[cfg(feature = "crash-points")]
#[test]
fn the_daemon_killed_after_a_download_converges() {
    use crate::bucket::{publish, release_dir, trust_new_key, wait_for, Daemon};
    let (host, _svc) = Service::host_with(
        |h| format!("source = \"file://{}/bucket/web\"\ntrusted_keys = [\"PUBLIC_KEY\"]\n", h.path().display()),
        "start_period = \"0s\"\ninterval = \"100ms\"\nhealthy_after = 2\ndeadline = \"5s\"",
        "",
    );
    let key = trust_new_key(&host);
    let base = format!("file://{}/bucket", host.path().display());
    let publish_v = |v: &str| {
        let dir = release_dir(&host, v, 200);
        publish(&host, &[], &base, &key, v, &[dir.to_str().unwrap()]).expect(0);
    };
    publish_v("1.0.0");
    let proven = |v: &str| {
        host.state_dir().join("state.json").exists() && {
            let st = state(&host);
            st["last_good"] == v && st["in_flight"].is_null()
        }
    };
    let mut d = Daemon::start(&host, &[]);
    wait_for("1.0.0 proven", Duration::from_secs(30), || proven("1.0.0"));
    assert_eq!(d.stop(), 0);
    publish_v("2.0.0");
    let crash = [("SWITCHBACK_CRASH_AT".to_owned(), AFTER_DOWNLOAD.to_owned())];
    let mut d = Daemon::start(&host, &crash);
    wait_for("the daemon killed after the download", Duration::from_secs(30), || !d.alive());
    let status = d.child.as_mut().unwrap().wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "killed by SIGKILL");
    // The artifact the channel names was downloaded whole and verified, then the daemon died.
    let sha = state(&host)["channel"]["sha256"].as_str().unwrap().to_owned();
    let artifact = host.state_dir().join("downloads").join(format!("{sha}.tar.zst"));
    assert!(artifact.is_file(), "the downloaded artifact {} is not there", artifact.display());
    assert_eq!(host.current().as_deref(), Some("1.0.0"));
    assert_eq!(host.read_current("version.txt"), "1.0.0");
    assert!(!host.release_dirs().iter().any(|r| r.starts_with('.')), "{:?}", host.release_dirs());
    let mut d = Daemon::start(&host, &[]);
    wait_for("2.0.0 proven", Duration::from_secs(30), || proven("2.0.0"));
    assert_eq!(d.stop(), 0);
    assert_eq!(leftovers(&host), Vec::<String>::new());
    let s = host.run(&["--json", "status", "web"]).expect(0).json();
    assert!(s["apps"][0]["in_flight"].is_null(), "{s}");
    assert!(!artifact.exists(), "the artifact was not removed after its deploy");
}
