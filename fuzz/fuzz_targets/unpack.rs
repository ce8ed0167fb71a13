//! cargo-fuzz target for the archive unpacker: arbitrary bytes, unpacked into a sandbox with the same checks as
//! the end-to-end fuzz test, `tests/e2e/fuzz/`, which is included below for them (no panic; nothing outside
//! `staging` changes; no device, fifo or socket, no setuid, setgid, sticky or group/world write in it; every
//! symlink in it resolves inside it). A failing check panics, which libFuzzer reports as a crash.
//!
//! Only stable Rust is installed on the project's machines; `RUSTC_BOOTSTRAP=1` lets it take the unstable flags
//! that cargo-fuzz passes (`-Zsanitizer=address` among them). From the repository root:
//!
//! ```text
//! cargo install cargo-fuzz
//! # Optional seed corpus: every input the end-to-end generator makes in 5 s (some 4000 files, 30 MB), in this
//! # target's format; without it libFuzzer starts from nothing and takes long to find a valid header.
//! SWITCHBACK_FUZZ_SECS=5 SWITCHBACK_FUZZ_DUMP=$PWD/fuzz/corpus/unpack \
//!     cargo test --features switchback/crash-points --test e2e fuzz_unpacker
//! cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run unpack -- -max_total_time=3600 -rss_limit_mb=4096
//! ```
//!
//! The first build takes about 11 minutes on 2 cores; it then runs about 1000 inputs a second (with AddressSanitizer).
//! Each run leaves its sandbox, `$TMPDIR/switchback-fuzz-*`, behind (libFuzzer exits without dropping statics).
//! Crashes land in `fuzz/artifacts/unpack/`; replay one with `RUSTC_BOOTSTRAP=1 cargo fuzz run unpack FILE`, and
//! keep it as a named test in `tests/e2e/fuzz/regressions.rs`.
//!
//! Input format: the first byte picks how the rest is fed. `& 3`: 0 plain tar (`unpack_tar`), 1 plain tar after
//! repairing every header's checksum (so that mutations reach the parser), 2 tar compressed here with zstd
//! (`unpack_tar_zst`), 3 a zstd stream as it is. `& 4`: small limits (entries, size, path length, depth, record
//! size, window) instead of the defaults.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use switchback::config::Limits;

#[path = "../../tests/e2e/fuzz/mod.rs"]
#[allow(dead_code, unused_imports)]
mod shared;
/// The tests' raw tar writer, which the fuzz module writes its archives with (as `crate::tarw`).
#[path = "../../tests/e2e/tarw.rs"]
mod tarw;

use shared::{Feed, Sandbox};

static SANDBOX: OnceLock<Sandbox> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let sandbox = SANDBOX.get_or_init(Sandbox::new);
    let mut limits = Limits::default();
    // Keeps the disk in use small whatever a zstd stream expands to.
    limits.max_unpacked = 64 << 20;
    if mode & 4 != 0 {
        limits.max_unpacked = 4096;
        limits.max_entries = 8;
        limits.max_path_len = 64;
        limits.max_depth = 3;
        limits.max_record = 128;
        limits.max_window = 1 << 12;
    }
    let (feed, bytes) = match mode & 3 {
        0 => (Feed::Tar, rest.to_vec()),
        1 => {
            let mut tar = rest.to_vec();
            tarw::fix_checksums(&mut tar);
            (Feed::Tar, tar)
        }
        2 => (Feed::Zst, zstd::encode_all(rest, 1).unwrap()),
        _ => (Feed::Zst, rest.to_vec()),
    };
    if let Err(problem) = sandbox.run(feed, &bytes, &limits) {
        panic!("{problem}");
    }
});
