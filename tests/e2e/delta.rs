//! Delta downloads: `publish` also uploads, against the version the channel named before, a delta that carries
//! only the changed and added files (every other file a `SWITCHBACK.shared=SIZE:SHA256` reference), and the signed
//! manifest names it; an agent holding that version downloads the delta instead of the artifact and assembles
//! the very release the full artifact makes (same tree, same index, recorded with the full artifact's sha256).
//!
//! The release is ~1,000 files (median ~3 KB, a few over 1 MiB, all incompressible), so that its unchanged bytes
//! dominate and a delta of 1% of the files is a small fraction of the artifact. This file holds the releases, the
//! channel they are published to, publish (`file://` and Garage, `--no-delta`), the daemon pulling a delta, and a
//! full archive that carries the record; `delta/fallback.rs` the hosts that cannot or must not use the delta.

mod fallback;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::bucket::publish;
use crate::daemon::{S3Host, HEALTH};
use crate::harness::*;
use crate::hostile::noise;
use crate::reuse::{rows, walk, Kind, Spec};

const V1: &str = "1.0.0";
const V2: &str = "2.0.0";
/// The name the delta of v2 against v1 is published under, relative to `BASE/web/`.
const DELTA: &str = "releases/2.0.0.from-1.0.0.delta.tar.zst";

/// Files of v1 that v2 leaves as they are (a delta references them): one small, one over 1 MiB.
const KEPT_SMALL: &str = "app/d2/e0/f2.dat";
const KEPT_BIG: &str = "assets/blob1.bin";

/// The first release: `version.txt` and `health` (the demo service serves them), executables, three files over
/// 1 MiB, 1,000 files of 300 B to 9 KB (median ~3 KB; every 13th text, the rest random) in directories up to
/// four deep, some 0755 or 0600, an empty directory, an archive hard link and three symlinks.
fn v1() -> Spec {
    let mut s = Spec::default();
    s.file("version.txt", V1.as_bytes(), 0o644);
    s.file("health", b"200", 0o644);
    s.file("bin/run", b"#!/bin/sh\nexec true\n", 0o755);
    s.file("bin/tool", &noise(40_000, 3), 0o755);
    for (i, n) in [(1u64, 1_500_000), (2, 1_300_000), (3, 2_100_000)] {
        s.file(&format!("assets/blob{i}.bin"), &noise(n, 100 + i), 0o644);
    }
    for i in 0..1000u64 {
        let dir = format!("app/d{}/e{}", i % 8, (i / 8) % 5);
        let path = if i % 9 == 0 { format!("{dir}/deep/f{i}.dat") } else { format!("{dir}/f{i}.dat") };
        let size = [300, 1200, 2500, 3000, 3200, 4000, 6000, 9000][((i * 5 + i / 8) % 8) as usize];
        let data = if i % 13 == 0 {
            format!("setting.{i} = on\n").repeat(size / 16).into_bytes()
        } else {
            noise(size, 1000 + i)
        };
        let mode = match i % 17 {
            3 => 0o755,
            5 => 0o600,
            _ => 0o644,
        };
        s.file(&path, &data, mode);
    }
    s.dirs.push("app/empty".into());
    s.hardlinks.push(("app/alias.dat".into(), "app/d0/e0/deep/f0.dat".into()));
    s.symlinks.push(("app/config".into(), "d1/e0/f1.dat".into()));
    s.symlinks.push(("bin/start".into(), "run".into()));
    s.symlinks.push(("assets/latest".into(), "blob3.bin".into()));
    s
}

/// What v2 changed: files whose content changed, the one added, the one removed, the one given another mode.
pub(crate) struct Changes {
    pub(crate) changed: Vec<String>,
    pub(crate) added: String,
    pub(crate) removed: String,
    pub(crate) mode_changed: String,
}

/// The next release: 1% of the files changed (version.txt, five others of the same size with other bytes, four
/// grown), one added, one removed, one made executable; everything else (the large files among it) as it was.
fn v2(s: &Spec) -> (Spec, Changes) {
    let mut n = s.clone();
    let at = |i: u64| -> String {
        let p = s.files.iter().map(|f| &f.0).find(|p| p.ends_with(&format!("/f{i}.dat"))).unwrap();
        p.clone()
    };
    n.file("version.txt", V2.as_bytes(), 0o644);
    let mut changed = vec!["version.txt".to_owned()];
    for i in [101, 202, 303, 404, 505] {
        let (p, data, mode) = s.get(&at(i)).clone();
        n.file(&p, &noise(data.len(), 70_000 + i), mode);
        changed.push(p);
    }
    for i in [111, 222, 333, 444] {
        let (p, mut data, mode) = s.get(&at(i)).clone();
        data.extend_from_slice(b"\ngrown in 2.0.0\n");
        n.file(&p, &data, mode);
        changed.push(p);
    }
    let added = "app/d9/new/feature.dat".to_owned();
    n.file(&added, &noise(3000, 99_999), 0o644);
    let removed = at(606);
    n.remove(&removed);
    let mode_changed = at(707);
    assert_eq!(s.get(&mode_changed).2, 0o644);
    let data = s.get(&mode_changed).1.clone();
    n.file(&mode_changed, &data, 0o755);
    for p in [KEPT_SMALL, KEPT_BIG, "app/d0/e0/deep/f0.dat", "app/d1/e0/f1.dat"] {
        assert_eq!(s.get(p), n.get(p), "{p} must be the same in both releases");
    }
    (n, Changes { changed, added, removed, mode_changed })
}

/// The `delta` a manifest names.
#[derive(Debug, Clone)]
pub(crate) struct Delta {
    pub(crate) sha256: String,
    pub(crate) size: u64,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Checks what `publish --json` said of v2 (`out`) and the channel's manifest after it (`manifest`, the bytes of
/// `channels/production.json`), given the objects of the bucket (`get`, by path under `BASE/web/`): the manifest
/// names v2's full artifact and a delta from v1 that is in the bucket with the sha256 and size it says, and that
/// carries the changed and added files and references every other; the delta is at most 3% of the artifact.
#[track_caller]
fn check_published(out: &Value, manifest: &[u8], get: impl Fn(&str) -> Vec<u8>, v2: &Spec, c: &Changes) -> Delta {
    let m: Value = serde_json::from_slice(manifest).unwrap();
    assert_eq!((m["version"].as_str(), m["artifact"].as_str()), (Some(V2), Some("releases/2.0.0.tar.zst")), "{m:#}");
    assert_eq!((&m["sha256"], &m["size"]), (&out["sha256"], &out["size"]), "{m:#}\n{out:#}");
    let full = get("releases/2.0.0.tar.zst");
    assert_eq!(Some(full.len() as u64), m["size"].as_u64());
    assert_eq!(Some(sha256_hex(&full).as_str()), m["sha256"].as_str());
    let d = &m["delta"];
    assert_eq!((d["from"].as_str(), d["artifact"].as_str()), (Some(V1), Some(DELTA)), "{m:#}");
    let bytes = get(DELTA);
    let delta = Delta { sha256: sha256_hex(&bytes), size: bytes.len() as u64 };
    assert_eq!((d["sha256"].as_str(), d["size"].as_u64()), (Some(delta.sha256.as_str()), Some(delta.size)), "{m:#}");
    // What publish said of it.
    let o = &out["delta"];
    assert_eq!((o["from"].as_str(), &o["sha256"], &o["size"]), (Some(V1), &d["sha256"], &d["size"]), "{out:#}");
    assert!(o["artifact"].as_str().is_some_and(|a| a.ends_with(DELTA)), "{out:#}");
    // Carried: the 10 changed, the added and the one whose mode changed; every other regular file referenced.
    let carried = 12;
    assert_eq!(o["files_carried"].as_u64(), Some(carried), "{out:#}");
    assert_eq!(o["files_referenced"].as_u64(), Some(v2.files.len() as u64 - carried), "{out:#}");
    check_delta_entries(&bytes, v2, c);
    let full_size = full.len() as u64;
    eprintln!(
        "v2: full artifact {full_size} bytes, delta {} bytes ({:.2}%)",
        delta.size,
        delta.size as f64 * 100.0 / full_size as f64
    );
    assert!(delta.size * 100 <= full_size * 3, "the delta is {} bytes, over 3% of {full_size}", delta.size);
    delta
}

/// Reads the delta: every entry of v2 is there (and the removed file is not); the changed, added and re-moded
/// files carry their data, and every other regular file is an entry without data whose `SWITCHBACK.shared`
/// record is its size and sha256.
#[track_caller]
fn check_delta_entries(delta: &[u8], v2: &Spec, c: &Changes) {
    use std::io::Read;
    let tar = zstd::decode_all(delta).unwrap();
    let mut ar = tar::Archive::new(&tar[..]);
    let mut paths = std::collections::BTreeSet::new();
    let mut carried = std::collections::BTreeSet::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_str().unwrap().trim_end_matches('/').to_owned();
        paths.insert(path.clone());
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let shared = e.pax_extensions().unwrap().into_iter().flatten().find_map(|r| {
            let r = r.unwrap();
            (r.key() == Ok("SWITCHBACK.shared")).then(|| r.value().unwrap().to_owned())
        });
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let (_, want, _) = v2.get(&path);
        match shared {
            Some(v) => {
                assert!(data.is_empty(), "{path}: a reference with data");
                assert_eq!(v, format!("{}:{}", want.len(), sha256_hex(want)), "{path}");
            }
            None => {
                assert!(data == *want, "{path}: carried, but not with v2's bytes");
                carried.insert(path);
            }
        }
    }
    let mut want: std::collections::BTreeSet<String> = c.changed.iter().cloned().collect();
    want.extend([c.added.clone(), c.mode_changed.clone()]);
    assert_eq!(carried, want, "the files the delta carries");
    assert!(!paths.contains(&c.removed), "the delta names the removed {}", c.removed);
    let all = v2.files.iter().map(|f| &f.0).chain(v2.hardlinks.iter().chain(&v2.symlinks).map(|l| &l.0));
    assert!(all.clone().all(|p| paths.contains(p)), "the delta does not list every entry of v2");
    assert!(v2.dirs.iter().all(|d| paths.contains(d)), "{paths:?}");
}

/// v1 and v2 published to channel `production` of a `file://` bucket, once per test process (publishing 1,000
/// files and proving the delta takes seconds): each test works on its own copy of the bucket ([`Channel`]). Kept
/// in `CARGO_TARGET_TMPDIR/delta-channel-PID` (a static is never dropped); a later process removes those of
/// processes that are gone.
pub(crate) struct Published {
    dir: PathBuf,
    key: PathBuf,
    public_key: String,
    pub(crate) v2: Spec,
    pub(crate) changes: Changes,
    /// The archives published (each from the tar crate, with its hard link).
    pub(crate) a1: PathBuf,
    pub(crate) a2: PathBuf,
    /// What `publish --json` said of v2.
    pub(crate) out: Value,
    pub(crate) delta: Delta,
    /// v2 deployed from its full archive on a fresh host: what every v2 must be.
    pub(crate) reference: Reference,
}

/// The rows of a release's tree walk (paths, types, contents, modes, link targets, owners), and its index.
pub(crate) type Reference = (Vec<crate::reuse::Row>, Vec<u8>);

fn published() -> &'static Published {
    static P: std::sync::OnceLock<Published> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let tmp = option_env!("CARGO_TARGET_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("delta-channel-").and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = tmp.join(format!("delta-channel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Any host runs the binary; the bucket, key and archives are in `dir`.
        let runner = Host::new();
        let key = dir.join("ci");
        let made = runner.run(&["keygen", "--out", key.to_str().unwrap(), "--json"]);
        let public_key = made.expect(0).json()["public_key"].as_str().unwrap().to_owned();
        let key = key.with_extension("key");
        let v1 = v1();
        let (v2, changes) = v2(&v1);
        let (a1, a2) = (dir.join("1.0.0.tar.zst"), dir.join("2.0.0.tar.zst"));
        std::fs::write(&a1, v1.archive()).unwrap();
        std::fs::write(&a2, v2.archive()).unwrap();
        let base = format!("file://{}/bucket", dir.display());
        let run = |version: &str, archive: &Path| -> Value {
            let args = ["--json", "--file", archive.to_str().unwrap()];
            publish(&runner, &[], &base, &key, version, &args).expect(0).json()
        };
        let first = run(V1, &a1);
        assert!(first.get("delta").is_none(), "nothing to make a delta against: {first:#}");
        let out = run(V2, &a2);
        assert_eq!(out["uploaded"], true, "{out:#}");
        assert!(out["delta"]["artifact"].as_str().unwrap().starts_with("file://"), "{out:#}");
        let object = |rel: &str| std::fs::read(dir.join("bucket/web").join(rel)).unwrap();
        let delta = check_published(&out, &object("channels/production.json"), object, &v2, &changes);
        let reference = reference(&a2, V2);
        Published { dir, key, public_key, v2, changes, a1, a2, out, delta, reference }
    })
}

/// A test's own copy of the published bucket, in a host's directory (`DIR/bucket`).
pub(crate) struct Channel {
    pub(crate) host: Host,
    base: String,
    pub(crate) p: &'static Published,
}

impl Channel {
    pub(crate) fn new() -> Channel {
        let p = published();
        let host = Host::new();
        let cp = std::process::Command::new("cp").arg("-a").arg(p.dir.join("bucket")).arg(host.path()).status();
        assert!(cp.unwrap().success());
        let base = format!("file://{}/bucket", host.path().display());
        Channel { host, base, p }
    }

    /// `publish --json --file ARCHIVE EXTRA...` of `version` to this bucket (exit 0).
    #[track_caller]
    fn publish(&self, version: &str, archive: &Path, extra: &[&str]) -> Out {
        let mut args = vec!["--json", "--file", archive.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = publish(&self.host, &[], &self.base, &self.p.key, version, &args);
        out.expect(0);
        out
    }

    /// An object of the bucket, by its path under `BASE/web/`.
    pub(crate) fn object(&self, rel: &str) -> PathBuf {
        self.host.path().join("bucket/web").join(rel)
    }

    /// The app config of a host that follows this channel (keys of `[apps.web]`).
    pub(crate) fn source(&self) -> String {
        format!("source = \"{}/web\"\ntrusted_keys = [\"{}\"]\n", self.base, self.p.public_key)
    }

    /// A new host following the channel, without a service.
    pub(crate) fn follower(&self) -> Host {
        Host::with_app_config(&self.source())
    }

    pub(crate) fn full_size(&self) -> u64 {
        self.p.out["size"].as_u64().unwrap()
    }

    pub(crate) fn full_sha(&self) -> &str {
        self.p.out["sha256"].as_str().unwrap()
    }
}

/// A step of a deploy's `steps` (from `deploy --json` or a history event).
pub(crate) fn step<'a>(steps: &'a Value, name: &str) -> &'a Value {
    steps.as_array().unwrap().iter().find(|s| s["step"] == name).unwrap_or_else(|| panic!("no {name} step: {steps:#}"))
}

/// Asserts that the download step of `steps` brought `n` bytes of an object of `size` bytes named `rel`.
#[track_caller]
pub(crate) fn assert_download(steps: &Value, n: u64, size: u64, rel: &str) {
    let detail = step(steps, "download")["detail"].as_str().unwrap();
    let iec = |b: u64| bytesize::ByteSize(b).display().iec().to_string();
    let head = format!("{} of {} from ", iec(n), iec(size));
    assert!(detail.starts_with(&head) && detail.contains(rel), "the download step `{detail}` is not `{head}…{rel}…`");
}

/// The history event of the deploy that put `version` live (`outcome` ok), once it is recorded (a daemon records
/// it after the checks, so after the switch).
pub(crate) fn deployed_event(h: &Host, version: &str) -> Value {
    let find =
        || h.history().into_iter().rfind(|e| e["op"] == "deploy" && e["version"] == version && e["outcome"] == "ok");
    crate::bucket::wait_for(&format!("the deploy of {version} to be recorded"), crate::daemon::LIVE, || {
        find().is_some()
    });
    find().unwrap()
}

/// The sha256 that `releases --json` gives for `version`.
pub(crate) fn recorded_sha(h: &Host, version: &str) -> String {
    let rel = h.run(&["--json", "releases", "web"]).expect(0).json();
    let r = rel["releases"].as_array().unwrap().iter().find(|r| r["version"] == version).cloned();
    r.unwrap_or_else(|| panic!("{version} is not in `releases`: {rel:#}"))["sha256"].as_str().unwrap().to_owned()
}

/// `releases/VERSION` and `index/VERSION.jsonl` of a fresh host that deploys `archive` with `deploy --file`: what
/// a release assembled from a delta must equal.
fn reference(archive: &Path, version: &str) -> Reference {
    let h = Host::new();
    h.deploy(archive, version).expect(0);
    let index = std::fs::read(h.state_dir().join(format!("index/{version}.jsonl"))).unwrap();
    (rows(&walk(&h.root().join("releases").join(version))), index)
}

/// Asserts that `releases/VERSION` and its index on `h` are those of the reference.
#[track_caller]
pub(crate) fn assert_same_release(h: &Host, version: &str, want: &Reference) {
    let got = rows(&walk(&h.root().join("releases").join(version)));
    if got != want.0 {
        let only = |a: &[crate::reuse::Row], b: &[crate::reuse::Row]| -> Vec<String> {
            a.iter().filter(|r| !b.contains(r)).map(|r| format!("{} {:o}", r.0, r.2)).take(20).collect()
        };
        panic!(
            "releases/{version} is not what the full artifact makes:\n  here only: {:#?}\n  there only: {:#?}",
            only(&got, &want.0),
            only(&want.0, &got)
        );
    }
    let index = std::fs::read(h.state_dir().join(format!("index/{version}.jsonl"))).unwrap();
    assert!(index == want.1, "index/{version}.jsonl differs from the one the full artifact makes");
}

/// Publishing to Garage is checked the same way by the daemon test below.
#[test]
fn publish_makes_a_small_delta_that_the_manifest_names_and_no_delta_makes_none() {
    // Publishing v1 then v2 checks the manifest and the delta of v2 (at most 3% of the artifact).
    let c = Channel::new();

    // v3 with --no-delta: no delta in the bucket, none in the manifest or in what publish says.
    let mut v3 = c.p.v2.clone();
    v3.file("version.txt", b"3.0.0", 0o644);
    let a3 = c.host.archive("3.0.0.tar.zst", &v3.archive());
    let out = c.publish("3.0.0", &a3, &["--no-delta"]).json();
    assert!(out.get("delta").is_none(), "{out:#}");
    let m: Value = serde_json::from_slice(&std::fs::read(c.object("channels/production.json")).unwrap()).unwrap();
    assert_eq!(m["version"], "3.0.0", "{m:#}");
    assert!(m.get("delta").is_none(), "--no-delta, yet the manifest names a delta: {m:#}");
    let deltas: Vec<String> = std::fs::read_dir(c.object("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".delta."))
        .collect();
    assert_eq!(deltas, [DELTA.trim_start_matches("releases/")], "only v2's delta is in the bucket");
}

#[test]
fn the_daemon_pulls_the_delta_and_assembles_the_full_artifacts_release() {
    // Published to Garage (the S3 server), followed through the recording proxy.
    let s = S3Host::new(HEALTH);
    let p = published();
    let (a1, a2) = (&p.a1, &p.a2);
    let _d = s.daemon();
    let first = s.publish_with_key(&s.key, V1, &["--json", "--file", a1.to_str().unwrap()]).expect(0).json();
    assert!(first.get("delta").is_none(), "{first:#}");
    s.wait_current(V1);
    let out = s.publish_with_key(&s.key, V2, &["--json", "--file", a2.to_str().unwrap()]).expect(0).json();
    let bucket = s.garage.client(&s.garage.endpoint());
    let manifest = bucket.get("web/channels/production.json");
    let delta = check_published(&out, &manifest, |rel| bucket.get(&format!("web/{rel}")), &p.v2, &p.changes);
    s.wait_current(V2);

    // The delta came over the network, and not the artifact.
    assert_eq!(s.proxy.requests(&format!("GET /releases/web/{DELTA}")).len(), 1, "{:#?}", s.proxy.lines());
    assert!(s.proxy.requests("GET /releases/web/releases/2.0.0.tar.zst").is_empty(), "{:#?}", s.proxy.lines());
    let ev = deployed_event(&s.host, V2);
    assert_download(&ev["steps"], delta.size, delta.size, DELTA);
    let detail = step(&ev["steps"], "download")["detail"].as_str().unwrap();
    assert!(detail.contains("the delta from 1.0.0"), "{detail}");
    assert!(ev["reason"].as_str().unwrap().contains("from the delta against 1.0.0"), "{ev:#}");
    let unpack = step(&ev["steps"], "unpack")["detail"].as_str().unwrap();
    assert!(unpack.contains("shared with releases on disk"), "{unpack}");

    // The release is the one the full artifact makes on a fresh host, recorded with the full artifact's sha256.
    assert_same_release(&s.host, V2, &p.reference);
    assert_eq!(recorded_sha(&s.host, V2), out["sha256"].as_str().unwrap());
    let t = crate::reuse::assert_tree(&s.host, V2, &p.v2, None);
    assert_eq!(t["app/alias.dat"].inode, t["app/d0/e0/deep/f0.dat"].inode, "the archive's hard link");
    assert_eq!(s.host.read_current("version.txt"), V2);
    assert!(s.bad().is_empty(), "{:#}", s.status());
}

/// A full archive (no delta) whose entries carry a `SWITCHBACK.shared` record naming a file of the release on
/// disk: read as GNU tar reads it, each entry with its own data (none, or its own bytes), nothing taken from the
/// release on disk.
#[test]
fn a_full_archive_with_a_shared_record_is_read_as_gnu_tar_reads_it() {
    let h = Host::new();
    let s1 = v1();
    let a1 = h.archive("1.0.0.tar.zst", &s1.archive());
    h.deploy(&a1, V1).expect(0);
    let record = |p: &str| {
        let data = &s1.get(p).1;
        format!("{}:{}", data.len(), sha256_hex(data))
    };
    let mut b = tar::Builder::new(Vec::new());
    let entry = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], shared: Option<String>| {
        if let Some(v) = shared {
            b.append_pax_extensions([("SWITCHBACK.shared", v.as_bytes())]).unwrap();
        }
        let mut hd = tar::Header::new_ustar();
        hd.set_size(data.len() as u64);
        hd.set_mode(0o644);
        hd.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut hd, path, data).unwrap();
    };
    // Nothing in it is a file of v1 (which the redeploy would share as any other).
    entry(&mut b, "version.txt", b"2.0.0", None);
    // No data of its own, a reference to a small file and to a large one of v1.
    entry(&mut b, "empty.dat", b"", Some(record(KEPT_SMALL)));
    entry(&mut b, "big.bin", b"", Some(record(KEPT_BIG)));
    // Its own bytes, and a reference to another file's.
    entry(&mut b, "own.dat", b"my own bytes", Some(record(KEPT_SMALL)));
    let tar = b.into_inner().unwrap();

    let a2 = h.archive("2.0.0.tar.zst", &zst(&tar));
    let out = h.run(&["--json", "deploy", "web", "--file", a2.to_str().unwrap(), "--version", V2]);
    out.expect(0);
    let unpack = step(&out.json()["steps"], "unpack")["detail"].as_str().unwrap().to_owned();
    assert!(!unpack.contains("shared"), "a full archive took files from a release on disk: {unpack}");

    // GNU tar's reading of the same archive (it ignores the unknown keyword).
    let gnu = tempfile::tempdir().unwrap();
    let t = h.archive("2.tar", &tar);
    let x = std::process::Command::new("tar").arg("-xf").arg(&t).arg("-C").arg(gnu.path()).output().unwrap();
    assert!(x.status.success(), "GNU tar: {}", String::from_utf8_lossy(&x.stderr));
    let contents = |root: &Path| -> Vec<(String, Kind)> { rows(&walk(root)).into_iter().map(|r| (r.0, r.1)).collect() };
    let got = contents(&h.root().join("releases").join(V2));
    assert_eq!(got, contents(gnu.path()), "the release is not what GNU tar reads");
    let file = |p: &str| got.iter().find(|r| r.0 == p).map(|r| r.1.clone());
    assert_eq!(file("empty.dat"), Some(Kind::File(vec![])));
    assert_eq!(file("big.bin"), Some(Kind::File(vec![])));
    assert_eq!(file("own.dat"), Some(Kind::File(b"my own bytes".to_vec())));
    assert_eq!(recorded_sha(&h, V2), sha256_hex(&std::fs::read(&a2).unwrap()));
}
