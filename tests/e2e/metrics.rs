//! The daemon's metrics endpoint (`[agent] metrics`): a daemon following a `file://` channel deploys a good release
//! and a failing one (rolled back); a scrape parses as Prometheus text (a strict parser below) and agrees with
//! `history --json` and `report --json`; a scrape while a deploy holds the app's lock answers in milliseconds;
//! bad addresses are clear errors; `report` on an empty history.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::bucket::{wait_for, Daemon};
use crate::daemon::{file_host, file_publish, wait_served, HEALTH, LIVE};
use crate::harness::{free_port, Host};

/// Sets `[agent] metrics` in the host's configuration (the harness writes `[agent]` first, with `poll_interval`).
fn with_metrics(host: &Host, addr: &str) {
    let cfg = std::fs::read_to_string(&host.config).unwrap();
    let cfg =
        cfg.replacen("poll_interval = \"500ms\"\n", &format!("poll_interval = \"500ms\"\nmetrics = \"{addr}\"\n"), 1);
    std::fs::write(&host.config, cfg).unwrap();
}

/// One HTTP exchange: (status, headers lowercased, body).
fn http(port: u16, request: &str) -> (u16, BTreeMap<String, String>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head: {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect::<BTreeMap<_, _>>();
    if let Some(len) = headers.get("content-length") {
        assert_eq!(len.parse::<usize>().unwrap(), body.len(), "Content-Length");
    }
    (status, headers, body.to_owned())
}

fn scrape(port: u16) -> Scrape {
    let (status, headers, body) = http(port, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    Scrape::parse(&body)
}

/// One metric's labels (sorted), as parsed.
type Labels = Vec<(String, String)>;

/// A scrape parsed by the Prometheus text format's rules (0.0.4), strictly: every line is a comment, HELP, TYPE
/// or a sample; a family's TYPE comes once and before its samples; a sample belongs to the family typed last
/// (histograms: `_bucket` with `le`, `_sum`, `_count`, the buckets cumulative and `+Inf` equal to the count);
/// label values are quoted with escapes; no series twice.
#[derive(Debug)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: BTreeMap<(String, Labels), f64>,
    text: String,
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn value(s: &str) -> f64 {
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s.parse().unwrap_or_else(|_| panic!("not a sample value: {s:?}")),
    }
}

/// `{k="v",...}` at the start of `s`: the labels, and the rest of `s`.
fn labels(s: &str) -> (Vec<(String, String)>, &str) {
    let mut out = Vec::new();
    let Some(mut rest) = s.strip_prefix('{') else { return (out, s) };
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return (out, r);
        }
        let eq = rest.find('=').unwrap_or_else(|| panic!("no = in labels: {s}"));
        let name = &rest[..eq];
        assert!(valid_name(name) && !name.contains(':'), "bad label name {name:?} in {s}");
        rest = rest[eq + 1..].strip_prefix('"').unwrap_or_else(|| panic!("unquoted label value in {s}"));
        let mut v = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => v.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => v.push(c),
                    other => panic!("bad escape {other:?} in {s}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => v.push(c),
                None => panic!("unterminated label value in {s}"),
            }
        };
        out.push((name.to_owned(), v));
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else {
            assert!(rest.starts_with('}'), "labels not separated by commas in {s}");
        }
    }
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut samples = BTreeMap::new();
        let mut family: Option<(String, String)> = None;
        // (labels without `le`, le, cumulative count) of each bucket so far.
        let mut buckets: Vec<(Labels, f64, f64)> = Vec::new();
        assert!(text.ends_with('\n'), "the text must end with a newline");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut words = rest.splitn(3, ' ');
                match words.next() {
                    Some("HELP") => assert!(valid_name(words.next().unwrap()), "{line}"),
                    Some("TYPE") => {
                        let name = words.next().unwrap().to_owned();
                        let kind = words.next().unwrap().to_owned();
                        assert!(valid_name(&name), "{line}");
                        assert!(
                            ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind.as_str()),
                            "{line}"
                        );
                        assert!(types.insert(name.clone(), kind.clone()).is_none(), "second TYPE: {line}");
                        assert!(!samples.keys().any(|(n, _): &(String, _)| n == &name), "TYPE after samples: {line}");
                        family = Some((name, kind));
                    }
                    _ => {}
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let end = line.find(['{', ' ']).unwrap_or_else(|| panic!("not a sample: {line}"));
            let name = &line[..end];
            assert!(valid_name(name), "bad metric name in {line}");
            let (mut ls, rest) = labels(&line[end..]);
            let mut parts = rest.trim_start_matches(' ').split(' ');
            let v = value(parts.next().unwrap());
            if let Some(ts) = parts.next() {
                ts.parse::<i64>().unwrap_or_else(|_| panic!("bad timestamp in {line}"));
            }
            assert!(parts.next().is_none(), "trailing text in {line}");
            if let Some((fam, kind)) = &family {
                let ok = match kind.as_str() {
                    "histogram" => [format!("{fam}_bucket"), format!("{fam}_sum"), format!("{fam}_count")]
                        .contains(&name.to_owned()),
                    "summary" => name == fam || name == format!("{fam}_sum") || name == format!("{fam}_count"),
                    _ => name == fam,
                };
                assert!(ok, "sample {name} does not belong to the {kind} {fam}: {line}");
                if kind == "histogram" {
                    if name.ends_with("_bucket") {
                        let i = ls.iter().position(|(k, _)| k == "le").unwrap_or_else(|| panic!("no le: {line}"));
                        let le = value(&ls.remove(i).1);
                        if let Some(prev) = buckets.iter().rev().find(|(l, ..)| *l == ls) {
                            assert!(prev.1 < le && prev.2 <= v, "buckets not cumulative: {line}");
                        }
                        buckets.push((ls.clone(), le, v));
                        ls.push(("le".to_owned(), format!("{le}")));
                    } else if name.ends_with("_count") {
                        let inf = buckets.iter().rev().find(|(l, le, _)| *l == ls && le.is_infinite());
                        assert_eq!(inf.map(|b| b.2), Some(v), "+Inf bucket differs from the count: {line}");
                    }
                }
            }
            ls.sort();
            assert!(samples.insert((name.to_owned(), ls), v).is_none(), "series twice: {line}");
        }
        Scrape { types, samples, text: text.to_owned() }
    }

    /// The value of `name` with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut ls: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ls.sort();
        self.samples.get(&(name.to_owned(), ls)).copied()
    }

    #[track_caller]
    fn web(&self, name: &str) -> f64 {
        self.get(name, &[("app", "web")]).unwrap_or_else(|| panic!("no {name}{{app=\"web\"}} in:\n{}", self.text))
    }

    /// The series of `name` for app `web`, by their other labels.
    fn of(&self, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
        self.samples
            .iter()
            .filter(|((n, ls), _)| n == name && ls.contains(&("app".to_owned(), "web".to_owned())))
            .map(|((_, ls), v)| (ls.iter().filter(|(k, _)| k != "app").cloned().collect(), *v))
            .collect()
    }
}

fn count(events: &[serde_json::Value], op: &str, outcome: &str) -> f64 {
    events.iter().filter(|e| e["op"] == op && e["outcome"] == outcome).count() as f64
}

/// The figures `report` and a scrape both give, side by side.
fn assert_same_figures(s: &Scrape, report: &serde_json::Value) {
    for (metric, key) in [
        ("switchback_delivery_deploys", "deploys"),
        ("switchback_delivery_successful_deploys", "successful"),
        ("switchback_delivery_failed_deploys", "failed"),
        ("switchback_delivery_not_deployed", "not_deployed"),
        ("switchback_delivery_restored_failures", "restored"),
        ("switchback_delivery_unrestored_failures", "unrestored"),
        ("switchback_delivery_window_seconds", "window_seconds"),
        ("switchback_deployment_frequency_per_day", "deployment_frequency_per_day"),
        ("switchback_change_failure_rate", "change_failure_rate"),
        ("switchback_time_to_restore_median_seconds", "time_to_restore_median_seconds"),
        ("switchback_time_to_restore_mean_seconds", "time_to_restore_mean_seconds"),
    ] {
        let want = report[key].as_f64();
        let got = s.get(metric, &[("app", "web")]);
        match (want, got) {
            (Some(w), Some(g)) => assert!((w - g).abs() <= 1e-9 * w.abs().max(1.0), "{metric} {g} != {key} {w}"),
            (None, None) => {}
            _ => panic!("{metric} {got:?} but report's {key} is {:?}", report[key]),
        }
    }
}

#[test]
fn a_scrape_shows_deploys_checks_polls_and_the_delivery_figures_as_report_does() {
    let (host, svc, key, base) = file_host(HEALTH);
    let port = free_port();
    with_metrics(&host, &format!("127.0.0.1:{port}"));
    let mut d = Daemon::start(&host, &[]);
    wait_for("the metrics endpoint", LIVE, || TcpStream::connect(("127.0.0.1", port)).is_ok());

    file_publish(&host, &key, &base, "1.0.0", 200, &[]);
    wait_for("1.0.0 to go live", LIVE, || host.current().as_deref() == Some("1.0.0"));
    wait_served(&svc, "1.0.0");
    file_publish(&host, &key, &base, "2.0.0", 500, &[]);
    wait_for("2.0.0's deploy to be rolled back", LIVE, || {
        host.history().iter().any(|e| e["op"] == "deploy" && e["version"] == "2.0.0" && e["outcome"] == "rolled-back")
    });
    assert_eq!(host.current().as_deref(), Some("1.0.0"));

    let s = scrape(port);
    let events = host.history();
    // Deploys by outcome, as history says.
    assert_eq!(s.types["switchback_deploys_total"], "counter");
    for outcome in ["ok", "rolled-back"] {
        let got = s.get("switchback_deploys_total", &[("app", "web"), ("outcome", outcome)]);
        assert_eq!(got, Some(count(&events, "deploy", outcome)), "deploys {outcome}:\n{}", s.text);
        assert!(got >= Some(1.0));
    }
    let deploys = events.iter().filter(|e| e["op"] == "deploy" && e["outcome"] != "busy").count() as f64;
    assert_eq!(s.web("switchback_deploy_duration_seconds_count"), deploys);
    let took: f64 = events.iter().filter(|e| e["op"] == "deploy").map(|e| e["duration_ms"].as_f64().unwrap()).sum();
    assert!((s.web("switchback_deploy_duration_seconds_sum") - took / 1000.0).abs() < 1e-6);
    // The current release.
    assert_eq!(s.get("switchback_release_info", &[("app", "web"), ("version", "1.0.0")]), Some(1.0));
    assert_eq!(s.of("switchback_release_info").len(), 1, "{}", s.text);
    // The last poll: a moment ago, and what it found.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let polled = s.web("switchback_last_poll_timestamp_seconds");
    assert!(now - polled < 30.0 && polled <= now + 1.0, "last poll at {polled}, now {now}");
    let last = s.of("switchback_last_poll_result");
    assert_eq!(last.len(), 1, "{last:?}");
    assert!(s.of("switchback_polls_total").iter().map(|(_, v)| v).sum::<f64>() >= 2.0);
    // The checks the daemon ran: 2.0.0's failed, 1.0.0's passed.
    let checks = s.of("switchback_checks_total");
    let by = |r: &str| checks.iter().filter(|(ls, _)| ls.iter().any(|(k, v)| k == "result" && v == r)).count();
    assert!(by("pass") >= 1 && by("fail") >= 1, "{checks:?}");
    assert!(checks.iter().all(|(ls, _)| ls.iter().any(|(k, v)| k == "check" && v.contains("/healthz"))));

    // The delivery figures: one good deploy and one rolled back in the window, the same as `report` says.
    let report = host.run(&["report", "web", "--json"]).expect(0).json();
    assert_eq!(report["schema"], 1);
    assert_eq!((report["deploys"].as_u64(), report["failed"].as_u64()), (Some(2), Some(1)), "{report:#}");
    assert_same_figures(&s, &report);
    assert_eq!(s.web("switchback_change_failure_rate"), 0.5);
    assert!(s.web("switchback_time_to_restore_median_seconds") > 0.0);
    eprintln!(
        "delivery figures: {:.3} deploys/day, change failure rate {}, time to restore {:.1} s",
        s.web("switchback_deployment_frequency_per_day"),
        s.web("switchback_change_failure_rate"),
        s.web("switchback_time_to_restore_median_seconds")
    );
    let human = host.run(&["report", "web", "--since", "7d"]).expect(0).stdout.clone();
    assert!(human.contains("change failure rate   50.0% (1 of 2)"), "{human}");
    assert!(human.lines().count() <= 10, "{human}");

    // OpenMetrics when asked for it; other paths and methods are refused.
    let (status, headers, body) =
        http(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n");
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("application/openmetrics-text"), "{headers:?}");
    assert!(body.ends_with("# EOF\n") && body.contains("# TYPE switchback_deploys counter\n"), "{body}");
    assert_eq!(http(port, "GET /other HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0, 405);
    let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(http(port, &big).0, 431);
    assert!(d.alive());
    assert_eq!(d.stop(), 0, "log:\n{}", d.log());
}

/// A deploy paused while it holds the app's lock (the daemon's own, on one of its threads), and clients that
/// connect and say nothing: scrapes still answer within milliseconds, and the next one sees the deploy.
#[cfg(feature = "crash-points")]
#[test]
fn a_scrape_while_a_deploy_holds_the_lock_answers_at_once() {
    let (host, svc, key, base) = file_host(HEALTH);
    let port = free_port();
    with_metrics(&host, &format!("127.0.0.1:{port}"));
    file_publish(&host, &key, &base, "1.0.0", 200, &[]);
    let pause = host.path().join("pause");
    let env = [
        ("SWITCHBACK_PAUSE_AT".to_owned(), "during-checks".to_owned()),
        ("SWITCHBACK_PAUSE_FILE".to_owned(), pause.display().to_string()),
    ];
    let mut d = Daemon::start(&host, &env);
    wait_for("the deploy of 1.0.0 to pause in its checks", LIVE, || pause.exists());
    // The lock is held: a command that needs it gives up with code 5.
    host.run(&["--wait", "200ms", "prune", "web"]).expect(5);

    // Clients that connect and send nothing take a slot each for a while, and no more.
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let mut took = Vec::new();
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    (0..10)
                        .map(|_| {
                            let start = std::time::Instant::now();
                            let s = scrape(port);
                            let t = start.elapsed();
                            assert!(s
                                .get("switchback_release_info", &[("app", "web"), ("version", "1.0.0")])
                                .is_some());
                            t
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for t in threads {
            took.extend(t.join().unwrap());
        }
    });
    took.sort();
    let (median, max) = (took[took.len() / 2], took[took.len() - 1]);
    eprintln!("40 scrapes (4 at a time) while the deploy holds the lock: median {median:?}, max {max:?}");
    assert!(max < Duration::from_millis(500), "a scrape took {max:?} while the lock was held");
    assert!(pause.exists(), "the deploy went on during the scrapes");
    drop(idle);

    std::fs::remove_file(&pause).unwrap();
    wait_for("1.0.0's deploy to be recorded", LIVE, || {
        host.history().iter().any(|e| e["op"] == "deploy" && e["outcome"] == "ok")
    });
    wait_served(&svc, "1.0.0");
    let s = scrape(port);
    assert_eq!(s.get("switchback_deploys_total", &[("app", "web"), ("outcome", "ok")]), Some(1.0), "{}", s.text);
    assert_eq!(s.web("switchback_delivery_successful_deploys"), 1.0);
    assert_eq!(d.stop(), 0, "log:\n{}", d.log());
}

#[test]
fn a_bad_metrics_address_is_a_clear_error() {
    let host = Host::new();
    with_metrics(&host, "localhost");
    let out = host.run(&["config", "check"]);
    out.expect(2);
    assert!(out.stderr.contains("agent.metrics") && out.stderr.contains("expected an IP address and port"), "{out:#?}");
    let out = host.run(&["daemon"]);
    out.expect(2);
    assert!(out.stderr.contains("agent.metrics"), "{out:#?}");

    // A port someone else has: the daemon says so and does not start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let host = Host::new();
    with_metrics(&host, &addr);
    host.run(&["config", "check"]).expect(0);
    let out = host.run(&["daemon"]);
    out.expect(2);
    assert!(out.stderr.contains(&format!("cannot serve metrics on {addr} (agent.metrics)")), "{out:#?}");
}

#[test]
fn report_on_an_empty_history() {
    let host = Host::new();
    let doc = host.run(&["report", "web", "--json", "--since", "1d"]).expect(0).json();
    assert_eq!(doc["schema"], 1);
    assert_eq!((doc["app"].as_str(), doc["window_seconds"].as_u64()), (Some("web"), Some(86_400)));
    assert_eq!((doc["deploys"].as_u64(), doc["deployment_frequency_per_day"].as_f64()), (Some(0), Some(0.0)));
    assert!(doc["change_failure_rate"].is_null() && doc["time_to_restore_median_seconds"].is_null(), "{doc:#}");
    let human = host.run(&["report", "web"]).expect(0).stdout.clone();
    assert!(human.starts_with("web: delivery over 30days, "), "{human}");
    assert!(human.contains("change failure rate   - (no deploys)"), "{human}");
    host.run(&["report", "web", "--since", "soon"]).expect(2);
}
