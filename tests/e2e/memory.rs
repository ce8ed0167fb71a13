//! Memory: a deploy streams, whatever the size of the archive. The peak RSS of `switchback deploy` stays under
//! 64 MiB for an archive that unpacks to about 2 GiB (one large file, 20,000 small ones in nested directories and
//! a few of some MiB), and for the redeploy of a version with 1% of its files changed (the rest shared with the
//! release on disk); and a daemon that follows a `file://` channel stays under it (its `VmHWM`) through a full
//! deploy and a delta deploy of a tree of 20,000 files.
//!
//! The large archives are written as they stream into the zstd encoder: the test never holds them in memory.
//! What these tests cost is hashing, not memory: the unpacker hashes every byte it writes, and SHA-256 in a debug
//! build runs at about 50 MB/s, so each deploy of the 2 GiB archive takes some 40 s on one core.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::bucket::{publish, wait_for, Daemon};
use crate::daemon::{file_host, wait_served, HEALTH, LIVE};
use crate::harness::*;
use crate::hostile::noise;
use crate::operations::deploy_event;

/// The ceiling, in KiB (the unit of `ru_maxrss` and `VmHWM`).
const LIMIT_KIB: u64 = 64 << 10;
/// The large file of the 2 GiB archive: zeros, which compress to almost nothing.
const LARGE: u64 = 1900 << 20;
/// Small files per release, and one in a hundred changes between versions.
const SMALL: u64 = 20_000;
/// Free space the 2 GiB test wants in the temporary directory: the first release, and the second's copy of the
/// large file before it is replaced by the shared one.
const NEEDS_FREE: u64 = 6 << 30;

/// The `i`th small file of a release: a path three or four directories deep and 0 B to 1.5 KB of content that is
/// the same in every version, except in one file of a hundred whose content is `version`'s own.
fn small(i: u64, version: u64) -> (String, Vec<u8>) {
    let dir = format!("app/d{:02}/e{:02}", i % 40, (i / 40) % 25);
    let path = if i.is_multiple_of(9) { format!("{dir}/deep/f{i}.txt") } else { format!("{dir}/f{i}.txt") };
    let size = [0, 100, 300, 700, 1500][(i % 5) as usize];
    let seed = if i % 100 == 7 { 1_000_003 * version + i } else { i } + 1;
    (path, noise(size, seed))
}

/// Files of `sizes` MiB, the same in every version but the last of them, which is `version`'s own.
fn medium(sizes: &[u64], version: u64) -> Vec<(String, Vec<u8>)> {
    let last = sizes.len() - 1;
    let file = |(i, mib): (usize, &u64)| {
        let seed = if i == last { 77 * version + mib } else { mib + 1 };
        (format!("assets/m{mib}.bin"), noise((*mib as usize) << 20, seed))
    };
    sizes.iter().enumerate().map(file).collect()
}

/// `n` zeros, read as they are asked for (`io::repeat` fills byte by byte: slow in a debug build).
struct Zeros(u64);

impl Read for Zeros {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = usize::try_from(self.0).map_or(buf.len(), |left| left.min(buf.len()));
        buf[..n].fill(0);
        self.0 -= n as u64;
        Ok(n)
    }
}

fn header(size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Writes version `version` of the 2 GiB release to `out` as a `.tar.zst`, streaming.
fn write_large_release(out: &Path, version: u64) {
    let enc = zstd::Encoder::new(BufWriter::new(File::create(out).unwrap()), 1).unwrap();
    let mut tar = tar::Builder::new(enc);
    tar.mode(tar::HeaderMode::Deterministic);
    let v = version.to_string();
    tar.append_data(&mut header(v.len() as u64, 0o644), "version.txt", v.as_bytes()).unwrap();
    tar.append_data(&mut header(LARGE, 0o644), "data/large.bin", Zeros(LARGE)).unwrap();
    for (path, data) in medium(&[1, 3, 6, 10], version) {
        tar.append_data(&mut header(data.len() as u64, 0o644), path, data.as_slice()).unwrap();
    }
    for i in 0..SMALL {
        let (path, data) = small(i, version);
        tar.append_data(&mut header(data.len() as u64, 0o644), path, data.as_slice()).unwrap();
    }
    let mut w = tar.into_inner().unwrap().finish().unwrap();
    w.flush().unwrap();
}

/// Runs `switchback --config CONFIG ARGS...` under a Python parent that reports the peak RSS of its one child
/// (`ru_maxrss` of RUSAGE_CHILDREN, in KiB): the binary's own peak, not that of this test process's other children.
fn run_measured(h: &Host, args: &[&str]) -> (Out, u64) {
    const MEASURE: &str = "import resource, subprocess, sys\n\
        r = subprocess.run(sys.argv[1:])\n\
        print('maxrss', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n\
        sys.exit(r.returncode)";
    let out: Out = Command::new("python3")
        .args(["-c", MEASURE, BIN, "--config"])
        .arg(&h.config)
        .args(args)
        .env_remove("SWITCHBACK_CONFIG")
        .output()
        .expect("running python3")
        .into();
    let line = out.stderr.lines().rfind(|l| l.starts_with("maxrss ")).unwrap_or_else(|| panic!("no maxrss: {out:#?}"));
    let kib = line["maxrss ".len()..].trim().parse().unwrap();
    (out, kib)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn unpack_detail(out: &Out) -> String {
    let doc = out.json();
    let step = doc["steps"].as_array().unwrap().iter().find(|s| s["step"] == "unpack").cloned();
    step.unwrap_or_else(|| panic!("no unpack step: {doc:#}"))["detail"].as_str().unwrap().to_owned()
}

#[test]
fn deploying_an_archive_of_2_gib_and_its_redeploy_stay_under_64_mib() {
    let tmp = std::env::temp_dir();
    let free = rustix::fs::statvfs(&tmp).map(|s| s.f_bavail * s.f_frsize).unwrap_or(0);
    if free < NEEDS_FREE {
        eprintln!("SKIPPED: {} has {} MiB free; this test needs {} MiB", tmp.display(), free >> 20, NEEDS_FREE >> 20);
        return;
    }
    let start = Instant::now();
    // The host (and the releases, archives and state in it) is removed when it drops, on success or failure. The
    // default `max_unpacked` (4 GiB) would do: set so that a lower default does not make this test a refusal.
    let h = Host::with_app_config("[apps.web.limits]\nmax_unpacked = \"8GiB\"\n");
    let (a1, a2) = (h.path().join("archives/1.tar.zst"), h.path().join("archives/2.tar.zst"));
    write_large_release(&a1, 1);
    write_large_release(&a2, 2);
    let built = start.elapsed();

    let (out, peak1) = run_measured(&h, &["--json", "deploy", "web", "--file", a1.to_str().unwrap(), "--version", "1"]);
    out.expect(0);
    assert_eq!(h.current().as_deref(), Some("1"));
    let large = std::fs::metadata(h.root().join("current/data/large.bin")).unwrap();
    assert_eq!(large.len(), LARGE);
    let detail1 = unpack_detail(&out);
    let deployed1 = start.elapsed();

    let (out, peak2) = run_measured(&h, &["--json", "deploy", "web", "--file", a2.to_str().unwrap(), "--version", "2"]);
    out.expect(0);
    assert_eq!(h.current().as_deref(), Some("2"));
    assert_eq!(h.read_current("version.txt"), "2");
    let (path, data) = small(7, 2);
    assert_eq!(std::fs::read(h.root().join("current").join(path)).unwrap(), data);
    let detail2 = unpack_detail(&out);
    // Everything but the changed files (200 small ones, one medium one and version.txt) is shared with release 1.
    assert!(detail2.contains(&format!("; {} files (", SMALL - SMALL / 100 + 4)), "{detail2}");
    let deployed2 = start.elapsed();

    eprintln!(
        "2 GiB archive: deploy peak RSS {} ({detail1}); redeploy of 1% changed peak RSS {} ({detail2}); \
         archives built in {built:.1?}, deploys took {:.1?} and {:.1?}",
        mib(peak1),
        mib(peak2),
        deployed1 - built,
        deployed2 - deployed1
    );
    assert!(peak1 < LIMIT_KIB, "the deploy of a 2 GiB archive peaked at {} of RSS (limit 64 MiB)", mib(peak1));
    assert!(peak2 < LIMIT_KIB, "the redeploy peaked at {} of RSS (limit 64 MiB)", mib(peak2));
}

/// Writes release `n` of the demo service (health 200, version.txt `version`) into `dir`: the small files and
/// two medium ones. Over an earlier release, only the files that differ are written again (as a build would
/// leave them, and fewer new inodes for this test to pay for).
fn write_tree(dir: &Path, version: &str, n: u64) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("version.txt"), version).unwrap();
    std::fs::write(dir.join("health"), "200").unwrap();
    for (path, data) in (0..SMALL).map(|i| small(i, n)).chain(medium(&[3, 1], n)) {
        let p = dir.join(path);
        if std::fs::read(&p).is_ok_and(|old| old == data) {
            continue;
        }
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

/// Fields of the daemon's /proc/PID/status, in KiB: its peak resident set (`VmHWM`) and what is resident now,
/// anonymous (`RssAnon`) and mapped from files (`RssFile`: the binary's code, large in a debug build).
fn proc_status(d: &Daemon) -> [u64; 3] {
    let pid = d.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    ["VmHWM:", "RssAnon:", "RssFile:"].map(|key| {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key}: {status}"));
        line[key.len()..].trim().trim_end_matches("kB").trim().parse().unwrap()
    })
}

#[test]
fn a_daemon_deploying_a_delta_of_20000_files_stays_under_64_mib() {
    let start = Instant::now();
    let (host, svc, key, base) = file_host(HEALTH);
    let mut d = Daemon::start(&host, &[]);
    let tree = host.path().join("build/tree");
    let tree_arg = tree.to_str().unwrap();
    write_tree(&tree, "1.0.0", 1);
    publish(&host, &[], &base, &key, "1.0.0", &[tree_arg]).expect(0);
    wait_for("1.0.0 to go live", LIVE, || host.current().as_deref() == Some("1.0.0"));
    wait_served(&svc, "1.0.0");
    let first = start.elapsed();
    let [hwm1, ..] = proc_status(&d);

    write_tree(&tree, "2.0.0", 2);
    let published = publish(&host, &[], &base, &key, "2.0.0", &["--json", tree_arg]).expect(0).json();
    assert_eq!(published["delta"]["from"], "1.0.0", "publish made no delta: {published:#}");
    wait_for("2.0.0 to go live", LIVE, || host.current().as_deref() == Some("2.0.0"));
    wait_served(&svc, "2.0.0");
    let ev = deploy_event(&host, "2.0.0");
    let steps = ev["steps"].as_array().unwrap();
    let download = steps.iter().find(|s| s["step"] == "download").unwrap_or_else(|| panic!("no download: {ev:#}"));
    let detail = download["detail"].as_str().unwrap();
    assert!(detail.contains("delta"), "2.0.0 was not deployed from its delta: {detail}");
    let (path, data) = small(7, 2);
    assert_eq!(std::fs::read(host.root().join("current").join(path)).unwrap(), data);

    let [hwm, anon, file] = proc_status(&d);
    eprintln!(
        "daemon VmHWM {} after a full deploy and a delta deploy of {SMALL} files ({} after the full one; now \
         resident: {} anonymous, {} from files); download: {detail}; the delta: {} bytes, {} files carried; \
         1.0.0 live after {first:.1?}, 2.0.0 after {:.1?}",
        mib(hwm),
        mib(hwm1),
        mib(anon),
        mib(file),
        published["delta"]["size"],
        published["delta"]["files_carried"],
        start.elapsed()
    );
    assert_eq!(d.stop(), 0);
    assert!(hwm < LIMIT_KIB, "the daemon peaked at {} of RSS (limit 64 MiB)", mib(hwm));
}
