//! Deltas, made by `publish`: the new release's archive with every regular file that the previous release (the
//! version the channel named before) already holds replaced by a reference to it (a PAX record
//! `SWITCHBACK.shared=SIZE:SHA256` on an entry without data). Every other entry, and every changed or added file,
//! is carried as it is, so the delta lists the whole new release (each entry's path, type, mode, size, content
//! hash and link target: its full index) and carries only what changed.
//!
//! A delta is kept only when it proves itself here, with the agents' own unpacker: the previous release is
//! unpacked, the delta is assembled against it, and the result must have exactly the index of the full archive
//! unpacked on its own (every path, type, mode, size, sha256 and link target). Otherwise publish says why and the
//! manifest names no delta. An agent assembles it the same way (see [`crate::store::reuse`]), and falls back to
//! the full artifact when its base is missing or not what it was.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::Digest;

use crate::store::reuse::{Donors, ReuseMode};
use crate::store::unpack::{self, SHARED_KEY};

/// What a delta holds.
#[derive(Debug, Clone)]
pub struct Made {
    /// Files carried (changed or added), and those referenced in the base.
    pub carried: u64,
    pub referenced: u64,
}

/// Content that a file of the base release has: size, sha256, and the archive's permission bits.
type Key = (u64, [u8; 32], u32);

/// Writes the delta of `new` against `base` (both `.tar.zst`) to `out`, and proves it (see the module
/// documentation). `Ok(None)`: no delta is worth making or it could not be proven (said at warn level).
pub fn make(base: &Path, new: &Path, out: &Path) -> anyhow::Result<Option<Made>> {
    let have = contents(base).with_context(|| format!("reading {}", base.display()))?;
    let made = match write(new, out, &have).with_context(|| format!("writing the delta {}", out.display()))? {
        Some(m) => m,
        None => return Ok(None),
    };
    match prove(base, new, out)? {
        Ok(()) => Ok(Some(made)),
        Err(why) => {
            tracing::warn!("not publishing a delta: assembled against the previous release it {why}");
            Ok(None)
        }
    }
}

fn decoder(path: &Path) -> anyhow::Result<tar::Archive<zstd::Decoder<'static, BufReader<File>>>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(tar::Archive::new(zstd::Decoder::new(f)?))
}

/// The regular files of an archive, by content and mode.
fn contents(archive: &Path) -> anyhow::Result<HashSet<Key>> {
    let mut out = HashSet::new();
    let mut ar = decoder(archive)?;
    let mut buf = vec![0u8; 64 << 10];
    for e in ar.entries()? {
        let mut e = e?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let mode = e.header().mode()? & 0o7777;
        let mut h = sha2::Sha256::new();
        let mut size = 0u64;
        loop {
            let n = e.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            size += n as u64;
        }
        out.insert((size, h.finalize().into(), mode));
    }
    Ok(out)
}

/// Writes the delta; `None` when the archive holds an entry a delta does not describe (then none is made).
fn write(new: &Path, out: &Path, have: &HashSet<Key>) -> anyhow::Result<Option<Made>> {
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut enc = zstd::Encoder::new(BufWriter::new(file), 10)?;
    enc.include_checksum(true)?;
    let mut tar = tar::Builder::new(enc);
    let mut made = Made { carried: 0, referenced: 0 };
    let mut ar = decoder(new)?;
    let mut data = Vec::new();
    for e in ar.entries()? {
        let mut e = e?;
        let path = e.path()?.into_owned();
        let mut h = e.header().clone();
        let kind = h.entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            // Informational only (the unpacker refuses what would change an entry): nothing to carry.
            continue;
        } else if kind.is_dir() {
            tar.append_data(&mut h, &path, std::io::empty())?;
        } else if kind.is_symlink() || kind.is_hard_link() {
            let target = e.link_name()?.context("a link without a target")?.into_owned();
            tar.append_link(&mut h, &path, &target)?;
        } else if kind.is_file() {
            // A small file is read whole; a large one goes through a temporary file, so memory stays small.
            let size = e.size();
            let mut spill = None;
            let mut hasher = sha2::Sha256::new();
            data.clear();
            if size <= 1 << 20 {
                e.read_to_end(&mut data)?;
                hasher.update(&data);
            } else {
                let mut f = tempfile::tempfile().context("creating a temporary file for a large file")?;
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = e.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    f.write_all(&buf[..n])?;
                }
                std::io::Seek::rewind(&mut f)?;
                spill = Some(f);
            }
            let sha: [u8; 32] = hasher.finalize().into();
            let mode = h.mode()? & 0o7777;
            if have.contains(&(size, sha, mode)) {
                let value = format!("{size}:{}", hex::encode(sha));
                tar.append_pax_extensions([(SHARED_KEY, value.as_bytes())])?;
                h.set_size(0);
                tar.append_data(&mut h, &path, std::io::empty())?;
                made.referenced += 1;
            } else {
                match spill {
                    Some(f) => tar.append_data(&mut h, &path, f)?,
                    None => tar.append_data(&mut h, &path, data.as_slice())?,
                }
                made.carried += 1;
            }
        } else {
            tracing::warn!(
                "not publishing a delta: `{}` is a {kind:?} entry, which a delta does not carry",
                path.display()
            );
            return Ok(None);
        }
    }
    let enc = tar.into_inner()?;
    let mut w = enc.finish()?;
    w.flush()?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(Some(made))
}

/// Unpacks `archive` with the agents' unpacker into `dir` (as a release at the usual kind of place) and writes
/// its index to `index`.
fn unpack_indexed(archive: &Path, dir: &Path, index: &Path, donors: &mut Donors) -> anyhow::Result<()> {
    std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let fd = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let report = unpack::unpack_tar_zst_reusing(
        BufReader::with_capacity(64 << 10, file),
        fd.as_fd(),
        &crate::config::Limits::default(),
        None,
        &super::check_links(),
        donors,
    )
    .with_context(|| format!("unpacking {}", archive.display()))?;
    crate::store::index::write(fd.as_fd(), dir, "delta-check", &report.hashes, index, None)?;
    Ok(())
}

/// Whether the delta at `delta`, assembled against `base`, is the release `new` is: `Err` says how it differs.
fn prove(base: &Path, new: &Path, delta: &Path) -> anyhow::Result<Result<(), String>> {
    let tmp = tempfile::tempdir().context("creating a directory to prove the delta in")?;
    let at = |n: &str| -> PathBuf { tmp.path().join(n) };
    unpack_indexed(base, &at("base"), &at("base.jsonl"), &mut Donors::none())?;
    unpack_indexed(new, &at("full"), &at("full.jsonl"), &mut Donors::none())?;
    let base_dir = at("base");
    let base_index = at("base.jsonl");
    let mut donors = Donors::for_delta(ReuseMode::Auto, &[(base_dir.as_path(), base_index.as_path())], None);
    if let Err(e) = unpack_indexed(delta, &at("assembled"), &at("assembled.jsonl"), &mut donors) {
        return Ok(Err(format!("cannot be unpacked: {e:#}")));
    }
    let full = std::fs::read_to_string(at("full.jsonl"))?;
    let assembled = std::fs::read_to_string(at("assembled.jsonl"))?;
    if let Some((a, b)) = full.lines().zip(assembled.lines()).find(|(a, b)| a != b) {
        return Ok(Err(format!("differs from the full archive: `{b}` where the full archive has `{a}`")));
    }
    if full.lines().count() != assembled.lines().count() {
        return Ok(Err("has another number of entries than the full archive".to_owned()));
    }
    Ok(Ok(()))
}
