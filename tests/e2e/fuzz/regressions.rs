//! Fixed cases and regressions. The fuzzer has found no escape, panic or special file so far; what it did find is
//! kept here as named tests, built from the smallest inputs that show it.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use switchback::config::Limits;
use switchback::unpack::{self, Report, UnpackError};

use super::{check_case, fail, generate, Feed, Sandbox, DEFAULT_SEED};
use crate::tarw::{hdr, pax_record, Format, Hdr, Tar};

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
        .args(["--exact", "fuzz::regressions::deep_paths_memory_inner", "--ignored", "--test-threads=1", "--nocapture"])
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
