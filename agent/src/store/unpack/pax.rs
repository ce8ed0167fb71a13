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

/// A global PAX header: only informational keys (git archive writes `comment` with the commit id).
pub(super) fn parse_global_pax(data: &[u8], offset: u64) -> Result<(), UnpackError> {
    let here = Here::at(offset);
    for r in format::pax_records(data).map_err(|at| here.refuse(Refusal::PaxMalformed { at }))? {
        if refused_key(r.key) {
            return Err(here.refuse(Refusal::PaxRefused { key: r.key.to_owned() }));
        }
        if matches!(r.key, "path" | "linkpath" | "size") {
            return Err(here.refuse(Refusal::PaxGlobalRefused { key: r.key.to_owned() }));
        }
    }
    Ok(())
}
