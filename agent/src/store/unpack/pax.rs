//! PAX extended headers: which keys are honoured (path, linkpath, size), which are informational, and which are
//! refused because they would make the unpacker write something other than plain files, links and directories.

use super::error::Here;
use super::{format, Pending, Refusal, UnpackError};

/// Keys that would make us write something other than plain files, links and directories.
pub(super) fn refused_key(key: &str) -> bool {
    key.starts_with("SCHILY.xattr.")
        || key.starts_with("LIBARCHIVE.xattr.")
        || key.starts_with("SCHILY.acl")
        || key.starts_with("GNU.sparse")
        || key.starts_with("SCHILY.fflags")
        || key.starts_with("RHT.security")
        || key.contains("capability")
}

/// A PAX extended header: path, linkpath and size are honoured (later records override earlier ones); times,
/// owners and other informational keys are ignored.
pub(super) fn parse_pax(data: &[u8], pending: &mut Pending, offset: u64) -> Result<(), UnpackError> {
    let here = Here::at(offset);
    let records = format::pax_records(data).map_err(|at| here.refuse(Refusal::PaxMalformed { at }))?;
    for r in records {
        if refused_key(r.key) {
            return Err(here.refuse(Refusal::PaxRefused { key: r.key.to_owned() }));
        }
        match r.key {
            "path" => pending.pax_path = Some(r.value.to_vec()),
            "linkpath" => pending.pax_link = Some(r.value.to_vec()),
            // A delta's file that its base release holds (see `crate::store::reuse`): honoured only in a delta.
            SHARED_KEY => {
                let text = String::from_utf8_lossy(r.value).into_owned();
                pending.shared = Some(parse_shared(&text).ok_or_else(|| {
                    here.refuse(Refusal::DeltaRefMalformed { value: text.escape_debug().to_string() })
                })?);
            }
            "size" => {
                let text = String::from_utf8_lossy(r.value).into_owned();
                let size = text
                    .parse::<u64>()
                    .ok()
                    .filter(|_| r.value.iter().all(u8::is_ascii_digit))
                    .ok_or_else(|| here.refuse(Refusal::PaxSize { value: text.escape_debug().to_string() }))?;
                pending.pax_size = Some(size);
            }
            _ => {}
        }
    }
    Ok(())
}

/// The PAX key by which a delta names a file of its base release instead of carrying its data: `SIZE:SHA256`.
pub const SHARED_KEY: &str = "SWITCHBACK.shared";

fn parse_shared(text: &str) -> Option<(u64, [u8; 32])> {
    let (size, hex_sha) = text.split_once(':')?;
    let size = size.parse::<u64>().ok().filter(|_| size.bytes().all(|b| b.is_ascii_digit()))?;
    let mut sha = [0u8; 32];
    (hex_sha.len() == 64 && hex_sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(())?;
    hex::decode_to_slice(hex_sha, &mut sha).ok()?;
    Some((size, sha))
}

/// A global PAX header: only informational keys (git archive writes `comment` with the commit id).
pub(super) fn parse_global_pax(data: &[u8], offset: u64) -> Result<(), UnpackError> {
    let here = Here::at(offset);
    for r in format::pax_records(data).map_err(|at| here.refuse(Refusal::PaxMalformed { at }))? {
        if refused_key(r.key) {
            return Err(here.refuse(Refusal::PaxRefused { key: r.key.to_owned() }));
        }
        if matches!(r.key, "path" | "linkpath" | "size" | SHARED_KEY) {
            return Err(here.refuse(Refusal::PaxGlobalRefused { key: r.key.to_owned() }));
        }
    }
    Ok(())
}
