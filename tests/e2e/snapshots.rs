//! The output that is a contract, held against files in `tests/e2e/snapshots/`: `--help` of every command (the
//! exit-code table included), and the shape of the JSON documents scripts read (every key with the type of its
//! value, times and durations whatever they are). A change to either is deliberate: run with
//! `SWITCHBACK_UPDATE_SNAPSHOTS=1` to rewrite the files, and the diff shows it for review.

use std::path::PathBuf;

use crate::harness::*;

#[rustfmt::skip]
const COMMANDS: &[&str] = &[
    "daemon", "deploy", "rollback", "status", "releases", "history", "report", "pin", "unpin", "clear", "prune",
    "check", "keygen", "publish", "fleet", "fleet status", "config", "completions", "demo",
];

fn snapshot(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/snapshots").join(name);
    if std::env::var_os("SWITCHBACK_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with SWITCHBACK_UPDATE_SNAPSHOTS=1 to write it", path.display()));
    if want != actual {
        let first = want.lines().zip(actual.lines()).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "{} differs from the output, first at line {}:\n  snapshot: {:?}\n  now:      {:?}\n(run with \
             SWITCHBACK_UPDATE_SNAPSHOTS=1 to accept the change)",
            path.display(),
            first + 1,
            want.lines().nth(first),
            actual.lines().nth(first)
        );
    }
}

#[test]
fn help_of_every_command_is_as_recorded() {
    let h = Host::new();
    let mut all = String::new();
    let commands = COMMANDS.iter().map(|c| c.split(' ').chain(["--help"]).collect());
    for args in std::iter::once(vec!["--help"]).chain(commands) {
        let out = h.run(&args);
        out.expect(0);
        all.push_str(&format!("$ switchback {}\n{}\n", args.join(" "), out.stdout));
    }
    snapshot("help.txt", &all);
}

/// Every key path of a JSON document with the type of its value (`apps[].current: string`); arrays are merged
/// over their elements, so the shape does not depend on how many there are.
fn shape(v: &serde_json::Value, at: &str, out: &mut std::collections::BTreeSet<String>) {
    use serde_json::Value::*;
    let kind = match v {
        Null => "null",
        Bool(_) => "bool",
        Number(_) => "number",
        String(_) => "string",
        Array(_) => "array",
        Object(_) => "object",
    };
    out.insert(format!("{at}: {kind}"));
    match v {
        Array(items) => items.iter().for_each(|i| shape(i, &format!("{at}[]"), out)),
        Object(map) => map.iter().for_each(|(k, i)| shape(i, &format!("{at}.{k}"), out)),
        _ => {}
    }
}

fn shape_of(doc: &serde_json::Value) -> String {
    let mut keys = std::collections::BTreeSet::new();
    shape(doc, "", &mut keys);
    keys.into_iter().map(|k| k + "\n").collect()
}

#[test]
fn json_documents_keep_their_shape() {
    let (h, _svc) = Service::host("interval = \"200ms\"\nhealthy_after = 1\ndeadline = \"5s\"", "");
    let mut all = String::new();
    let mut doc = |name: &str, args: &[&str], code: i32| {
        let out = h.run(args);
        out.expect(code);
        all.push_str(&format!("$ switchback {name}\n{}", shape_of(&out.json())));
    };
    let v1 = h.archive("v1.tar.zst", &service_release("v1", 200).build());
    let v2 = h.archive("v2.tar.zst", &service_release("v2", 200).build());
    doc("--json deploy (v1)", &["--json", "deploy", "web", "--file", v1.to_str().unwrap(), "--version", "v1"], 0);
    doc("--json deploy (v2)", &["--json", "deploy", "web", "--file", v2.to_str().unwrap(), "--version", "v2"], 0);
    doc("--json status", &["--json", "status", "web"], 0);
    doc("--json releases", &["--json", "releases", "web"], 0);
    doc("--json check", &["--json", "check", "web"], 0);
    doc("--json rollback", &["--json", "rollback", "web"], 0);
    doc("--json pin", &["--json", "pin", "web", "v1"], 0);
    doc("--json unpin", &["--json", "unpin", "web"], 0);
    doc("--json clear --bad v2", &["--json", "clear", "web", "--bad", "v2", "--reason", "snapshot"], 0);
    doc("--json prune", &["--json", "prune", "web", "--keep", "1"], 0);
    doc("--json history", &["--json", "history", "web"], 0);
    doc("--json report", &["--json", "report", "web"], 0);
    doc("--json deploy (an error)", &["--json", "deploy", "web", "--version", "nope"], 2);
    doc("--json deploy (a usage error)", &["--json", "deploy", "web"], 2);
    snapshot("json-shapes.txt", &all);
}
