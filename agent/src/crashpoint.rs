//! Named crash points for the crash tests: with the `crash-points` feature, a process whose environment has
//! `SWITCHBACK_CRASH_AT=NAME` kills itself with SIGKILL when it reaches the point NAME (no destructors, no flush:
//! as close to power loss as a process can get), and one with `SWITCHBACK_HANG_AT=NAME` stops there for good
//! without a sign of life (a hung agent, for the watchdog tests). Without the feature, `hit` compiles to nothing.

#[cfg(feature = "crash-points")]
pub fn hit(name: &str) {
    if std::env::var("SWITCHBACK_CRASH_AT").is_ok_and(|want| want == name) {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    if std::env::var("SWITCHBACK_HANG_AT").is_ok_and(|want| want == name) {
        tracing::warn!("hanging at crash point {name} (SWITCHBACK_HANG_AT)");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn hit(_name: &str) {}
