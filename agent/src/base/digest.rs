//! Streaming sha256 of files: the one routine that hashes an artifact or a download, beating the watchdog as it
//! goes.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};

/// The sha256 (hex) and size of a file, streamed.
pub fn sha256_file(path: &Path) -> anyhow::Result<(String, u64)> {
    let (hasher, total) = sha256_prefix(path, u64::MAX).with_context(|| format!("reading {}", path.display()))?;
    Ok((hex::encode(hasher.finalize()), total))
}

/// Hashes the first bytes of `path` (at most `limit`), streamed; returns the hasher (to go on with) and how many
/// bytes it saw.
pub fn sha256_prefix(path: &Path, limit: u64) -> std::io::Result<(Sha256, u64)> {
    let mut f = File::open(path)?.take(limit);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((hasher, total));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        crate::base::progress::beat();
    }
}
