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
//! target's input format, a seed corpus for `fuzz/` (which includes this module for its sandbox and checks);
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
//!
//! The files, by what they make:
//! - `case.rs`: one case from `(seed, index)`: its random stream, which generator makes it, and its limits;
//! - `benign.rs`: well-formed archives, and the tree each must unpack to;
//! - `hostile.rs`: hostile archives, entry by entry and their extension records, and how an archive ends;
//! - `links.rs`: symlink archives;
//! - `names.rs`: entry names and link targets;
//! - `headers.rs`: header blocks and their fields (modes, numbers, checksums), PAX bodies, extension records,
//!   random single headers;
//! - `mutate.rs`: byte-level mutations of a tar stream;
//! - `compression.rs`: how the tar bytes are fed: plain, or in zstd frames sound and broken;
//! - `sandbox.rs`: where every case is unpacked, and the checks after it;
//! - `regressions.rs`: fixed cases, and what the fuzzer found, as named tests.
//!
//! Archives are written with the tests' raw tar writer, `crate::tarw`.

mod benign;
mod case;
mod compression;
mod headers;
mod hostile;
mod links;
mod mutate;
mod names;
mod regressions;
mod sandbox;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use switchback::unpack::{Report, UnpackError};

use case::{generate, Case};
use sandbox::walk;
/// What the cargo-fuzz target uses.
pub use sandbox::{Feed, Sandbox};

/// How long `fuzz_unpacker` runs without `SWITCHBACK_FUZZ_SECS`.
const DEFAULT_SECS: u64 = 20;
/// The seed without `SWITCHBACK_FUZZ_SEED`: fixed, so that CI always runs the same cases.
const DEFAULT_SEED: u64 = 0x5b_f022_5eed;

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
