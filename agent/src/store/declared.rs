//! What a release declares about itself: the file `.switchback/release.toml` inside its archive, read once from
//! the staged release (after the unpack, before it is renamed into place). Today it holds one key:
//!
//! ```toml
//! epoch = 1   # a u64; a release that declares none has epoch 0
//! ```
//!
//! The parse is strict: an unknown key, a value that is not a non-negative integer, a file that is not UTF-8,
//! larger than [`MAX_SIZE`], or not a regular file (a link is never followed, `.switchback` included) is an
//! error naming the file, and the release is refused. A release without the file declares nothing.

use std::io::Read;
use std::os::fd::BorrowedFd;

use rustix::fs::{Mode, OFlags};
use serde::Deserialize;

use crate::base::fsutil;

/// The file's path inside a release.
pub const PATH: &str = ".switchback/release.toml";

/// The largest `release.toml` read.
pub const MAX_SIZE: u64 = 64 << 10;

/// What a release declares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declared {
    /// The release's epoch (see `engine::plan::not_lower_epoch`), if it declares one.
    #[serde(default)]
    pub epoch: Option<u64>,
}

/// Why `release.toml` was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{PATH} in the release: {why}")]
pub struct InvalidDeclaration {
    pub why: String,
}

fn invalid(why: impl Into<String>) -> InvalidDeclaration {
    InvalidDeclaration { why: why.into() }
}

/// Reads `release.toml` from the release directory `release` (an open handle), without following any link.
pub fn read(release: BorrowedFd<'_>) -> Result<Declared, InvalidDeclaration> {
    let not_found = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let link_or_not = |e: &std::io::Error, what: &str, kind: &str| {
        let errno = rustix::io::Errno::from_io_error(e);
        if errno == Some(rustix::io::Errno::LOOP)
            || errno == Some(rustix::io::Errno::NOTDIR)
            || errno == Some(rustix::io::Errno::XDEV)
        {
            invalid(format!("`{what}` is a link or not a {kind}; it must be a {kind} of the release itself"))
        } else {
            invalid(format!("opening `{what}`: {e}"))
        }
    };
    let dir = match fsutil::open_beneath(release, b".switchback", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) if not_found(&e) => return Ok(Declared::default()),
        Err(e) => return Err(link_or_not(&e, ".switchback", "directory")),
    };
    let file = match fsutil::open_beneath(
        std::os::fd::AsFd::as_fd(&dir),
        b"release.toml",
        OFlags::RDONLY | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) if not_found(&e) => return Ok(Declared::default()),
        Err(e) => return Err(link_or_not(&e, PATH, "regular file")),
    };
    let st = rustix::fs::fstat(&file).map_err(|e| invalid(format!("inspecting it: {e}")))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(invalid("it is not a regular file"));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(file)
        .take(MAX_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| invalid(format!("reading it: {e}")))?;
    if bytes.len() as u64 > MAX_SIZE {
        return Err(invalid(format!("it is larger than {MAX_SIZE} bytes")));
    }
    parse(&bytes)
}

/// Parses the text of `release.toml`.
pub fn parse(bytes: &[u8]) -> Result<Declared, InvalidDeclaration> {
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("it is not UTF-8 text"))?;
    toml::from_str::<Declared>(text).map_err(|e| {
        let at = e.span().map(|s| {
            let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        });
        invalid(format!(
            "{}{}; it may hold only `epoch = N` (a non-negative integer)",
            e.message().trim_end(),
            at.unwrap_or_default()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn the_epoch_is_parsed_strictly() {
        assert_eq!(parse(b"epoch = 3\n"), Ok(Declared { epoch: Some(3) }));
        assert_eq!(parse(b"# nothing declared\n"), Ok(Declared { epoch: None }));
        for (bad, says) in [
            (&b"epoch = -1\n"[..], "line 1"),
            (b"epoch = \"1\"\n", "line 1"),
            (b"epoch = 1.5\n", "line 1"),
            (b"\nepcoh = 1\n", "unknown field `epcoh`"),
            (b"epoch = 1\nepoch = 2\n", "line 2"),
            (b"epoch =\n", "line 1"),
            (b"\xff", "UTF-8"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.to_string().contains(says), "{bad:?}: {e}");
            assert!(e.to_string().starts_with(PATH), "{e}");
        }
    }

    fn dir_fd(p: &std::path::Path) -> std::fs::File {
        std::fs::File::open(p).unwrap()
    }

    #[test]
    fn it_is_read_without_following_links_and_capped() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(dir_fd(d.path()).as_fd()), Ok(Declared::default()));
        std::fs::create_dir(d.path().join(".switchback")).unwrap();
        assert_eq!(read(dir_fd(d.path()).as_fd()), Ok(Declared::default()));
        let file = d.path().join(PATH);
        std::fs::write(&file, "epoch = 7\n").unwrap();
        assert_eq!(read(dir_fd(d.path()).as_fd()), Ok(Declared { epoch: Some(7) }));
        std::fs::write(&file, format!("epoch = 7\n#{}\n", "x".repeat(MAX_SIZE as usize))).unwrap();
        assert!(read(dir_fd(d.path()).as_fd()).unwrap_err().why.contains("larger than"));
        // A link to a valid file elsewhere is not followed, for the file or for its directory.
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("release.toml"), "epoch = 1\n").unwrap();
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("release.toml"), &file).unwrap();
        assert!(read(dir_fd(d.path()).as_fd()).unwrap_err().why.contains("is a link"));
        std::fs::remove_file(&file).unwrap();
        std::fs::remove_dir(d.path().join(".switchback")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), d.path().join(".switchback")).unwrap();
        assert!(read(dir_fd(d.path()).as_fd()).unwrap_err().why.contains("is a link"));
        // A directory where the file should be.
        std::fs::remove_file(d.path().join(".switchback")).unwrap();
        std::fs::create_dir_all(&file).unwrap();
        assert!(read(dir_fd(d.path()).as_fd()).is_err());
    }
}
