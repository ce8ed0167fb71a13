//! A prune killed between its steps (`PRUNE_CASES`, and the prune that follows a deploy), and the reconcile itself
//! killed while it recovers an interrupted deploy.

use super::{
    archive, assert_complete, assert_settled, configure, crash_at, deploy, deploy_works_after, in_pairs,
    next_command_converges, recover_events, state, FAST, LIVE_V2, PRUNE_CASES, RECONCILE_AFTER_RECORD,
    RECONCILE_MID_RECOVERY,
};
use crate::harness::Host;

/// `prune --keep 1` of v1..v4 (removing v2, then v1), killed between its steps; and the prune after a deploy.
#[cfg(feature = "crash-points")]
#[test]
fn every_prune_crash_point_converges() {
    in_pairs(PRUNE_CASES, |case| {
        let h = Host::new();
        configure(&h, 10, FAST);
        for v in ["v1", "v2", "v3", "v4"] {
            deploy(&h, v, true).expect(0);
        }
        crash_at(&h, &["prune", "web", "--keep", "1"], case);
        h.run(&["prune", "web", "--keep", "1"]).expect(0);
        assert_eq!(h.release_dirs(), ["v3", "v4"], "{}", case.0);
        assert_settled(&h, case.0);
        deploy_works_after(&h, case.0);
    });
    // The prune that follows a deploy (keep 2: deploying v4 removes v2), killed after removing a release.
    let h = Host::new();
    configure(&h, 2, FAST);
    for v in ["v1", "v2", "v3"] {
        deploy(&h, v, true).expect(0);
    }
    crash_at(
        &h,
        &["deploy", "web", "--file", &archive(&h, "v4", true), "--version", "v4"],
        &("prune-mid-remove", "v4", &[] as &[&str]),
    );
    assert_eq!(h.release_dirs(), ["v3", "v4"]);
    assert_eq!(state(&h)["last_good"], "v4");
    deploy_works_after(&h, "prune-mid-remove after a deploy");
}

/// The reconcile itself killed while it recovers an interrupted deploy: the command after it starts over.
#[cfg(feature = "crash-points")]
#[test]
fn a_reconcile_killed_mid_recovery_is_recovered_again() {
    let h = Host::new();
    configure(&h, 10, FAST);
    deploy(&h, "v1", true).expect(0);
    let a = archive(&h, "v2", true);
    let args = ["deploy", "web", "--file", &a, "--version", "v2"];
    assert_eq!(h.run_env(&args, &[("SWITCHBACK_CRASH_AT", "after-restart")]).code, -1);
    assert_eq!(assert_complete(&h), "v2");
    // Killed after re-verifying v2, before committing it or writing history.
    let out = h.run_env(&["unpin", "web"], &[("SWITCHBACK_CRASH_AT", RECONCILE_MID_RECOVERY)]);
    assert_eq!(out.code, -1, "{out:#?}");
    assert_eq!(assert_complete(&h), "v2");
    assert_eq!(recover_events(&h).len(), 0);
    assert_eq!(state(&h)["in_flight"]["version"], "v2", "still journaled");
    // Killed after writing the recovery to history, before saving the state: the event is there, and the next
    // command recovers (and says so) again rather than losing it.
    let out = h.run_env(&["unpin", "web"], &[("SWITCHBACK_CRASH_AT", RECONCILE_AFTER_RECORD)]);
    assert_eq!(out.code, -1, "{out:#?}");
    let events = recover_events(&h);
    assert_eq!(events.len(), 1);
    assert!(events[0]["reason"].as_str().unwrap().contains("v2 is healthy"), "{events:?}");
    assert_eq!(state(&h)["in_flight"]["version"], "v2", "the state was not saved yet");
    next_command_converges(&h, "reconcile", 1, LIVE_V2);
    assert_eq!(state(&h)["last_good"], "v2");
    deploy_works_after(&h, "reconcile");
}
