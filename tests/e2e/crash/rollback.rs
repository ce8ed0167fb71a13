//! A rollback killed at each of its crash points: a manual one (`ROLLBACK_CASES`) and the automatic one after an
//! unhealthy deploy (`AUTOMATIC_ROLLBACK_CASES`).

use super::{
    archive, configure, crash_at, deploy, deploy_works_after, in_pairs, state, AUTOMATIC_ROLLBACK_CASES, FAST,
    ROLLBACK_CASES,
};
use crate::harness::Host;

/// A manual rollback from v2 to v1, killed at each of its points: the next command finishes the rollback.
#[cfg(feature = "crash-points")]
#[test]
fn every_rollback_crash_point_converges() {
    in_pairs(ROLLBACK_CASES, |case| {
        let h = Host::new();
        configure(&h, 10, FAST);
        deploy(&h, "v1", true).expect(0);
        deploy(&h, "v2", true).expect(0);
        crash_at(&h, &["rollback", "web"], case);
        assert_eq!(h.current().as_deref(), Some("v1"), "{}: the rollback was not finished", case.0);
        let st = state(&h);
        assert_eq!(st["last_good"], "v1", "{}: {st}", case.0);
        assert!(st["bad"]["v2"]["reason"].as_str().unwrap().contains("manual rollback"), "{}: {st}", case.0);
        deploy_works_after(&h, case.0);
    });
}

/// A deploy of an unhealthy v2, killed in its checks and at each point of the automatic rollback to v1.
#[cfg(feature = "crash-points")]
#[test]
fn every_automatic_rollback_crash_point_converges() {
    in_pairs(AUTOMATIC_ROLLBACK_CASES, |case| {
        let h = Host::new();
        configure(&h, 10, FAST);
        deploy(&h, "v1", true).expect(0);
        let a = archive(&h, "v2", false);
        crash_at(&h, &["deploy", "web", "--file", &a, "--version", "v2"], case);
        assert_eq!(h.current().as_deref(), Some("v1"), "{}", case.0);
        let st = state(&h);
        assert!(st["bad"]["v2"].is_object(), "{}: v2 must stay marked bad: {st}", case.0);
        assert_eq!(st["last_good"], "v1", "{}: {st}", case.0);
        deploy_works_after(&h, case.0);
    });
}
