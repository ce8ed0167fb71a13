//! What root may rely on: files and directories that nobody but root can change. As root, Switchback reads a
//! configuration, and writes under an app root and the state directory, only when that path and every directory
//! above it belong to root (or to the user running us) and are not writable by anyone else (a world-writable
//! directory above is accepted only when it is sticky and root's, like `/tmp`: there nobody can rename another
//! user's entry). It also gives the state directory its modes: root's alone, plus read access for the configured
//! `read_group` to what `status` and `history` read.
//!
//! This module never follows a link while creating or changing the mode of what it makes.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Gid, Mode, OFlags};

/// Whether this process runs as root (the case where the checks here matter).
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Refuses `path` unless only root (or this process's user) can change it, the directories it lives in, and, for
/// a path reached through symlinks, the directories of its real location. `what` names it in the message. Returns
/// the real path, which the caller should use from then on.
pub fn only_root_can_change(path: &Path, what: &str) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    // The directories as written (an entry in any of them could be swapped), then the real ones.
    check_chain(path, what, false)?;
    check_chain(&real, what, true)?;
    Ok(real)
}

fn check_chain(path: &Path, what: &str, real: bool) -> Result<(), String> {
    let me = rustix::process::geteuid().as_raw();
    let mut prefix = PathBuf::new();
    let comps: Vec<Component<'_>> = path.components().collect();
    for (i, c) in comps.iter().enumerate() {
        prefix.push(c);
        let leaf = i + 1 == comps.len();
        let m = std::fs::symlink_metadata(&prefix).map_err(|e| format!("{what}: {}: {e}", prefix.display()))?;
        if m.file_type().is_symlink() {
            // A link is as safe as the directory holding it (checked just before); what it leads to is checked
            // with the real path.
            if real {
                return Err(format!("{what}: {} changed while it was checked", prefix.display()));
            }
            continue;
        }
        let owner_ok = m.uid() == 0 || m.uid() == me;
        let writable = m.mode() & 0o022 != 0;
        let sticky_dir = !leaf && m.is_dir() && m.mode() & 0o1000 != 0 && m.uid() == 0;
        if !owner_ok || (writable && !sticky_dir) {
            let why = if !owner_ok {
                format!("it belongs to uid {}", m.uid())
            } else {
                format!("it is writable by its group or others (mode {:o})", m.mode() & 0o7777)
            };
            return Err(format!(
                "refusing {what} {}: {} is not root's alone ({why}); as root, switchback uses only paths that nobody \
                 else can change (chown root {p}; chmod go-w {p})",
                path.display(),
                prefix.display(),
                p = prefix.display()
            ));
        }
    }
    Ok(())
}

/// Creates `dir` if missing (mode 0700, or 0750 for `group`) and makes sure it is a real directory with that owner
/// and mode: root's (this process's user's), readable by `group` when one is given. Changes go through a handle
/// opened without following links.
pub fn private_dir(dir: &Path, group: Option<Gid>) -> anyhow::Result<()> {
    use anyhow::Context;
    match rustix::fs::mkdir(dir, Mode::from_raw_mode(0o700)) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::EXIST => {}
        Err(e) if e == rustix::io::Errno::NOENT => {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            match rustix::fs::mkdir(dir, Mode::from_raw_mode(0o700)) {
                Ok(()) => {}
                Err(e) if e == rustix::io::Errno::EXIST => {}
                Err(e) => return Err(std::io::Error::from(e)).with_context(|| format!("creating {}", dir.display())),
            }
        }
        Err(e) => return Err(std::io::Error::from(e)).with_context(|| format!("creating {}", dir.display())),
    }
    let fd =
        rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .with_context(|| format!("opening {} (it must be a directory, not a link)", dir.display()))?;
    share(&fd, group, true).with_context(|| format!("setting the owner and mode of {}", dir.display()))
}

/// Gives an open file or directory of the state directory its mode: root's alone (0600, 0700), or also readable
/// by `group` (0640, 0750).
pub fn share(fd: &impl std::os::fd::AsFd, group: Option<Gid>, dir: bool) -> std::io::Result<()> {
    let st = rustix::fs::fstat(fd)?;
    if running_as_root() && st.st_uid != 0 {
        rustix::fs::fchown(fd, Some(rustix::fs::Uid::ROOT), None)?;
    }
    let mode = match (dir, group) {
        (true, None) => 0o700,
        (true, Some(_)) => 0o750,
        (false, None) => 0o600,
        (false, Some(_)) => 0o640,
    };
    if let Some(g) = group {
        if st.st_gid != g.as_raw() {
            rustix::fs::fchown(fd, None, Some(g))?;
        }
    }
    if st.st_mode & 0o7777 != mode {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
    }
    Ok(())
}

/// Looks up a group by name or number.
pub fn group(spec: &str) -> Result<Gid, String> {
    if let Ok(n) = spec.parse::<u32>() {
        return Ok(Gid::from_raw(n));
    }
    nix::unistd::Group::from_name(spec)
        .map_err(|e| format!("cannot look up group `{spec}`: {e}"))?
        .map(|g| Gid::from_raw(g.gid.as_raw()))
        .ok_or_else(|| format!("no group `{spec}` on this host"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_path_others_can_change_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("switchback.toml");
        std::fs::write(&file, "").unwrap();
        assert!(only_root_can_change(&file, "configuration").is_ok());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = only_root_can_change(&file, "configuration").unwrap_err();
        assert!(err.contains("writable by its group or others"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = only_root_can_change(&file, "configuration").unwrap_err();
        assert!(err.contains(&tmp.path().display().to_string()), "{err}");
        // Sticky and root's (like /tmp): nobody can swap another's entry.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        if running_as_root() {
            assert!(only_root_can_change(&file, "configuration").is_ok());
        }
    }

    #[test]
    fn private_dirs_get_their_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("a/b");
        private_dir(&d, None).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777, 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let gid = Gid::from_raw(std::fs::metadata(&d).unwrap().gid());
        private_dir(&d, Some(gid)).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777, 0o750);
        std::os::unix::fs::symlink(tmp.path(), tmp.path().join("link")).unwrap();
        assert!(private_dir(&tmp.path().join("link"), None).is_err(), "a link is never followed");
    }
}
