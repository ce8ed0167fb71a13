//! systemd's notify protocol on the test's own socket: READY, STATUS, watchdog pings, reloads and stops; a socket
//! nobody reads never blocks the daemon; a hung worker stops the pings, and a restart recovers.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use super::{file_host, file_publish, notify_socket, HEALTH, LIVE};
use crate::bucket::{wait_for, Daemon};
use crate::harness::Host;

/// Reads notify datagrams until `want` arrives (or panics after `timeout`); returns every message seen.
fn expect_notify(sock: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    loop {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == want || (want.ends_with('=') && l.starts_with(want)));
            seen.push(msg);
            if hit {
                return seen;
            }
        }
        assert!(start.elapsed() < timeout, "no {want} within {timeout:?}; got {seen:#?}");
    }
}

#[test]
fn speaks_the_systemd_notify_protocol() {
    let (host, _svc, key, base) = file_host(HEALTH);
    file_publish(&host, &key, &base, "1.0.0", 200, &[]);
    let (sock, env) = notify_socket(&host);
    let mut d = Daemon::start(&host, &env);
    expect_notify(&sock, "READY=1", LIVE);
    wait_for("1.0.0 to go live", LIVE, || host.current().as_deref() == Some("1.0.0"));
    let seen = expect_notify(&sock, "STATUS=", Duration::from_secs(5));
    assert!(seen.iter().any(|m| m.contains("STATUS=web ")), "{seen:#?}");
    // Pings at half the watchdog interval: two within 1.5 s.
    expect_notify(&sock, "WATCHDOG=1", Duration::from_secs(2));
    expect_notify(&sock, "WATCHDOG=1", Duration::from_secs(2));
    d.signal("HUP");
    expect_notify(&sock, "RELOADING=1", Duration::from_secs(5));
    expect_notify(&sock, "READY=1", Duration::from_secs(5));
    assert!(d.log().contains("configuration reloaded"), "{}", d.log());
    d.signal("TERM");
    expect_notify(&sock, "STOPPING=1", Duration::from_secs(5));
    assert_eq!(d.stop(), 0);
}

/// A service manager that stops reading its notify socket (a datagram socket: its queue holds a handful of
/// messages, then a blocking sender waits) costs the daemon nothing: it goes on, and SIGTERM still stops it.
#[test]
fn a_notify_socket_nobody_reads_never_blocks_the_daemon() {
    let (host, _svc, key, base) = file_host(HEALTH);
    file_publish(&host, &key, &base, "1.0.0", 200, &[]);
    let (sock, mut env) = notify_socket(&host);
    env.retain(|(k, _)| k != "WATCHDOG_USEC");
    env.push(("WATCHDOG_USEC".to_owned(), "200000".to_owned()));
    let mut d = Daemon::start(&host, &env);
    expect_notify(&sock, "READY=1", LIVE);
    // From here on nobody reads: pings every 100 ms fill the queue within a second or two.
    wait_for("1.0.0 to go live", LIVE, || host.current().as_deref() == Some("1.0.0"));
    let polls = |h: &Host| h.run(&["--json", "status", "web"]).json()["apps"][0]["daemon"]["last_poll"].clone();
    // Three polls later (1.5 s, some 15 messages unread), the daemon still polls and answers.
    for _ in 0..3 {
        let before = polls(&host);
        wait_for("the daemon to poll again with its notify socket full", LIVE, || polls(&host) != before);
    }
    let start = Instant::now();
    assert_eq!(d.stop(), 0);
    assert!(start.elapsed() < Duration::from_secs(10), "SIGTERM took {:?}", start.elapsed());
    drop(sock);
}

#[test]
fn a_hung_worker_stops_the_watchdog_pings_and_a_restart_recovers() {
    let (host, _svc, key, base) = file_host(HEALTH);
    file_publish(&host, &key, &base, "1.0.0", 200, &[]);
    let (sock, mut env) = notify_socket(&host);
    env.push(("SWITCHBACK_HANG_AT".to_owned(), "after-unpack".to_owned()));
    let mut d = Daemon::start(&host, &env);
    wait_for("the worker to hang", LIVE, || d.log().contains("hanging at crash point"));
    // Pings may go on until the silence exceeds the watchdog interval; from the daemon's first word that it
    // withholds them, none may come, through four more times that a ping was due (every 500 ms).
    let withheld = |d: &Daemon| d.log().matches("withholding the watchdog ping").count();
    wait_for("the daemon to withhold a ping", LIVE, || withheld(&d) > 0);
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    while sock.recv(&mut buf).is_ok() {}
    let from = withheld(&d);
    wait_for("four more pings withheld", LIVE, || withheld(&d) >= from + 4);
    let mut late = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        late.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(!late.iter().any(|m| m.contains("WATCHDOG=1")), "pinged while hung: {late:#?}");
    assert!(d.log().contains("withholding the watchdog ping"), "{}", d.log());
    assert_eq!(host.current(), None);
    // What systemd does to a silent service: SIGKILL, then start it again.
    if let Some(c) = d.child.as_mut() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let mut d = Daemon::start(&host, &[]);
    wait_for("the restarted daemon to deploy 1.0.0", LIVE, || host.current().as_deref() == Some("1.0.0"));
    let dirs = host.release_dirs();
    assert!(!dirs.iter().any(|d| d.starts_with('.')), "{dirs:?}");
    assert_eq!(d.stop(), 0);
}
