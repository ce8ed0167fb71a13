//! The operator CLI on a temp root: deploy, rollback, status, releases, history, pin, prune, config check.

use crate::harness::*;

#[test]
fn deploy_then_status_shows_it() {
    let h = Host::new();
    h.deploy_simple("v1").expect(0);
    assert_eq!(h.current().as_deref(), Some("v1"));
    assert_eq!(h.read_current("version.txt"), "v1");
    let s = h.run(&["--json", "status", "web"]).expect(0).json();
    assert_eq!(s["schema"], 1);
    let app = &s["apps"][0];
    assert_eq!(app["current"], "v1");
    assert_eq!(app["last_good"], "v1");
    assert_eq!(app["checked"], false);
    assert!(app["in_flight"].is_null());
}
