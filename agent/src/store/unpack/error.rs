//! Why an archive was refused, and where: the entry (its path and header offset) or the byte offset, and the rule.
//! Host faults while writing (a full disk, a read-only file system) are told apart from refusals of the archive.

use std::io;

/// Why an archive was refused. Messages are lowercase and say what was wrong with the entry.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("a link target of {len} bytes is longer than the limit of {max}")]
    LinkTargetTooLong { len: usize, max: usize },
    #[error("absolute paths are refused")]
    AbsolutePath,
    #[error("`..` components are refused")]
    ParentComponent,
    #[error("the path is empty")]
    EmptyPath,
    #[error("the path contains a NUL byte")]
    NulInPath,
    #[error("the path is {len} bytes long (limit {max})")]
    PathTooLong { len: usize, max: usize },
    #[error("a path component is longer than 255 bytes")]
    NameTooLong,
    #[error("the path is {depth} levels deep (limit {max})")]
    TooDeep { depth: usize, max: usize },
    #[error("the path appears twice in the archive, as a link the second time (only a regular file may replace a regular file)")]
    Duplicate,
    #[error("the path appears twice with a different type")]
    TypeChange,
    #[error("the path goes through `{through}`, which is not a directory of the archive")]
    ThroughNonDirectory { through: String },
    #[error("symlink target `{target}` is absolute, outside the prefixes links may lead to (allowed: {allowed}; the app's `outside_links`)")]
    SymlinkAbsolute { target: String, allowed: String },
    #[error("symlink target `{target}` escapes the release (to {to}), outside the prefixes links may lead to (allowed: {allowed}; the app's `outside_links`)")]
    SymlinkEscapes { target: String, to: String, allowed: String },
    #[error("symlink target `{target}` is empty")]
    SymlinkEmpty { target: String },
    #[error("symlink target `{target}` resolves through too many links")]
    SymlinkLoop { target: String },
    #[error("hard link target `{target}` is outside the release")]
    HardlinkOutside { target: String },
    #[error("hard link target `{target}` has not appeared earlier in the archive")]
    HardlinkUnseen { target: String },
    #[error("hard link target `{target}` is not a regular file (hard links to directories and links are refused)")]
    HardlinkNotFile { target: String },
    #[error("the hard link has an empty target")]
    HardlinkEmpty,
    #[error("device nodes are refused")]
    Device,
    #[error("fifos are refused")]
    Fifo,
    #[error("sparse files are refused")]
    Sparse,
    #[error("unknown entry type {0:?}")]
    UnknownType(char),
    #[error(
        "PAX record `{key}` is refused (extended attributes, ACLs, capabilities and sparse files are not unpacked)"
    )]
    PaxRefused { key: String },
    #[error("PAX record `{key}` in a global header is refused (it would apply to every entry that follows)")]
    PaxGlobalRefused { key: String },
    #[error("malformed PAX record at byte {at} of the extended header")]
    PaxMalformed { at: usize },
    #[error("PAX `size` `{value}` is not a number")]
    PaxSize { value: String },
    #[error("the header's {field} field is not a number")]
    BadField { field: &'static str },
    #[error("a {what} record of {size} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { what: &'static str, size: u64, max: u64 },
    #[error("more than {max} entries")]
    TooManyEntries { max: u64 },
    #[error("unpacked size exceeds the limit of {max} bytes")]
    TooLarge { max: u64 },
    #[error("the archive is empty")]
    Empty,
    #[error("the stream is truncated: {what}")]
    Truncated { what: String },
    #[error("the stream is corrupt: {what}")]
    Corrupt { what: String },
    #[error("it is {format}, not zstd: releases are .tar.zst, tar compressed with zstd (`tar --zstd -cf`, or `switchback publish DIR`)")]
    NotZstd { format: &'static str },
    #[error("the zstd window exceeds the limit of {max} bytes")]
    WindowTooLarge { max: u64 },
    #[error("a second archive follows the end of the archive (a tar header at byte {at}); only one is unpacked, so it is refused rather than ignored")]
    SecondArchive { at: u64 },
    #[error("more than 1 MiB of data follows the end of the archive")]
    TrailingData,
    #[error("`SWITCHBACK.shared` `{value}` is not SIZE:SHA256 (a delta's reference to a file of its base release)")]
    DeltaRefMalformed { value: String },
    #[error("a delta's reference to its base release carries data of its own")]
    DeltaRefWithData,
    #[error("the delta's base release holds no file of {size} bytes with sha256 {sha256} and this mode (the base is missing or changed: the full artifact is needed)")]
    DeltaBaseMissing { size: u64, sha256: String },
    #[error("cannot write it")]
    Write,
    #[error("stopped: the agent is shutting down, or an operator cancelled the deploy")]
    Stopped,
}

/// A refused or failed unpack: which entry (if any), where in the archive, and why. The OS error, if any, is the
/// source.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(entry.as_deref(), *offset, reason))]
pub struct UnpackError {
    pub entry: Option<String>,
    /// Byte offset in the uncompressed archive: of the entry's header, or where the problem is.
    pub offset: Option<u64>,
    pub reason: Refusal,
    #[source]
    pub source: Option<io::Error>,
}

pub(super) fn describe(entry: Option<&str>, offset: Option<u64>, reason: &Refusal) -> String {
    match (entry, offset) {
        (Some(e), Some(o)) => format!("entry `{e}` (header at byte {o}): {reason}"),
        (Some(e), None) => format!("entry `{e}`: {reason}"),
        (None, Some(o)) => format!("at byte {o}: {reason}"),
        (None, None) => reason.to_string(),
    }
}

/// The entry an error is about: its path and header offset.
#[derive(Clone, Copy)]
pub(super) struct Here<'a> {
    pub(super) path: Option<&'a [u8]>,
    pub(super) offset: Option<u64>,
}

impl Here<'_> {
    pub(super) fn at(offset: u64) -> Here<'static> {
        Here { path: None, offset: Some(offset) }
    }
    pub(super) fn refuse(self, reason: Refusal) -> UnpackError {
        UnpackError { entry: self.path.map(display_bytes), offset: self.offset, reason, source: None }
    }
    pub(super) fn io(self, reason: Refusal, source: io::Error) -> UnpackError {
        UnpackError { entry: self.path.map(display_bytes), offset: self.offset, reason, source: Some(source) }
    }
    pub(super) fn write(self, source: io::Error) -> UnpackError {
        self.io(Refusal::Write, source)
    }
}

pub(crate) fn display_bytes(b: &[u8]) -> String {
    String::from_utf8_lossy(b).escape_debug().to_string()
}
