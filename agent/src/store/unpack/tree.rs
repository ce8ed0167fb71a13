//! The release being unpacked, as the archive names it and as it is on disk: a map of the paths seen so far
//! (one copy of each name component), and directory handles opened one component at a time without following
//! links, with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` where the kernel has it.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

use crate::base::fsutil::open_beneath;

use super::Limits;
use super::Refusal;

#[derive(Debug)]
pub enum Node {
    Dir { mode: Option<u32> },
    File,
    Symlink { target: Vec<u8> },
}

pub type Comps = Vec<Vec<u8>>;

/// What the archive named so far, by path: a tree of components, so that memory grows with the bytes of the
/// names (one copy of each component) and a lookup costs one step per component. (A map keyed by whole paths
/// kept a full copy of every parent prefix: one 64-level path cost about 200 KiB, and a few thousand of them in a
/// 10 KB archive took gigabytes.)
#[derive(Default)]
pub struct PathMap {
    /// Index 0 is the release root (it never holds a node of its own).
    slots: Vec<Slot>,
}

#[derive(Default)]
struct Slot {
    parent: u32,
    name: Vec<u8>,
    node: Option<Node>,
    children: HashMap<Vec<u8>, u32>,
}

impl PathMap {
    pub fn new() -> PathMap {
        PathMap { slots: vec![Slot::default()] }
    }

    pub fn find(&self, comps: &[Vec<u8>]) -> Option<u32> {
        comps.iter().try_fold(0u32, |at, c| self.slots[at as usize].children.get(c.as_slice()).copied())
    }

    pub fn get(&self, comps: &[Vec<u8>]) -> Option<&Node> {
        self.find(comps).and_then(|i| self.slots[i as usize].node.as_ref())
    }

    /// Sets the node at `comps` (creating empty slots on the way); returns the node it replaced.
    pub fn insert(&mut self, comps: &[Vec<u8>], node: Node) -> Option<Node> {
        let mut at = 0u32;
        for c in comps {
            at = match self.slots[at as usize].children.get(c.as_slice()) {
                Some(&i) => i,
                None => {
                    let i = self.slots.len() as u32;
                    self.slots.push(Slot { parent: at, name: c.clone(), node: None, children: HashMap::new() });
                    self.slots[at as usize].children.insert(c.clone(), i);
                    i
                }
            };
        }
        self.slots[at as usize].node.replace(node)
    }

    /// Every directory with its path and mode.
    pub fn dirs(&self) -> Vec<(Comps, Option<u32>)> {
        let path = |mut i: u32| {
            let mut comps = Vec::new();
            while i != 0 {
                comps.push(self.slots[i as usize].name.clone());
                i = self.slots[i as usize].parent;
            }
            comps.reverse();
            comps
        };
        (1..self.slots.len() as u32)
            .filter_map(|i| match self.slots[i as usize].node {
                Some(Node::Dir { mode }) => Some((path(i), mode)),
                _ => None,
            })
            .collect()
    }
}

/// Splits an archive path into components: `.` and empty components vanish, `..` and absolute paths are refused.
pub fn normalize(raw: &[u8], limits: &Limits) -> Result<Comps, Refusal> {
    if raw.is_empty() {
        return Err(Refusal::EmptyPath);
    }
    if raw.len() > limits.max_path_len {
        return Err(Refusal::PathTooLong { len: raw.len(), max: limits.max_path_len });
    }
    if raw.contains(&0) {
        return Err(Refusal::NulInPath);
    }
    if raw[0] == b'/' {
        return Err(Refusal::AbsolutePath);
    }
    let mut comps = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(Refusal::ParentComponent),
            c if c.len() > 255 => return Err(Refusal::NameTooLong),
            c => comps.push(c.to_vec()),
        }
    }
    if comps.len() > limits.max_depth {
        return Err(Refusal::TooDeep { depth: comps.len(), max: limits.max_depth });
    }
    Ok(comps)
}

/// Directories of the staging tree, opened one component at a time without following links. The last opened
/// directory is cached, since archives list files of one directory together.
pub struct Tree<'a> {
    pub root: BorrowedFd<'a>,
    cache: Option<(Comps, Arc<OwnedFd>)>,
    /// The root as a handle of its own, for the writing threads.
    root_handle: Option<Arc<OwnedFd>>,
}

impl<'a> Tree<'a> {
    pub fn new(root: BorrowedFd<'a>) -> Self {
        Tree { root, cache: None, root_handle: None }
    }

    /// Like [`Tree::dir`], as a handle that may outlive this borrow (a file being written in it holds one).
    pub fn dir_handle(&mut self, comps: &[Vec<u8>]) -> io::Result<Arc<OwnedFd>> {
        if comps.is_empty() {
            if self.root_handle.is_none() {
                self.root_handle = Some(Arc::new(self.open_dir(&[])?));
            }
            return Ok(self.root_handle.clone().expect("set above"));
        }
        self.dir(comps)?;
        Ok(self.cache.as_ref().map(|(_, fd)| fd.clone()).expect("dir() caches what it opens"))
    }

    /// The directory at `comps`, created (mode 0700 until `finish`) where missing.
    pub fn dir(&mut self, comps: &[Vec<u8>]) -> io::Result<BorrowedFd<'_>> {
        if comps.is_empty() {
            return Ok(self.root);
        }
        let hit = matches!(&self.cache, Some((c, _)) if c.as_slice() == comps);
        if !hit {
            let fd = self.walk(comps, true)?;
            self.cache = Some((comps.to_vec(), Arc::new(fd)));
        }
        Ok(self.cache.as_ref().map(|(_, fd)| fd.as_fd()).unwrap_or(self.root))
    }

    /// Opens an existing directory (never creates), as an owned handle.
    pub fn open_dir(&self, comps: &[Vec<u8>]) -> io::Result<OwnedFd> {
        if comps.is_empty() {
            return open_beneath(self.root, b".", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty());
        }
        self.walk(comps, false)
    }

    pub fn walk(&self, comps: &[Vec<u8>], create: bool) -> io::Result<OwnedFd> {
        let mut cur: Option<OwnedFd> = None;
        for c in comps {
            let parent = cur.as_ref().map_or(self.root, |f| f.as_fd());
            let flags = OFlags::RDONLY | OFlags::DIRECTORY;
            let next = match open_beneath(parent, c, flags, Mode::empty()) {
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                    rustix::fs::mkdirat(parent, c.as_slice(), Mode::from_raw_mode(0o700))?;
                    open_beneath(parent, c, flags, Mode::empty())?
                }
                other => other?,
            };
            cur = Some(next);
        }
        cur.ok_or_else(|| io::Error::other("empty path"))
    }
}

/// Releases are immutable: files lose every write bit and setuid/setgid/sticky, and stay readable by their owner
/// (root). With a read group, the group gets the owner's read and execute bits.
pub fn file_mode(mode: u32, group_reads: bool) -> u32 {
    with_group((mode & 0o555) | 0o400, group_reads)
}

/// Directories keep owner write (root's, so that it can prune) but never group/world write or special bits.
pub fn dir_mode(mode: u32, group_reads: bool) -> u32 {
    with_group((mode & 0o755) | 0o700, group_reads)
}

fn with_group(mode: u32, group_reads: bool) -> u32 {
    if group_reads {
        mode | ((mode >> 3) & 0o050)
    } else {
        mode
    }
}
