//! Seeded, time-bounded fuzzing of the archive unpacker, called as a library (`switchback::unpack`), not through
//! the binary. Every case is made from `(seed, index)` alone, so a failure replays exactly:
//!
//! ```text
//! SWITCHBACK_FUZZ_SEED=<seed> SWITCHBACK_FUZZ_CASE=<index> \
//!     cargo test --features switchback/crash-points --test e2e fuzz_unpacker -- --nocapture
//! ```
//!
//! Environment: `SWITCHBACK_FUZZ_SECS` is how long the run lasts (default 20 s, the slice `tests/run` runs; give
//! it hours by hand); `SWITCHBACK_FUZZ_SEED` the seed (decimal or 0x-hex; the default is fixed, so CI runs the
//! same cases every time, as many as fit); `SWITCHBACK_FUZZ_CASE` replays that one case, printing what it was and
//! what the unpacker said; `SWITCHBACK_FUZZ_DUMP=DIR` writes every generated input to DIR in the cargo-fuzz
//! target's input format, a seed corpus for `fuzz/` (which includes this file for its sandbox and checks);
//! `SWITCHBACK_FUZZ_SHOW=<outcome>` lists the cases that ended so (`unpacked`, or a refusal such as `Write`).
//!
//! The generators (one per case, chosen by the case's own random stream):
//! - benign: well-formed archives of files, directories, symlinks and hard links (names long enough to need
//!   PAX, GNU or ustar-prefix records, any mode), which must unpack and match their model exactly: the positive
//!   control that keeps the checks below honest;
//! - hostile: raw 512-byte headers, field by field, from small pools of names, so that duplicates, type changes,
//!   paths through earlier symlinks, links to earlier and later entries happen often, plus `..`, absolute paths,
//!   names of the sandbox's own outside markers, NULs, over-long names and deep paths; every entry type; modes
//!   with setuid, setgid and sticky; sizes that disagree with their bodies; PAX (`x`, `g`) records with path,
//!   linkpath, size and refused keys, malformed PAX, GNU long-name and long-link records, records twice or at the
//!   end; numeric fields in octal, base-256 and garbage; bad checksums; missing, short or garbage-followed ends
//!   (a third of them "tame": sound headers and only files, directories and links, so that they get further);
//! - symlink archives: a few sound directories and files, then symlinks with hostile targets (to those entries
//!   by right and off-by-one relative paths, to each other, outward through `..` and the sandbox's links,
//!   absolute, empty, looping, NUL, over-long), sometimes an entry through one of them: these reach the
//!   unpacker's final symlink checks, which any earlier refusal would skip;
//! - either of those with byte-level mutations (fields set to interesting values, bit flips, insertions,
//!   deletions, duplicated and swapped blocks), checksums mostly repaired so the mutation reaches the parser;
//! - raw single headers and random bytes.
//!
//! Each is fed as plain tar (`unpack_tar`) or zstd (`unpack_tar_zst`): one frame, several frames, behind a
//! skippable frame, with a corrupted checksum, mutated or cut compressed bytes, or not zstd at all; a fifth of the
//! hostile cases run with small limits (entries, bytes, path length, depth, record size, zstd window).
//!
//! Checks after every case, whatever the unpacker returned: it returned (each call runs under `catch_unwind`);
//! nothing under the sandbox's temporary directory changed except inside `staging` (a snapshot of every other
//! path, with type, mode, inode, link count, size, times and contents, is compared; the sandbox holds marker
//! files beside and above `staging`, and symlinks beside it pointing up and out, which the hostile names aim
//! at); `staging` is still the same directory; nothing in it is a device, fifo or socket; no file or directory
//! has setuid, setgid, sticky or group/world write; every symlink resolves inside `staging`, both when resolved
//! step by step over the real tree (following the links it meets, as the kernel would, even where the kernel
//! would stop at a missing component) and by the kernel where the target exists.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use switchback::config::Limits;
use switchback::unpack::{self, Report, UnpackError};

pub use crate::tarw::fix_checksums;
use crate::tarw::{base256, hdr, octal, pax_record, put, set_checksum, ustar_split, Format, Hdr, Tar};

/// How long `fuzz_unpacker` runs without `SWITCHBACK_FUZZ_SECS`.
const DEFAULT_SECS: u64 = 20;
/// The seed without `SWITCHBACK_FUZZ_SEED`: fixed, so that CI always runs the same cases.
const DEFAULT_SEED: u64 = 0x5b_f022_5eed;

// ---------------------------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn fuzz_unpacker() {
    let secs = env_u64("SWITCHBACK_FUZZ_SECS").unwrap_or(DEFAULT_SECS);
    let seed = env_u64("SWITCHBACK_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let sandbox = Sandbox::new();
    if let Some(index) = env_u64("SWITCHBACK_FUZZ_CASE") {
        replay(&sandbox, seed, index);
        return;
    }
    let dump = std::env::var_os("SWITCHBACK_FUZZ_DUMP").map(PathBuf::from);
    let show = std::env::var("SWITCHBACK_FUZZ_SHOW").ok();
    if let Some(d) = &dump {
        fs::create_dir_all(d).unwrap();
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut benign = 0u64;
    let mut index = 0u64;
    let mut slowest = (Duration::ZERO, 0);
    while index == 0 || Instant::now() < deadline {
        let case = generate(seed, index, &sandbox.targets());
        if let Some(d) = &dump {
            fs::write(d.join(format!("{seed:x}-{index}")), case.fuzz_input()).unwrap();
        }
        let t = Instant::now();
        let (outcome, problems) = check_case(&sandbox, &case);
        slowest = slowest.max((t.elapsed(), index));
        let Some(outcome) = outcome.filter(|_| problems.is_empty()) else {
            fail(seed, index, &case, &problems.join("\n"))
        };
        benign += u64::from(case.expect.is_some());
        let name = outcome_name(&outcome);
        if show.as_deref() == Some(name.as_str()) {
            eprintln!("case {index}: {name}");
        }
        *outcomes.entry(name).or_default() += 1;
        index += 1;
    }
    let took = start.elapsed().as_secs_f64();
    let summary: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    eprintln!(
        "fuzz_unpacker: seed {seed:#x}: {index} cases in {took:.1} s ({:.0}/s), {benign} benign archives checked \
         against their model; slowest case {} ({:.1} ms); outcomes: {}",
        index as f64 / took,
        slowest.1,
        slowest.0.as_secs_f64() * 1000.0,
        summary.join(", ")
    );
}

/// Runs a case: the unpacker's answer (`None` if it panicked) and every problem found, benign archives being
/// also checked against their model.
fn check_case(sandbox: &Sandbox, case: &Case) -> (Option<Result<Report, UnpackError>>, Vec<String>) {
    match sandbox.run(case.feed, &case.bytes, &case.limits) {
        Err(problem) => (None, vec![problem]),
        Ok(outcome) => {
            let problems = case.expect.as_ref().map(|m| m.check(&sandbox.staging, &outcome)).unwrap_or_default();
            (Some(outcome), problems)
        }
    }
}

/// Runs one case and prints everything about it.
fn replay(sandbox: &Sandbox, seed: u64, index: u64) {
    let case = generate(seed, index, &sandbox.targets());
    eprintln!("case {index} of seed {seed:#x}: {}", case.describe());
    let (outcome, problems) = check_case(sandbox, &case);
    match &outcome {
        Some(Ok(report)) => eprintln!("unpacked: {report:?}"),
        Some(Err(e)) => eprintln!("refused: {e} ({:?})", e.reason),
        None => {}
    }
    let mut listing = Vec::new();
    walk(&sandbox.staging, &mut Vec::new(), &mut |rel, md| {
        listing.push(format!("  {:o} {}", md.mode(), String::from_utf8_lossy(&rel.join(&b'/'))))
    });
    eprintln!("staging:\n{}", listing.join("\n"));
    assert!(problems.is_empty(), "FAILED:\n{}", problems.join("\n"));
}

/// Saves the input and fails with everything needed to replay it.
fn fail(seed: u64, index: u64, case: &Case, problem: &str) -> ! {
    let dir = option_env!("CARGO_TARGET_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let saved = dir.join("fuzz-failures").join(format!("seed-{seed:x}-case-{index}.bin"));
    let note = match fs::create_dir_all(saved.parent().unwrap()).and_then(|_| fs::write(&saved, case.fuzz_input())) {
        Ok(()) => format!("input saved as {} (cargo-fuzz format)", saved.display()),
        Err(e) => format!("could not save the input: {e}"),
    };
    panic!(
        "fuzz case {index} of seed {seed:#x} failed:\n{problem}\ncase: {}\n{note}\nreplay: SWITCHBACK_FUZZ_SEED={seed:#x} \
         SWITCHBACK_FUZZ_CASE={index} cargo test --features switchback/crash-points --test e2e fuzz_unpacker -- \
         --nocapture",
        case.describe()
    );
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v}: {e}")))
}

fn outcome_name(r: &Result<Report, UnpackError>) -> String {
    match r {
        Ok(_) => "unpacked".into(),
        Err(e) => {
            let s = format!("{:?}", e.reason);
            s.split([' ', '(', '{']).next().unwrap_or_default().to_owned()
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Fixed cases and regressions. The fuzzer has found no escape, panic or special file so far; what it did find is
// kept below as named tests, built from the smallest inputs that show it.
// ---------------------------------------------------------------------------------------------------------------

/// The first 200 cases of the default seed, whatever the machine's speed: the part of the CI slice that every run
/// is sure to cover, even with `SWITCHBACK_FUZZ_SECS=0`.
#[test]
fn fuzz_first_cases_of_default_seed() {
    let sandbox = Sandbox::new();
    for index in 0..200 {
        let case = generate(DEFAULT_SEED, index, &sandbox.targets());
        let (_, problems) = check_case(&sandbox, &case);
        if !problems.is_empty() {
            fail(DEFAULT_SEED, index, &case, &problems.join("\n"));
        }
    }
}

/// The checks catch what they are there for: each of these stand-in unpackers breaks one promise, in a fresh
/// sandbox (`root`, `staging`), and the run must say so.
#[test]
fn fuzz_checks_catch_escapes() {
    type Misdeed = fn(&Path, &Path) -> std::io::Result<()>;
    let cases: &[(&str, Misdeed)] = &[
        ("ESCAPE: ", |root, _| fs::write(root.join("sandbox/outside/pwned"), b"x")),
        ("ESCAPE: ", |root, _| fs::write(root.join("victim"), b"changed")),
        ("ESCAPE: ", |root, _| fs::set_permissions(root.join("victim-dir/keep"), fs::Permissions::from_mode(0o666))),
        ("ESCAPE: ", |root, staging| fs::hard_link(root.join("victim"), staging.join("hard"))),
        ("ESCAPE: ", |root, _| fs::remove_file(root.join("sandbox/up"))),
        ("ESCAPE: resolves above staging", |_, staging| symlink("sub/../../outside", staging.join("l"))),
        ("ESCAPE: resolves above staging", |_, staging| {
            symlink(".", staging.join("dot"))?;
            symlink("dot/../outside", staging.join("l"))
        }),
        ("absolute target", |_, staging| symlink("/etc", staging.join("l"))),
        ("symlink loop", |_, staging| {
            symlink("b", staging.join("a"))?;
            symlink("a", staging.join("b"))
        }),
        ("special file", |_, staging| std::os::unix::net::UnixListener::bind(staging.join("sock")).map(drop)),
        ("has mode", |_, staging| {
            fs::write(staging.join("suid"), b"x")?;
            fs::set_permissions(staging.join("suid"), fs::Permissions::from_mode(0o4755))
        }),
        ("has mode", |_, staging| {
            fs::create_dir(staging.join("d"))?;
            fs::set_permissions(staging.join("d"), fs::Permissions::from_mode(0o777))
        }),
        ("staging itself has mode", |_, staging| fs::set_permissions(staging, fs::Permissions::from_mode(0o1777))),
        ("staging was replaced", |root, staging| {
            fs::create_dir(root.join("sandbox/other"))?;
            fs::remove_dir(staging)?;
            fs::rename(root.join("sandbox/other"), staging)
        }),
    ];
    for (i, (expected, misdeed)) in cases.iter().enumerate() {
        let sandbox = Sandbox::new();
        let outcome = sandbox.run_with(|_| {
            misdeed(&sandbox.root, &sandbox.staging).unwrap();
            Ok(Report::default())
        });
        match outcome {
            Err(problem) => assert!(problem.contains(expected), "misdeed {i}: {problem:?} does not say {expected:?}"),
            Ok(_) => panic!("misdeed {i} went unnoticed (expected {expected:?})"),
        }
    }
    let outcome = Sandbox::new().run_with(|_| panic!("boom"));
    assert!(outcome.as_ref().is_err_and(|p| p.contains("panicked: boom")), "{outcome:?}");
    // And a well-behaved stand-in passes.
    let outcome = Sandbox::new().run_with(|dir| {
        rustix::fs::mkdirat(dir, "d", rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
        rustix::fs::symlinkat("d/../d", dir, "l").unwrap();
        Ok(Report::default())
    });
    assert!(outcome.is_ok(), "{outcome:?}");
}

/// `(type, name, link target, data)`.
type Entry<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// A plain tar stream with sound ustar headers: `(type, name, link target, data)`. Names and targets that do not
/// fit the header, or hold a NUL, go in a PAX record.
fn sound_tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Tar::new();
    for (kind, name, link, data) in entries {
        let mut pax = Vec::new();
        let (mut hname, mut hlink) = (name.to_vec(), link.to_vec());
        if name.len() > 100 || name.contains(&0) {
            pax.extend(pax_record(b"path", name));
            hname = b"pax-path".to_vec();
        }
        if link.len() > 100 || link.contains(&0) {
            pax.extend(pax_record(b"linkpath", link));
            hlink = Vec::new();
        }
        if !pax.is_empty() {
            out.append_record(b'x', b"PaxHeaders/e", &pax, Format::Ustar);
        }
        let h = Hdr { link: &hlink, size: data.len() as u64, ..hdr(*kind, &hname) };
        out.append(h.bytes(), data);
    }
    out.append_end();
    out.bytes
}

/// Unpacks through the sandbox (every check of the fuzz test) and returns the refusal.
fn refused(feed: Feed, bytes: &[u8]) -> UnpackError {
    match Sandbox::new().run(feed, bytes, &Limits::default()) {
        Ok(Err(e)) => e,
        Ok(Ok(report)) => panic!("unpacked: {report:?}"),
        Err(problem) => panic!("{problem}"),
    }
}

/// Found by the fuzzer: a symlink target with a NUL byte (possible in a PAX `linkpath` or GNU long link) passed
/// the symlink checks, which see bytes, and failed only at `symlinkat` as "cannot write it". It is now refused
/// when read, naming the problem, before anything is created.
#[test]
fn regression_symlink_target_with_nul() {
    let e = refused(Feed::Tar, &sound_tar(&[(b'5', b"b", b"", b""), (b'2', b"b/a", b"a\0b", b"")]));
    assert_eq!(e.entry.as_deref(), Some("b/a"), "{e}");
    assert!(matches!(e.reason, unpack::Refusal::NulInPath), "{e}");
}

/// Found by the fuzzer: a symlink target longer than the kernel's PATH_MAX (a PAX `linkpath` can be 64 KiB) was
/// checked as fine and failed only at `symlinkat`. It is now refused when read, as too long.
#[test]
fn regression_symlink_target_over_path_max() {
    let target = b"a/".repeat(2400);
    let e = refused(Feed::Tar, &sound_tar(&[(b'5', b"a", b"", b""), (b'2', b"l", &target, b"")]));
    assert_eq!(e.entry.as_deref(), Some("l"), "{e}");
    assert!(matches!(e.reason, unpack::Refusal::LinkTargetTooLong { .. }), "{e}");
}

/// Found by the fuzzer (its slowest cases): resolving a symlink cost time quadratic in its target's depth, and
/// targets were not bounded: a 32 KiB `a/a/a/...` target and one link to it, about 150 compressed bytes, took
/// about 40 s. Targets are now bounded (PATH_MAX and `max_path_len` bytes, twice `max_depth` components) and a
/// lookup walks a tree of components; both shapes are refused at once.
#[test]
fn regression_deep_symlink_target_resolves_quickly() {
    for deep in [b"a/".repeat(16_000), b"a/".repeat(1_000)] {
        let tar = sound_tar(&[(b'5', b"a", b"", b""), (b'2', b"l", &deep, b""), (b'2', b"m", b"l", b"")]);
        let bytes = zstd::encode_all(&tar[..], 19).unwrap();
        let start = Instant::now();
        let e = refused(Feed::Zst, &bytes);
        let took = start.elapsed();
        assert_eq!(e.entry.as_deref(), Some("l"), "{e}");
        assert!(took < Duration::from_secs(3), "{} compressed bytes took {took:?} to refuse", bytes.len());
    }
}

/// Found while reading the fuzzer's slow cases: every entry's parent directories went into the unpacker's map as
/// separate copies of their whole prefix, so one 64-level, 4 KiB path cost about 200 KiB of memory; 4000 such
/// symlink entries (9 KiB compressed) raised the peak memory by about 800 MB. The map is now a tree of components.
/// The measurement runs in a process of its own (this test binary, re-run on the inner test), since the peak
/// memory of this one is raised by the tests running beside it.
#[test]
fn regression_deep_paths_memory_is_bounded() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fuzz::deep_paths_memory_inner", "--ignored", "--test-threads=1", "--nocapture"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
}

#[test]
#[ignore = "run by regression_deep_paths_memory_is_bounded in a process of its own"]
fn deep_paths_memory_inner() {
    let peak_kib = || -> u64 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let component = "c".repeat(62);
    let paths: Vec<Vec<u8>> = (0..4000)
        .map(|i| {
            let mut p = format!("u{i:05}");
            for _ in 0..63 {
                p.push('/');
                p.push_str(&component);
            }
            p.truncate(4090);
            p.into_bytes()
        })
        .collect();
    let mut entries: Vec<Entry> = paths.iter().map(|p| (b'2', p.as_slice(), b"x".as_slice(), b"".as_slice())).collect();
    // A fifo last: refused after every path has been read, before anything is written.
    entries.push((b'6', b"fifo", b"", b""));
    let bytes = zstd::encode_all(&sound_tar(&entries)[..], 19).unwrap();
    let before = peak_kib();
    let e = refused(Feed::Zst, &bytes);
    let grew = peak_kib().saturating_sub(before);
    assert_eq!(e.entry.as_deref(), Some("fifo"), "{e}");
    assert!(grew < 200 << 10, "{} compressed bytes raised the peak memory by {} MiB", bytes.len(), grew >> 10);
}

// ---------------------------------------------------------------------------------------------------------------
// The sandbox
// ---------------------------------------------------------------------------------------------------------------

/// `TMP/{victim, victim-dir/keep, sandbox/{outside/marker, up -> .., abs -> TMP/victim-dir, staging/}}`; only
/// `staging` may change, and it is made anew for every case.
pub struct Sandbox {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub staging: PathBuf,
    baseline: BTreeMap<PathBuf, Meta>,
}

/// What the snapshot compares, per path, read without following links.
#[derive(Debug, PartialEq, Eq)]
struct Meta {
    kind: &'static str,
    mode: u32,
    ino: u64,
    nlink: u64,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    data: Vec<u8>,
}

/// What one case did: the unpacker's answer (it returned, and every check held), or what went wrong.
pub type Outcome = Result<Result<Report, UnpackError>, String>;

/// Which entry point a case feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    Tar,
    Zst,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new().prefix("switchback-fuzz-").tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        fs::write(root.join("victim"), b"victim\n").unwrap();
        fs::create_dir(root.join("victim-dir")).unwrap();
        fs::write(root.join("victim-dir/keep"), b"keep\n").unwrap();
        let sandbox = root.join("sandbox");
        fs::create_dir(&sandbox).unwrap();
        fs::create_dir(sandbox.join("outside")).unwrap();
        fs::write(sandbox.join("outside/marker"), b"marker\n").unwrap();
        symlink("..", sandbox.join("up")).unwrap();
        symlink(root.join("victim-dir"), sandbox.join("abs")).unwrap();
        let staging = sandbox.join("staging");
        fs::create_dir(&staging).unwrap();
        let baseline = snapshot(&root, &staging);
        Sandbox { _dir: dir, root, staging, baseline }
    }

    /// Absolute paths that an escape would reach: what the hostile generator aims absolute names at.
    pub fn targets(&self) -> Vec<Vec<u8>> {
        ["victim", "victim-dir/pwned", "sandbox/outside/pwned", "sandbox/abs/pwned", "sandbox/staging/../outside/x"]
            .iter()
            .map(|p| self.root.join(p).as_os_str().as_bytes().to_vec())
            .collect()
    }

    /// Unpacks `bytes` into a fresh `staging` and checks everything; `staging` is left for the caller to inspect
    /// until the next run.
    pub fn run(&self, feed: Feed, bytes: &[u8], limits: &Limits) -> Outcome {
        self.run_with(|dir| match feed {
            Feed::Tar => unpack::unpack_tar(bytes, dir, limits, None),
            Feed::Zst => unpack::unpack_tar_zst(bytes, dir, limits, None),
        })
    }

    /// `run` with any unpacker (the checks' own test gives it misbehaving ones).
    fn run_with(&self, unpack: impl FnOnce(BorrowedFd<'_>) -> Result<Report, UnpackError>) -> Outcome {
        if fs::symlink_metadata(&self.staging).is_ok() {
            fs::remove_dir_all(&self.staging).map_err(|e| format!("cannot remove the last staging: {e}"))?;
        }
        fs::create_dir(&self.staging).unwrap();
        fs::set_permissions(&self.staging, fs::Permissions::from_mode(0o700)).unwrap();
        let ino = fs::symlink_metadata(&self.staging).unwrap().ino();
        let dir = fs::File::open(&self.staging).unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| unpack(dir.as_fd())));
        drop(dir);
        let mut problems = Vec::new();
        let result = match result {
            Ok(r) => Some(r),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                problems.push(format!("the unpacker panicked: {msg}"));
                None
            }
        };
        problems.extend(diff(&self.baseline, &snapshot(&self.root, &self.staging)));
        match fs::symlink_metadata(&self.staging) {
            Ok(md) if md.is_dir() && md.ino() == ino => problems.extend(check_staging(&self.staging)),
            Ok(md) => problems.push(format!("staging was replaced (now {:?}, inode {})", md.file_type(), md.ino())),
            Err(e) => problems.push(format!("staging is gone: {e}")),
        }
        match (result, problems.is_empty()) {
            (Some(r), true) => Ok(r),
            _ => Err(problems.join("\n")),
        }
    }
}

fn snapshot(root: &Path, skip: &Path) -> BTreeMap<PathBuf, Meta> {
    let mut out = BTreeMap::new();
    let parent = skip.parent().unwrap();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p == skip {
            continue;
        }
        let md = match fs::symlink_metadata(&p) {
            Ok(md) => md,
            Err(_) => continue,
        };
        let ft = md.file_type();
        let (kind, data) = if ft.is_dir() {
            let mut names: Vec<PathBuf> = fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()).collect();
            names.sort();
            stack.extend(names);
            ("dir", Vec::new())
        } else if ft.is_symlink() {
            ("symlink", fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec())
        } else if ft.is_file() {
            ("file", fs::read(&p).unwrap_or_default())
        } else {
            ("other", Vec::new())
        };
        // `staging` is removed and made again in its parent for every case: the parent's times move.
        let times = |t: (i64, i64)| if p == parent { (0, 0) } else { t };
        out.insert(
            p.clone(),
            Meta {
                kind,
                mode: md.mode(),
                ino: md.ino(),
                nlink: md.nlink(),
                uid: md.uid(),
                gid: md.gid(),
                size: md.size(),
                mtime: times((md.mtime(), md.mtime_nsec())),
                ctime: times((md.ctime(), md.ctime_nsec())),
                data,
            },
        );
    }
    out
}

fn diff(before: &BTreeMap<PathBuf, Meta>, after: &BTreeMap<PathBuf, Meta>) -> Vec<String> {
    let mut problems = Vec::new();
    for (p, m) in after {
        match before.get(p) {
            None => problems.push(format!("ESCAPE: {} appeared outside staging ({})", p.display(), m.kind)),
            Some(b) if b != m => problems.push(format!("ESCAPE: {} changed: {b:?} -> {m:?}", p.display())),
            _ => {}
        }
    }
    for p in before.keys().filter(|p| !after.contains_key(*p)) {
        problems.push(format!("ESCAPE: {} disappeared", p.display()));
    }
    problems
}

/// Calls `f` with every path below `dir` (relative components) and its metadata, without following links.
fn walk(dir: &Path, rel: &mut Vec<Vec<u8>>, f: &mut dyn FnMut(&[Vec<u8>], &fs::Metadata)) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(md) = fs::symlink_metadata(e.path()) else { continue };
        rel.push(e.file_name().as_bytes().to_vec());
        f(rel, &md);
        if md.is_dir() {
            walk(&e.path(), rel, f);
        }
        rel.pop();
    }
}

fn check_staging(staging: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let canonical = staging.canonicalize().unwrap();
    let root_mode = fs::symlink_metadata(staging).unwrap().mode();
    if root_mode & 0o7022 != 0 {
        problems.push(format!("staging itself has mode {root_mode:o}"));
    }
    walk(staging, &mut Vec::new(), &mut |rel, md| {
        let shown = String::from_utf8_lossy(&rel.join(&b'/')).into_owned();
        let ft = md.file_type();
        if ft.is_symlink() {
            let path = staging.join(std::ffi::OsStr::from_bytes(&rel.join(&b'/')));
            let target = fs::read_link(&path).unwrap().as_os_str().as_bytes().to_vec();
            if let Err(why) = resolve(staging, rel, &target, &mut 0) {
                problems.push(format!("symlink {shown} -> {}: {why}", String::from_utf8_lossy(&target)));
            }
            if let Ok(real) = path.canonicalize() {
                if !real.starts_with(&canonical) {
                    problems.push(format!("symlink {shown} resolves to {} outside staging", real.display()));
                }
            }
        } else if ft.is_dir() || ft.is_file() {
            if md.mode() & 0o7022 != 0 {
                problems.push(format!("{shown} has mode {:o}", md.mode()));
            }
        } else {
            problems.push(format!("{shown} is a special file ({ft:?})"));
        }
    });
    problems
}

/// Resolves a symlink's target over the real tree below `staging`, following the links met on the way, and
/// refuses any step above `staging`. Missing components and files are stepped through lexically (the kernel would
/// stop there), which is stricter than the kernel, never looser.
fn resolve(staging: &Path, link: &[Vec<u8>], target: &[u8], hops: &mut u32) -> Result<Vec<Vec<u8>>, String> {
    if target.first() == Some(&b'/') {
        return Err("absolute target".into());
    }
    let mut at: Vec<Vec<u8>> = link[..link.len() - 1].to_vec();
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if at.pop().is_none() {
                    return Err("ESCAPE: resolves above staging".into());
                }
            }
            name => {
                at.push(name.to_vec());
                let p = staging.join(std::ffi::OsStr::from_bytes(&at.join(&b'/')));
                if fs::symlink_metadata(&p).is_ok_and(|m| m.is_symlink()) {
                    *hops += 1;
                    if *hops > 40 {
                        return Err("symlink loop (the unpacker refuses those)".into());
                    }
                    let next = fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec();
                    let here = at.clone();
                    at = resolve(staging, &here, &next, hops)?;
                }
            }
        }
    }
    Ok(at)
}

// ---------------------------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------------------------

/// One generated input.
pub struct Case {
    pub feed: Feed,
    pub bytes: Vec<u8>,
    pub limits: Limits,
    /// For benign archives: what must come out.
    expect: Option<Model>,
    /// What the generator did, for replays.
    notes: Vec<String>,
}

impl Case {
    /// The input in the cargo-fuzz target's format: a selector byte (0 plain tar, 3 a zstd stream as it is),
    /// then the bytes.
    pub fn fuzz_input(&self) -> Vec<u8> {
        let mut out = vec![if self.feed == Feed::Tar { 0 } else { 3 }];
        out.extend_from_slice(&self.bytes);
        out
    }

    fn describe(&self) -> String {
        let l = &self.limits;
        let limits = if format!("{l:?}") == format!("{:?}", Limits::default()) {
            "default limits".to_owned()
        } else {
            format!("{l:?}")
        };
        let mut notes = self.notes.clone();
        if notes.len() > 60 {
            notes.truncate(60);
            notes.push("...".into());
        }
        format!(
            "{:?}, {} bytes, {limits}, {}\n  {}",
            self.feed,
            self.bytes.len(),
            if self.expect.is_some() { "benign: must unpack" } else { "may be refused" },
            notes.join("\n  ")
        )
    }
}

/// The random stream of one case: `(seed, index)` mixed with splitmix64.
fn case_rng(seed: u64, index: u64) -> fastrand::Rng {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fastrand::Rng::with_seed(mix(seed ^ mix(index)))
}

struct G<'a> {
    rng: fastrand::Rng,
    notes: Vec<String>,
    /// Absolute paths into the sandbox, outside `staging`.
    targets: &'a [Vec<u8>],
    /// How often (percent) a hostile header gets wild numeric fields, a bad checksum or an odd record size.
    chaos: u32,
}

impl G<'_> {
    fn chance(&mut self, percent: u32) -> bool {
        self.rng.u32(0..100) < percent
    }

    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.rng.usize(0..xs.len())].clone()
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.rng.fill(&mut v);
        v
    }

    fn note(&mut self, s: String) {
        self.notes.push(s);
    }
}

fn shown(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b).escape_debug().to_string();
    if s.len() > 80 {
        format!("{}...({} bytes)", s.chars().take(60).collect::<String>(), b.len())
    } else {
        s
    }
}

pub fn generate(seed: u64, index: u64, targets: &[Vec<u8>]) -> Case {
    let mut g = G { rng: case_rng(seed, index), notes: Vec::new(), targets, chaos: 0 };
    let mut limits = Limits::default();
    let roll = g.rng.u32(0..100);
    let (mut tar, expect) = match roll {
        0..=19 => {
            let (tar, model) = benign(&mut g);
            (tar, Some(model))
        }
        20..=34 => {
            let (tar, _) = benign(&mut g);
            (tar, None)
        }
        35..=49 => (links(&mut g), None),
        50..=89 => {
            if g.chance(20) {
                limits = small_limits(&mut g);
            }
            let tame = g.chance(35);
            (hostile(&mut g, tame), None)
        }
        90..=94 => (single_header(&mut g), None),
        _ => {
            let n = g.rng.usize(0..3000);
            g.note(format!("{n} random bytes"));
            (Tar { bytes: g.bytes(n), headers: Vec::new() }, None)
        }
    };
    if (20..=34).contains(&roll) || ((35..=89).contains(&roll) && g.chance(25)) {
        mutate(&mut g, &mut tar);
    }
    let (feed, bytes) = pack(&mut g, tar.bytes, expect.is_some());
    Case { feed, bytes, limits, expect, notes: g.notes }
}

fn small_limits(g: &mut G) -> Limits {
    let mut l = Limits::default();
    if g.chance(50) {
        l.max_unpacked = g.pick(&[1, 10, 512, 4096, 1 << 20]);
    }
    if g.chance(50) {
        l.max_entries = g.pick(&[1, 2, 3, 5, 10]);
    }
    if g.chance(50) {
        l.max_path_len = g.pick(&[1, 5, 20, 100, 255]);
    }
    if g.chance(50) {
        l.max_depth = g.pick(&[1, 2, 3, 5]);
    }
    if g.chance(50) {
        l.max_record = g.pick(&[0, 1, 10, 100, 600]);
    }
    if g.chance(30) {
        l.max_window = g.pick(&[1 << 10, 1 << 12, 1 << 16, 1 << 19, 1 << 20]);
    }
    l
}

/// Wraps the tar bytes for one of the two entry points. Benign archives only get valid wrappings.
fn pack(g: &mut G, tar: Vec<u8>, valid: bool) -> (Feed, Vec<u8>) {
    let roll = if valid { g.rng.u32(0..94) } else { g.rng.u32(0..100) };
    let level = g.pick(&[-5, 1, 1, 1, 3]);
    let zst = |tar: &[u8]| zstd::encode_all(tar, level).unwrap();
    match roll {
        0..=34 => {
            g.note("fed as plain tar".into());
            (Feed::Tar, tar)
        }
        35..=79 => {
            g.note(format!("fed as one zstd frame (level {level})"));
            (Feed::Zst, zst(&tar))
        }
        80..=86 => {
            let cut = g.rng.usize(0..=tar.len());
            g.note(format!("fed as two zstd frames split at {cut}"));
            let mut out = zst(&tar[..cut]);
            out.extend(zst(&tar[cut..]));
            (Feed::Zst, out)
        }
        87..=90 => {
            let n = g.rng.usize(0..64);
            g.note(format!("fed as zstd behind a skippable frame of {n} bytes"));
            let mut out = (0x184d_2a50u32 + g.rng.u32(0..16)).to_le_bytes().to_vec();
            out.extend((n as u32).to_le_bytes());
            out.extend(g.bytes(n));
            out.extend(zst(&tar));
            (Feed::Zst, out)
        }
        91..=93 => {
            g.note("fed as zstd with a content checksum".into());
            let mut enc = zstd::stream::Encoder::new(Vec::new(), level).unwrap();
            enc.include_checksum(true).unwrap();
            enc.write_all(&tar).unwrap();
            let mut out = enc.finish().unwrap();
            if !valid {
                let n = out.len();
                out[n - 1 - g.rng.usize(0..4)] ^= 1 << g.rng.u32(0..8);
                g.note("  with the checksum corrupted".into());
            }
            (Feed::Zst, out)
        }
        94..=97 => {
            let mut out = zst(&tar);
            let k = g.rng.usize(1..5);
            for _ in 0..k {
                if out.is_empty() {
                    break;
                }
                match g.rng.u32(0..4) {
                    0 => out.truncate(g.rng.usize(0..out.len())),
                    1 => {
                        let i = g.rng.usize(0..out.len());
                        out.insert(i, g.rng.u8(..));
                    }
                    2 => {
                        out.remove(g.rng.usize(0..out.len()));
                    }
                    _ => {
                        let i = g.rng.usize(0..out.len());
                        out[i] = g.rng.u8(..);
                    }
                }
            }
            g.note(format!("fed as zstd with {k} byte mutations of the compressed stream"));
            (Feed::Zst, out)
        }
        _ => {
            let mut out = if g.chance(50) { vec![0x28, 0xb5, 0x2f, 0xfd] } else { Vec::new() };
            let n = g.rng.usize(0..256);
            out.extend(g.bytes(n));
            g.note(format!("fed to zstd as {} bytes of noise", out.len()));
            (Feed::Zst, out)
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Benign archives and their model
// ---------------------------------------------------------------------------------------------------------------

/// What a benign archive must unpack to. Paths are `/`-joined, relative to the release root.
#[derive(Default)]
struct Model {
    dirs: BTreeMap<String, u32>,
    files: BTreeMap<String, (Vec<u8>, u32)>,
    symlinks: BTreeMap<String, String>,
    hardlinks: BTreeMap<String, String>,
}

impl Model {
    fn check(&self, staging: &Path, outcome: &Result<Report, UnpackError>) -> Vec<String> {
        let report = match outcome {
            Ok(r) => r,
            Err(e) => return vec![format!("a benign archive was refused: {e} ({:?})", e.reason)],
        };
        let mut problems = Vec::new();
        let bytes: u64 = self.files.values().map(|(d, _)| d.len() as u64).sum();
        let counts = (report.files, report.symlinks, report.hardlinks, report.bytes);
        let want = (self.files.len() as u64, self.symlinks.len() as u64, self.hardlinks.len() as u64, bytes);
        if counts != want {
            problems.push(format!("report {report:?}, expected (files, symlinks, hardlinks, bytes) {want:?}"));
        }
        let mut found = BTreeSet::new();
        walk(staging, &mut Vec::new(), &mut |rel, _| {
            found.insert(String::from_utf8_lossy(&rel.join(&b'/')).into_owned());
        });
        let expected: BTreeSet<String> = self
            .dirs
            .keys()
            .chain(self.files.keys())
            .chain(self.symlinks.keys())
            .chain(self.hardlinks.keys())
            .cloned()
            .collect();
        if found != expected {
            problems.push(format!(
                "unpacked paths differ: extra {:?}, missing {:?}",
                found.difference(&expected).collect::<Vec<_>>(),
                expected.difference(&found).collect::<Vec<_>>()
            ));
            return problems;
        }
        let md = |p: &str| fs::symlink_metadata(staging.join(p)).unwrap();
        let root_mode = fs::symlink_metadata(staging).unwrap().mode() & 0o7777;
        if root_mode != 0o755 {
            problems.push(format!("the release root has mode {root_mode:o}, expected 755"));
        }
        for (p, mode) in &self.dirs {
            let m = md(p);
            if !m.is_dir() || m.mode() & 0o7777 != *mode {
                problems.push(format!(
                    "directory {p}: {:?} mode {:o}, expected mode {mode:o}",
                    m.file_type(),
                    m.mode()
                ));
            }
        }
        for (p, (data, mode)) in &self.files {
            let m = md(p);
            if !m.is_file() || m.mode() & 0o7777 != *mode || fs::read(staging.join(p)).ok().as_ref() != Some(data) {
                problems.push(format!(
                    "file {p}: {:?} mode {:o}, expected {mode:o} and its data",
                    m.file_type(),
                    m.mode()
                ));
            }
        }
        for (p, target) in &self.symlinks {
            let got = fs::read_link(staging.join(p)).map(|t| t.as_os_str().as_bytes().to_vec()).ok();
            if got.as_deref() != Some(target.as_bytes()) {
                problems.push(format!("symlink {p}: {got:?}, expected -> {target}"));
            }
        }
        for (p, target) in &self.hardlinks {
            if md(p).ino() != md(target).ino() || !md(p).is_file() {
                problems.push(format!("hard link {p} is not {target}"));
            }
        }
        problems
    }
}

fn file_mode(mode: u32) -> u32 {
    (mode & 0o555) | 0o400
}

fn dir_mode(mode: u32) -> u32 {
    (mode & 0o755) | 0o700
}

/// A name no sibling has, mostly short, sometimes long enough to need a long-name record.
fn fresh(g: &mut G, taken: &BTreeSet<String>, parent: &str) -> String {
    loop {
        let len = if g.chance(10) { g.rng.usize(90..200) } else { g.rng.usize(1..12) };
        let name: String =
            (0..len).map(|_| g.pick(&['a', 'b', 'c', 'x', 'y', 'z', '0', '7', '_', '-', '.', 'Q'])).collect();
        if name == "." || name == ".." {
            continue;
        }
        let path = if parent.is_empty() { name } else { format!("{parent}/{name}") };
        if !taken.contains(&path) && path.len() < 3000 {
            return path;
        }
    }
}

/// From the directory `from` to `to`, both relative to the root (`""` is the root).
fn relative(g: &mut G, from: &str, to: &str) -> String {
    let split = |s: &str| -> Vec<String> { s.split('/').filter(|c| !c.is_empty()).map(String::from).collect() };
    let (f, t) = (split(from), split(to));
    let common = if g.chance(30) { 0 } else { f.iter().zip(&t).take_while(|(a, b)| a == b).count() };
    let mut parts: Vec<String> = vec!["..".into(); f.len() - common];
    parts.extend(t[common..].iter().cloned());
    if parts.is_empty() {
        return ".".into();
    }
    let rel = parts.join("/");
    if g.chance(15) {
        format!("./{rel}")
    } else {
        rel
    }
}

/// A well-formed archive and the tree it must unpack to.
fn benign(g: &mut G) -> (Tar, Model) {
    let mut out = Tar::new();
    let mut model = Model::default();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut dirs: Vec<String> = vec![String::new()];
    let mut files: Vec<String> = Vec::new();
    let mut all: Vec<String> = vec![String::new()];
    let format = g.pick(&[Format::Ustar, Format::Gnu, Format::V7]);
    g.note(format!("benign archive, {format:?} headers"));
    if g.chance(10) {
        let data = pax_record(b"comment", b"generated by the fuzz test");
        out.append_record(b'g', b"pax_global_header", &data, format);
        g.note("  global PAX header with a comment".into());
    }
    for _ in 0..g.rng.usize(1..=16) {
        let roll = g.rng.u32(0..100);
        let mode = if g.chance(70) { g.pick(&[0o644, 0o755, 0o600, 0o700]) } else { g.rng.u32(0..0o10000) };
        match roll {
            0..=19 => {
                // A directory: new, or one that exists (explicitly or implicitly), which takes the new mode.
                let path = if g.chance(25) && dirs.len() > 1 {
                    g.pick(&dirs[1..])
                } else {
                    let parent = g.pick(&dirs);
                    fresh(g, &taken, &parent)
                };
                let old_style = g.chance(10);
                let name = if old_style || g.chance(30) { format!("{path}/") } else { path.clone() };
                benign_entry(g, &mut out, if old_style { b'0' } else { b'5' }, &name, "", mode, &[], format);
                if taken.insert(path.clone()) {
                    dirs.push(path.clone());
                    all.push(path.clone());
                }
                model.dirs.insert(path, dir_mode(mode));
            }
            20..=59 => {
                let mut parent = g.pick(&dirs);
                if g.chance(20) {
                    // Under a directory the archive never names: made implicitly.
                    parent = fresh(g, &taken, &parent);
                    taken.insert(parent.clone());
                    dirs.push(parent.clone());
                    all.push(parent.clone());
                    model.dirs.insert(parent.clone(), 0o755);
                }
                let path = fresh(g, &taken, &parent);
                let len = g.pick(&[0, 1, 100, 511, 512, 513, 3000]);
                let data = if g.chance(50) { g.bytes(len) } else { vec![b'z'; len] };
                let kind = g.pick(b"00\x007");
                benign_entry(g, &mut out, kind, &path, "", mode, &data, format);
                taken.insert(path.clone());
                files.push(path.clone());
                all.push(path.clone());
                model.files.insert(path, (data, file_mode(mode)));
            }
            60..=79 => {
                let parent = g.pick(&dirs);
                let path = fresh(g, &taken, &parent);
                let to = g.pick(&all);
                let target = relative(g, &parent, &to);
                benign_entry(g, &mut out, b'2', &path, &target, 0o777, &[], format);
                taken.insert(path.clone());
                all.push(path.clone());
                model.symlinks.insert(path, target);
            }
            _ if !files.is_empty() => {
                let parent = g.pick(&dirs);
                let path = fresh(g, &taken, &parent);
                let to = g.pick(&files);
                let target = if g.chance(20) { format!("./{to}") } else { to.clone() };
                benign_entry(g, &mut out, b'1', &path, &target, mode, &[], format);
                taken.insert(path.clone());
                all.push(path.clone());
                model.hardlinks.insert(path, to);
            }
            _ => {}
        }
    }
    if model.files.is_empty() && model.symlinks.is_empty() && model.dirs.is_empty() {
        benign_entry(g, &mut out, b'0', "only", "", 0o644, b"x", format);
        model.files.insert("only".into(), (b"x".to_vec(), file_mode(0o644)));
    }
    out.append_end();
    (out, model)
}

/// One well-formed entry: long names and targets go in a PAX, GNU or ustar-prefix record, as a real tar would.
#[allow(clippy::too_many_arguments)]
fn benign_entry(g: &mut G, out: &mut Tar, kind: u8, name: &str, link: &str, mode: u32, data: &[u8], format: Format) {
    let mut name = name.as_bytes().to_vec();
    if g.chance(15) {
        name = [b"./".as_slice(), &name].concat();
    }
    let link = link.as_bytes().to_vec();
    let (mut hprefix, mut hname) = (Vec::new(), name.clone());
    let mut pax = Vec::new();
    let mut how = "";
    if name.len() > 100 {
        let split = if format == Format::Ustar { ustar_split(&name) } else { None };
        match (split, g.rng.u32(0..3)) {
            (Some((p, n)), 0) => {
                (hprefix, hname) = (p, n);
                how = " (ustar prefix)";
            }
            (_, 1) => {
                out.append_gnu_long(b'L', &name, format);
                how = " (GNU long name)";
            }
            _ => {
                pax.extend(pax_record(b"path", &name));
                how = " (PAX path)";
            }
        }
    }
    if link.len() > 100 {
        if g.chance(50) {
            out.append_gnu_long(b'K', &link, format);
        } else {
            pax.extend(pax_record(b"linkpath", &link));
        }
    }
    if g.chance(10) {
        pax.extend(pax_record(b"mtime", b"1700000000.5"));
        pax.extend(pax_record(b"size", data.len().to_string().as_bytes()));
        pax.extend(pax_record(b"uname", b"someone"));
    }
    if !pax.is_empty() {
        out.append_record(b'x', b"PaxHeaders/entry", &pax, format);
    }
    let size = data.len() as u64;
    let h = Hdr { link: &link, prefix: &hprefix, mode: mode.into(), size, format, ..hdr(kind, &hname) };
    out.append(h.bytes(), data);
    g.note(format!(
        "  {} {} {:o}{}{how} {} bytes",
        shown(&[kind]),
        shown(&name),
        mode,
        if link.is_empty() { String::new() } else { format!(" -> {}", shown(&link)) },
        data.len()
    ));
}

// ---------------------------------------------------------------------------------------------------------------
// Hostile archives
// ---------------------------------------------------------------------------------------------------------------

const WORDS: &[&str] = &["a", "b", "c", "d", "x", "bin", "sub", "lib"];

/// A name from small pools, so that names repeat, go through earlier entries, and aim outward.
fn hostile_name(g: &mut G, names: &[Vec<u8>]) -> Vec<u8> {
    let roll = g.rng.u32(0..100);
    let mut name = match roll {
        0..=29 => {
            let n = g.rng.usize(1..4);
            let parts: Vec<&str> = (0..n).map(|_| g.pick(WORDS)).collect();
            parts.join("/").into_bytes()
        }
        30..=49 if !names.is_empty() => {
            let earlier = g.pick(names);
            match g.rng.u32(0..4) {
                0 => earlier,
                1 => [earlier.as_slice(), b"/", g.pick(WORDS).as_bytes()].concat(),
                2 => [earlier.as_slice(), b"/../", g.pick(WORDS).as_bytes()].concat(),
                _ => [earlier.as_slice(), b"/"].concat(),
            }
        }
        50..=61 => g
            .pick(&[
                "..",
                "../x",
                "a/../b",
                "a/../../x",
                "x/..",
                ".",
                "./",
                "",
                "/",
                "../outside/pwned",
                "../up/victim-dir/pwned",
                "../abs/pwned",
                "../../victim",
                "a/b/../../../outside/pwned",
                "./../staging/../outside/pwned",
                "a/./../..",
                "..\\x",
                "...",
                "a/.../b",
            ])
            .into(),
        62..=67 => {
            let t = g.pick(g.targets);
            match g.rng.u32(0..4) {
                0 => t,
                1 => [b"/", t.as_slice()].concat(),
                2 => b"/tmp/switchback-fuzz-absolute".to_vec(),
                _ => [b"/./", t.as_slice()].concat(),
            }
        }
        68..=71 => g.pick(&[b"a\0b".as_slice(), b"a\0/../../x", b"\0", b"x/\0"]).to_vec(),
        72..=77 => match g.rng.u32(0..4) {
            0 => vec![b'n'; g.rng.usize(100..300)],
            1 => {
                let n = g.rng.usize(60..70);
                vec!["d"; n].join("/").into_bytes()
            }
            2 => {
                let c = "c".repeat(200);
                vec![c.as_str(); g.rng.usize(19..22)].join("/").into_bytes()
            }
            _ => [b"sub/".as_slice(), &[b'l'; 101]].concat(),
        },
        78..=81 => g.pick(&[b"\xff\xfe".as_slice(), b"a\nb", b" ", b"a/b/", b"sub//x", b"./a/./b"]).to_vec(),
        _ => g.pick(WORDS).into(),
    };
    if g.chance(5) {
        name.extend_from_slice(b"/");
    }
    if g.chance(5) {
        name = [b"./".as_slice(), &name].concat();
    }
    name
}

/// A link target: earlier entries by correct and off-by-one relative paths, outward, absolute, loops, oddities.
fn hostile_target(g: &mut G, names: &[Vec<u8>], link: &[u8]) -> Vec<u8> {
    let depth = link.split(|b| *b == b'/').filter(|c| !c.is_empty() && *c != b".").count().saturating_sub(1);
    let roll = g.rng.u32(0..100);
    match roll {
        0..=24 if !names.is_empty() => {
            let to = g.pick(names);
            let ups = match g.rng.u32(0..5) {
                0 => depth + 1,
                1 => depth.saturating_sub(1),
                _ => depth,
            };
            [b"../".repeat(ups), to].concat()
        }
        25..=39 => {
            if !names.is_empty() && g.chance(50) {
                g.pick(names)
            } else {
                g.pick(WORDS).into()
            }
        }
        40..=54 => {
            let mut t: Vec<u8> = g
                .pick(&[
                    "..",
                    "../..",
                    "../outside",
                    "../outside/marker",
                    "../../victim",
                    "../up",
                    "../abs",
                    "./../x",
                    "a/../../x",
                    "x/../..",
                    "sub/../..",
                    "./.././staging",
                ])
                .into();
            if !names.is_empty() && g.chance(40) {
                // Through an earlier entry, which may itself be a link.
                let via = g.pick(names);
                t = [via.as_slice(), b"/", t.as_slice()].concat();
            }
            t
        }
        55..=62 => match g.rng.u32(0..3) {
            0 => g.pick(g.targets),
            1 => g.pick(&["/", "/etc", "//x", "/.."]).into(),
            _ => [b"../".repeat(depth + 2), b"sandbox/outside".to_vec()].concat(),
        },
        63..=67 => g.pick(&["", ".", "./", "a/.", "a/b/c/../../.."]).into(),
        68..=72 => {
            // Loops: itself, or back to an earlier link.
            if names.is_empty() || g.chance(30) {
                link.rsplit(|b| *b == b'/').find(|c| !c.is_empty()).unwrap_or(b"x").to_vec()
            } else {
                [b"../".repeat(depth), g.pick(names)].concat()
            }
        }
        73..=77 => match g.rng.u32(0..3) {
            0 => vec![b't'; g.rng.usize(101..300)],
            1 => b"a/".repeat(g.rng.usize(40..1200)),
            _ => [b"a/../".repeat(g.rng.usize(20..60)), b"..".to_vec()].concat(),
        },
        78..=82 => g.pick(&[b"a\0b".as_slice(), b"\0", b"..\0", b"\xff", b"a\nb"]).to_vec(),
        _ => {
            let a = hostile_name(g, names);
            let b: Vec<u8> = g.pick(&["..", ".", "x", "../.."]).into();
            [a, b"/".to_vec(), b].concat()
        }
    }
}

fn hostile_mode(g: &mut G) -> u64 {
    match g.rng.u32(0..100) {
        0..=49 => g.pick(&[0o644, 0o755, 0o4755, 0o2755, 0o6777, 0o1777, 0o7777, 0o777, 0, 0o666, 0o200, 0o022]),
        50..=89 => g.rng.u64(0..0o10000),
        90..=97 => g.rng.u64(0..1 << 21),
        _ => g.rng.u64(..),
    }
}

/// A numeric field, mostly as tar writes it, sometimes in ways readers disagree on or reject.
fn hostile_num(g: &mut G, field: &mut [u8], v: u64) {
    match g.rng.u32(0..100) {
        0..=74 => octal(field, v),
        75..=79 => {
            let text = format!("{v:o} ");
            let w = field.len();
            if text.len() <= w {
                field.fill(b' ');
                field[w - text.len()..].copy_from_slice(text.as_bytes());
            } else {
                octal(field, v);
            }
        }
        80..=84 => base256(field, v),
        85..=87 => {
            let text = format!("{v:0width$o}", width = field.len());
            put(field, text.as_bytes());
        }
        88..=90 => field.fill(0),
        91..=93 => g.rng.fill(field),
        94..=96 => {
            octal(field, v);
            let i = g.rng.usize(0..field.len());
            field[i] = g.pick(b"89 -+x\xff");
        }
        _ => {
            field.fill(0xff);
        }
    }
}

fn hostile_header(g: &mut G, h: &Hdr) -> [u8; 512] {
    if !g.chance(g.chaos) {
        return h.bytes();
    }
    let mut b = [0u8; 512];
    put(&mut b[0..100], h.name);
    hostile_num(g, &mut b[100..108], h.mode);
    let (uid, gid) = if g.chance(90) { (0, 0) } else { (g.rng.u64(..1 << 21), g.rng.u64(..)) };
    hostile_num(g, &mut b[108..116], uid);
    hostile_num(g, &mut b[116..124], gid);
    if g.chance(90) {
        octal(&mut b[124..136], h.size);
    } else {
        hostile_num(g, &mut b[124..136], h.size);
    }
    hostile_num(g, &mut b[136..148], 1_700_000_000);
    b[156] = h.kind;
    put(&mut b[157..257], h.link);
    h.put_magic(&mut b);
    if matches!(h.kind, b'3' | b'4') || g.chance(3) {
        let (major, minor) = (g.rng.u64(..300), g.rng.u64(..300));
        hostile_num(g, &mut b[329..337], major);
        hostile_num(g, &mut b[337..345], minor);
    }
    if g.chance(3) {
        g.rng.fill(&mut b[500..512]);
    }
    match g.rng.u32(0..100) {
        0..=95 => set_checksum(&mut b),
        96 => {
            set_checksum(&mut b);
            b[150] ^= 1;
        }
        97 => {
            // The signed-char sum some old tars wrote.
            b[148..156].fill(b' ');
            let sum: i32 = b.iter().map(|x| i32::from(*x as i8)).sum();
            b[148..156].copy_from_slice(format!("{:06o}\0 ", sum as u32 & 0o777777).as_bytes());
        }
        98 => b[148..156].fill(b' '),
        _ => g.rng.fill(&mut b[148..156]),
    }
    b
}

/// A PAX extended header's body: path, linkpath and size with mostly sound lengths, and everything else.
fn hostile_pax(g: &mut G, names: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for _ in 0..g.rng.usize(1..4) {
        let key: Vec<u8> = g
            .pick(&[
                "path",
                "linkpath",
                "size",
                "mtime",
                "uid",
                "gid",
                "uname",
                "comment",
                "SCHILY.xattr.user.a",
                "LIBARCHIVE.xattr.user.b",
                "SCHILY.acl.access",
                "GNU.sparse.major",
                "GNU.sparse.map",
                "SCHILY.fflags",
                "RHT.security.selinux",
                "security.capability",
                "",
                "path ",
                "PATH",
            ])
            .into();
        let value: Vec<u8> = match key.as_slice() {
            b"size" | b"uid" | b"mtime" => {
                g.pick(&["0", "1", "512", "-1", "99999999999999999999", "abc", "", "1.5", " 1"]).into()
            }
            _ => hostile_name(g, names),
        };
        let mut rec = pax_record(&key, &value);
        match g.rng.u32(0..100) {
            0..=84 => {}
            85..=87 => {
                rec.pop();
            }
            88..=90 => rec = rec.iter().map(|b| if *b == b'=' { b'~' } else { *b }).collect(),
            91..=93 => rec.insert(0, b'9'),
            94..=96 => rec = format!("0 {}\n", String::from_utf8_lossy(&key)).into_bytes(),
            _ => {
                let n = g.rng.usize(0..40);
                rec = g.bytes(n);
            }
        }
        body.extend(rec);
    }
    body
}

/// An extension record (PAX local or global, GNU long name or link) as its own entry, with any body.
fn push_record(g: &mut G, out: &mut Tar, kind: u8, body: &[u8], format: Format) {
    let size = match g.rng.u32(0..100) {
        _ if !g.chance(g.chaos) => body.len() as u64,
        0..=89 => body.len() as u64,
        90..=94 => g.pick(&[0, 1 << 16, (1 << 16) + 1, 1 << 30, u64::MAX >> 1]),
        _ => (body.len() as u64).saturating_add(g.rng.u64(1..600)),
    };
    let name: &[u8] = if kind == b'L' || kind == b'K' { b"././@LongLink" } else { b"PaxHeaders/x" };
    let header = hostile_header(g, &Hdr { size, format, ..hdr(kind, name) });
    out.append(header, body);
    g.note(format!("  record {} size {size}: {}", kind as char, shown(body)));
}

/// A hostile archive. `tame` ones keep sound headers, records and ends, and only files, directories and links,
/// so that most get as far as the symlink checks at the end instead of stopping at their first broken header.
fn hostile(g: &mut G, tame: bool) -> Tar {
    let mut out = Tar::new();
    let mut names: Vec<Vec<u8>> = Vec::new();
    let format = g.pick(&[Format::Ustar, Format::Ustar, Format::Gnu, Format::V7]);
    g.chaos = if tame { 0 } else { 15 };
    g.note(format!("hostile archive{}, {format:?} headers", if tame { " (tame)" } else { "" }));
    for _ in 0..g.rng.usize(1..=if tame { 14 } else { 10 }) {
        let kind = if tame { g.pick(b"0055222211") } else { g.pick(b"00000\x00755522222111346SVMNADxgLKZ") };
        let kind = if !tame && g.chance(2) { g.rng.u8(..) } else { kind };
        let name = if tame && g.chance(75) { tame_name(g, &names) } else { hostile_name(g, &names) };
        let link = match kind {
            b'1' if tame && !names.is_empty() && g.chance(70) => g.pick(&names),
            b'1' | b'2' => hostile_target(g, &names, &name),
            _ if g.chance(5) => hostile_name(g, &names),
            _ => Vec::new(),
        };
        let mode = if tame { hostile_mode(g) & 0o7777 } else { hostile_mode(g) };
        let body_len = match kind {
            b'0' | b'\0' | b'7' => g.pick(&[0, 0, 1, 5, 64, 511, 512, 513, 2000]),
            _ if g.chance(10) => g.rng.usize(1..700),
            _ => 0,
        };
        let body = if g.chance(50) { g.bytes(body_len) } else { vec![b'\0'; body_len] };
        let size = match g.rng.u32(0..100) {
            _ if tame => body_len as u64,
            0..=84 => body_len as u64,
            85..=89 => body_len as u64 + g.rng.u64(1..600),
            90..=94 => (body_len as u64).saturating_sub(g.rng.u64(1..600)),
            _ => g.pick(&[1 << 32, 0o77777777777, (4 << 30) - 1, 4 << 30, u64::MAX, 1 << 62]),
        };

        // Extension records before the entry: how its name and target are given, and chaos.
        let mut pax = Vec::new();
        let mut hname = name.clone();
        let mut prefix = Vec::new();
        let long = name.len() > 100 || name.contains(&0);
        match (long, g.rng.u32(0..100)) {
            (_, 0..=9) | (true, 10..=44) => {
                pax.extend(pax_record(b"path", &name));
                hname = g.pick(&[b"decoy".as_slice(), b"", b"../decoy", &name]).to_vec();
            }
            (_, 45..=54) | (true, 55..=84) => {
                let mut rec = name.clone();
                if g.chance(80) {
                    rec.push(0);
                }
                push_record(g, &mut out, b'L', &rec, format);
                hname = g.pick(&[b"decoy".as_slice(), b"././@LongLink", &name]).to_vec();
            }
            (true, 85..=94) => {
                if let Some((p, n)) = ustar_split(&name) {
                    (prefix, hname) = (p, n);
                }
            }
            _ => {}
        }
        let mut hlink = link.clone();
        if link.len() > 100 || link.contains(&0) || g.chance(10) {
            if g.chance(50) {
                pax.extend(pax_record(b"linkpath", &link));
            } else {
                let mut rec = link.clone();
                rec.push(0);
                push_record(g, &mut out, b'K', &rec, format);
            }
            hlink = g.pick(&[b"decoy".as_slice(), b"", b"/etc/passwd"]).to_vec();
        }
        if g.chance(10) {
            let claimed = if tame || g.chance(70) { size } else { size.wrapping_add(g.rng.u64(1..10)) };
            pax.extend(pax_record(b"size", claimed.to_string().as_bytes()));
        }
        if !tame && g.chance(12) {
            pax.extend(hostile_pax(g, &names));
        }
        if !pax.is_empty() {
            push_record(g, &mut out, b'x', &pax, format);
        }
        if !tame && g.chance(8) {
            let extra = g.pick(b"xxgLK");
            let body = if extra == b'x' || extra == b'g' { hostile_pax(g, &names) } else { hostile_name(g, &names) };
            push_record(g, &mut out, extra, &body, format);
        }

        let h = Hdr { kind, name: &hname, prefix: &prefix, link: &hlink, mode, size, format };
        let header = hostile_header(g, &h);
        out.append(header, &body);
        g.note(format!(
            "  {} {} mode {mode:o} size {size} ({body_len} bytes){}",
            shown(&[kind]),
            shown(&name),
            if link.is_empty() { String::new() } else { format!(" -> {}", shown(&link)) }
        ));
        if !name.is_empty() {
            names.push(name);
        }
    }
    if tame {
        out.append_end();
        return out;
    }
    if g.chance(5) {
        let body = hostile_pax(g, &names);
        let kind = g.pick(b"xL");
        push_record(g, &mut out, kind, &body, format);
        g.note("  a record with no entry after it".into());
    }
    end(g, &mut out);
    out
}

/// A plain name from a few words, or an earlier entry's, or a path through one.
fn tame_name(g: &mut G, names: &[Vec<u8>]) -> Vec<u8> {
    if names.is_empty() || g.chance(50) {
        let n = g.rng.usize(1..4);
        let parts: Vec<&str> = (0..n).map(|_| g.pick(WORDS)).collect();
        return parts.join("/").into_bytes();
    }
    let earlier = g.pick(names);
    if g.chance(20) {
        earlier
    } else {
        [earlier.as_slice(), b"/", g.pick(WORDS).as_bytes()].concat()
    }
}

/// Sound headers for a few directories and files with distinct names, then symlinks with distinct names and
/// hostile targets (to those entries, to each other, outward, absolute, in loops): the symlink checks at the end
/// of the unpack are reached in nearly every case.
fn links(g: &mut G) -> Tar {
    let mut out = Tar::new();
    let format = g.pick(&[Format::Ustar, Format::Gnu, Format::V7]);
    g.note(format!("symlink archive, {format:?} headers"));
    let mut dirs: Vec<Vec<u8>> = vec![Vec::new()];
    let mut names: Vec<Vec<u8>> = Vec::new();
    let mut taken = BTreeSet::new();
    let under = |parent: &[u8], name: &str| {
        if parent.is_empty() {
            name.as_bytes().to_vec()
        } else {
            [parent, b"/", name.as_bytes()].concat()
        }
    };
    for _ in 0..g.rng.usize(0..6) {
        let parent = g.pick(&dirs);
        let path = under(&parent, g.pick(WORDS));
        if !taken.insert(path.clone()) {
            continue;
        }
        let dir = g.chance(50);
        let (kind, data) = if dir {
            (b'5', Vec::new())
        } else {
            let n = g.rng.usize(0..100);
            (b'0', g.bytes(n))
        };
        out.append(Hdr { mode: 0o755, size: data.len() as u64, format, ..hdr(kind, &path) }.bytes(), &data);
        g.note(format!("  {} {}", kind as char, shown(&path)));
        if dir {
            dirs.push(path.clone());
        }
        names.push(path);
    }
    for i in 0..g.rng.usize(1..=8) {
        let parent = g.pick(&dirs);
        let path = under(&parent, &format!("l{i}"));
        let target = hostile_target(g, &names, &path);
        let mut pax = Vec::new();
        let mut hlink = target.clone();
        if target.len() > 100 || target.contains(&0) {
            pax = pax_record(b"linkpath", &target);
            hlink = Vec::new();
        }
        if !pax.is_empty() {
            out.append_record(b'x', b"PaxHeaders/l", &pax, format);
        }
        let h = Hdr { link: &hlink, mode: 0o777, format, ..hdr(b'2', &path) };
        out.append(h.bytes(), &[]);
        g.note(format!("  2 {} -> {}", shown(&path), shown(&target)));
        names.push(path);
    }
    if g.chance(15) {
        // Something through one of the links: refused, whatever the link resolves to.
        let via = g.pick(&names);
        let path = [via.as_slice(), b"/pwned"].concat();
        out.append(Hdr { size: 1, format, ..hdr(b'0', &path) }.bytes(), b"!");
        g.note(format!("  0 {}", shown(&path)));
    }
    out.append_end();
    out
}

/// One header with random fields and a sound checksum, then the end.
fn single_header(g: &mut G) -> Tar {
    let mut out = Tar::new();
    let mut h = [0u8; 512];
    g.rng.fill(&mut h);
    if g.chance(50) {
        h[257..263].copy_from_slice(b"ustar\0");
    }
    if g.chance(50) {
        octal(&mut h[124..136], g.rng.u64(0..2000));
    }
    set_checksum(&mut h);
    let n = g.rng.usize(0..1500);
    let body = g.bytes(n);
    g.note(format!("one random header ({:?} type) and {n} bytes", h[156] as char));
    out.append(h, &body);
    end(g, &mut out);
    out
}

/// The end of the archive: two zero blocks, or fewer, or more, or garbage after them, or a cut.
fn end(g: &mut G, out: &mut Tar) {
    let how = match g.rng.u32(0..100) {
        0..=69 => {
            out.bytes.extend_from_slice(&[0; 1024]);
            "two zero blocks"
        }
        70..=77 => {
            out.bytes.extend_from_slice(&[0; 512]);
            "one zero block"
        }
        78..=82 => "no end blocks",
        83..=87 => {
            let n = if g.chance(5) { (1 << 20) + 4096 } else { g.rng.usize(1..8192) };
            out.bytes.resize(out.bytes.len() + 1024 + n, 0);
            "end blocks and more zeros"
        }
        88..=93 => {
            out.bytes.extend_from_slice(&[0; 1024]);
            let n = g.rng.usize(1..100);
            let junk = g.bytes(n);
            out.bytes.extend(junk);
            "end blocks and garbage"
        }
        _ => {
            out.bytes.extend_from_slice(&[0; 1024]);
            let cut = g.rng.usize(0..out.bytes.len());
            out.bytes.truncate(cut);
            "cut short"
        }
    };
    g.note(format!("  end: {how}"));
}

/// Byte-level mutations, mostly aimed at header fields, then (mostly) repaired checksums.
fn mutate(g: &mut G, out: &mut Tar) {
    let k = g.rng.usize(1..=6);
    for _ in 0..k {
        if out.bytes.is_empty() {
            return;
        }
        let len = out.bytes.len();
        let what = match g.rng.u32(0..100) {
            0..=44 if !out.headers.is_empty() => {
                let h = g.pick(&out.headers);
                let (start, end) = g.pick(&[
                    (0, 100),
                    (100, 108),
                    (124, 136),
                    (156, 157),
                    (157, 257),
                    (257, 265),
                    (345, 500),
                    (329, 345),
                ]);
                let at = h + g.rng.usize(start..end);
                if at < len {
                    out.bytes[at] = g.pick(b"\0/.7 \x80\xff0125xgLKS");
                }
                format!("set byte {at}")
            }
            45..=59 if !out.headers.is_empty() => {
                let h = g.pick(&out.headers);
                let value: &[u8] = g.pick(&[
                    b"77777777777\0".as_slice(),
                    b"\x80\0\0\0\0\0\0\x01\0\0\0\0",
                    b"00000001000\0",
                    b"0\0",
                    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
                ]);
                // Header offsets go stale after insertions, deletions and cuts: aim only inside the stream.
                let at = (h + 124).min(len);
                let n = value.len().min(len - at);
                out.bytes[at..at + n].copy_from_slice(&value[..n]);
                format!("size field of header at {h}")
            }
            60..=74 => {
                let at = g.rng.usize(0..len);
                out.bytes[at] ^= 1 << g.rng.u32(0..8);
                format!("flip a bit at {at}")
            }
            75..=82 => {
                let at = g.rng.usize(0..=len);
                let n = g.pick(&[1, 7, 512, 100]);
                let junk = g.bytes(n);
                out.bytes.splice(at..at, junk);
                format!("insert {n} bytes at {at}")
            }
            83..=90 => {
                let at = g.rng.usize(0..len);
                let n = g.rng.usize(1..=(len - at).min(1024));
                out.bytes.drain(at..at + n);
                format!("delete {n} bytes at {at}")
            }
            91..=95 if len >= 512 => {
                let from = g.rng.usize(0..len / 512) * 512;
                let n = 512 * g.rng.usize(1..4);
                let chunk = out.bytes[from..(from + n).min(len)].to_vec();
                let to = g.rng.usize(0..=len / 512) * 512;
                out.bytes.splice(to..to, chunk);
                format!("copy blocks at {from} to {to}")
            }
            _ if len >= 1024 => {
                let a = g.rng.usize(0..len / 512) * 512;
                let b = g.rng.usize(0..len / 512) * 512;
                if a != b {
                    let (lo, hi) = (a.min(b), a.max(b));
                    let (left, right) = out.bytes.split_at_mut(hi);
                    left[lo..lo + 512].swap_with_slice(&mut right[..512]);
                }
                format!("swap blocks at {a} and {b}")
            }
            _ => "nothing".into(),
        };
        g.note(format!("  mutation: {what}"));
    }
    if g.chance(80) {
        fix_checksums(&mut out.bytes);
        g.note("  checksums repaired".into());
    }
}
