//! What the releases on disk cost: for each release, the bytes of its files and the bytes only it holds (files
//! whose every link is inside it), since unchanged files are shared between releases (see
//! [`crate::store::reuse`]). Pruning a release frees its unique bytes. Reads only; never follows a link.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::Context;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::base::fsutil::open_beneath;

/// The cost of one release.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of its regular files (each inode once).
    pub bytes: u64,
    /// Bytes of the files no other release shares.
    pub unique: u64,
}

/// The usage of each release directory in `releases` (in the same order).
pub fn of(releases: &[&Path]) -> anyhow::Result<Vec<Usage>> {
    // (dev, ino) -> (size, nlink); and per release, its inodes with their link counts inside it.
    let mut inodes: HashMap<(u64, u64), (u64, u64)> = HashMap::new();
    let mut per: Vec<HashMap<(u64, u64), u64>> = Vec::new();
    for dir in releases {
        let fd = rustix::fs::open(
            *dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening {}", dir.display()))?;
        let mut mine = HashMap::new();
        walk(fd.as_fd(), &mut |st| {
            let key = (st.st_dev, st.st_ino);
            inodes.insert(key, (st.st_size as u64, st.st_nlink));
            *mine.entry(key).or_insert(0) += 1;
        })
        .with_context(|| format!("reading {}", dir.display()))?;
        per.push(mine);
    }
    Ok(per
        .iter()
        .map(|mine| {
            let mut u = Usage::default();
            for (key, links) in mine {
                let (size, nlink) = inodes[key];
                u.bytes += size;
                if *links >= nlink {
                    u.unique += size;
                }
            }
            u
        })
        .collect())
}

fn walk(fd: BorrowedFd<'_>, file: &mut dyn FnMut(&rustix::fs::Stat)) -> anyhow::Result<()> {
    let dup = rustix::fs::openat(fd, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    for entry in rustix::fs::Dir::read_from(&dup)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let st = rustix::fs::statat(fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => file(&st),
            FileType::Directory => {
                let child = open_beneath(fd, name, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
                walk(child.as_fd(), file)?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_files_count_in_each_release_but_are_unique_to_none() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(a.join("sub")).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("sub/shared"), vec![1u8; 1000]).unwrap();
        std::fs::write(a.join("own"), vec![2u8; 10]).unwrap();
        std::fs::hard_link(a.join("own"), a.join("own-again")).unwrap();
        std::fs::hard_link(a.join("sub/shared"), b.join("shared")).unwrap();
        std::fs::write(b.join("new"), vec![3u8; 5]).unwrap();
        let u = of(&[&a, &b]).unwrap();
        assert_eq!(u, vec![Usage { bytes: 1010, unique: 10 }, Usage { bytes: 1005, unique: 5 }]);
        // Alone, the releases holds all of its own.
        assert_eq!(of(&[&b]).unwrap()[0].unique, 5);
    }
}
