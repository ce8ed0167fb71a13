//! Symlinks of an archive: where each one leads, resolved as the kernel would against the archive's own tree
//! (following its other links, at most 40 in one resolution), and whether it may lead there.
//!
//! The policy: a link inside the release is always fine. A link that leaves it (an absolute target, or `..` past
//! the release's root) is kept as a link when it leads into the app's own `ROOT/shared`, or under one of the
//! app's `outside_links` prefixes (by default the system's own directories, so a Python virtualenv's
//! `bin/python3 -> /usr/bin/python3` is fine); anything else is refused. The agent itself never follows a link
//! of a release, wherever it leads (every file operation opens one component at a time with `O_NOFOLLOW`), and a
//! path that goes through a link (`link/file`) is refused whatever the link's target.

use std::path::{Component, Path, PathBuf};

use super::tree::{Comps, Node, PathMap};
use super::Limits;
use super::{display_bytes, Refusal};

/// Where links may lead outside the release.
#[derive(Debug, Clone, Default)]
pub struct LinkPolicy {
    /// Where the release will live (absolute), so that a relative link leaving it can be judged; `None`: no link
    /// may leave the release.
    pub location: Option<PathBuf>,
    /// Absolute prefixes a link may lead into from outside the release.
    pub outside: Vec<PathBuf>,
}

impl LinkPolicy {
    /// Whether the absolute path `to` (normalised components) is somewhere a link may lead.
    fn allows(&self, to: &[Vec<u8>]) -> bool {
        let comps = |p: &Path| -> Vec<Vec<u8>> {
            p.components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(std::os::unix::ffi::OsStrExt::as_bytes(n).to_vec()),
                    _ => None,
                })
                .collect()
        };
        let shared = self.location.as_deref().and_then(|l| Some(l.parent()?.parent()?.join("shared")));
        shared.iter().chain(self.outside.iter()).any(|prefix| to.starts_with(&comps(prefix)))
    }

    fn describe(&self) -> String {
        let mut all: Vec<String> = Vec::new();
        if let Some(shared) = self.location.as_deref().and_then(|l| Some(l.parent()?.parent()?.join("shared"))) {
            all.push(shared.display().to_string());
        }
        all.extend(self.outside.iter().map(|p| p.display().to_string()));
        if all.is_empty() {
            "none".to_owned()
        } else {
            all.join(", ")
        }
    }
}

/// A symlink target the kernel would take, and short enough to resolve cheaply: no NUL, at most `max_path_len`
/// bytes (and PATH_MAX), at most twice `max_depth` components (room for `..` up to the root and down again).
pub fn check_target(target: &[u8], limits: &Limits) -> Result<(), Refusal> {
    let max = limits.max_path_len.min(4095);
    if target.len() > max {
        return Err(Refusal::LinkTargetTooLong { len: target.len(), max });
    }
    if target.contains(&0) {
        return Err(Refusal::NulInPath);
    }
    let depth = target.split(|b| *b == b'/').filter(|c| !c.is_empty() && *c != b".").count();
    if depth > limits.max_depth * 2 {
        return Err(Refusal::TooDeep { depth, max: limits.max_depth * 2 });
    }
    Ok(())
}

/// Where a resolution is: inside the release (components below its root), or outside it (absolute components).
#[derive(Debug, Clone, PartialEq)]
enum At {
    Inside(Comps),
    Outside(Comps),
}

/// Checks the symlink at `link` with `target` against the policy: refused when it leads outside the release to
/// somewhere the policy does not allow.
pub fn check(seen: &PathMap, link: &[Vec<u8>], target: &[u8], policy: &LinkPolicy) -> Result<(), Refusal> {
    if target.is_empty() {
        return Err(Refusal::SymlinkEmpty { target: String::new() });
    }
    match resolve(seen, link, target, &mut 0, policy)? {
        At::Inside(_) => Ok(()),
        At::Outside(to) if policy.allows(&to) => Ok(()),
        At::Outside(to) => {
            let shown = display_bytes(target);
            let to = format!("/{}", to.iter().map(|c| display_bytes(c)).collect::<Vec<_>>().join("/"));
            Err(if target.starts_with(b"/") {
                Refusal::SymlinkAbsolute { target: shown, allowed: policy.describe() }
            } else {
                Refusal::SymlinkEscapes { target: shown, to, allowed: policy.describe() }
            })
        }
    }
}

/// Resolves `target` of the link at `link` as the kernel would, following the archive's other links (`hops`
/// counts them across the recursion, at most 40, so a chain of links that each name the previous one twice costs
/// 40 steps, not 2^n). Once outside the release it goes on lexically: the agent never follows links there.
fn resolve(
    seen: &PathMap,
    link: &[Vec<u8>],
    target: &[u8],
    hops: &mut u32,
    policy: &LinkPolicy,
) -> Result<At, Refusal> {
    let shown = || display_bytes(target);
    let mut at =
        if target.starts_with(b"/") { At::Outside(Vec::new()) } else { At::Inside(link[..link.len() - 1].to_vec()) };
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => match &mut at {
                At::Inside(c) if c.is_empty() => match &policy.location {
                    // Past the release's root: from here on, its real location decides.
                    Some(loc) => {
                        let mut abs: Comps = loc
                            .components()
                            .filter_map(|c| match c {
                                Component::Normal(n) => Some(std::os::unix::ffi::OsStrExt::as_bytes(n).to_vec()),
                                _ => None,
                            })
                            .collect();
                        abs.pop();
                        at = At::Outside(abs);
                    }
                    None => {
                        return Err(Refusal::SymlinkEscapes {
                            target: shown(),
                            to: "..".into(),
                            allowed: "none".into(),
                        })
                    }
                },
                At::Inside(c) | At::Outside(c) => {
                    c.pop();
                }
            },
            name => match &mut at {
                At::Outside(c) => c.push(name.to_vec()),
                At::Inside(c) => {
                    c.push(name.to_vec());
                    if let Some(Node::Symlink { target: next }) = seen.get(c) {
                        *hops += 1;
                        if *hops > 40 {
                            return Err(Refusal::SymlinkLoop { target: shown() });
                        }
                        let here = c.clone();
                        at = resolve(seen, &here, next, hops, policy).map_err(|inner| match inner {
                            Refusal::SymlinkEscapes { to, allowed, .. } => {
                                Refusal::SymlinkEscapes { target: shown(), to, allowed }
                            }
                            Refusal::SymlinkAbsolute { allowed, target: t } => {
                                Refusal::SymlinkEscapes { target: shown(), to: t, allowed }
                            }
                            other => other,
                        })?;
                    }
                }
            },
        }
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(entries: &[(&str, Node)]) -> PathMap {
        let mut map = PathMap::new();
        for (p, n) in entries {
            let node = match n {
                Node::Dir { mode } => Node::Dir { mode: *mode },
                Node::File => Node::File,
                Node::Symlink { target } => Node::Symlink { target: target.clone() },
            };
            map.insert(&comps(p), node);
        }
        map
    }

    fn comps(p: &str) -> Comps {
        p.split('/').map(|c| c.as_bytes().to_vec()).collect()
    }

    fn strict() -> LinkPolicy {
        LinkPolicy::default()
    }

    #[test]
    fn resolution_follows_other_links() {
        let link = |t: &str| Node::Symlink { target: t.as_bytes().to_vec() };
        let seen = tree(&[
            ("a", Node::Dir { mode: None }),
            ("a/b", Node::Dir { mode: None }),
            ("dot", link(".")),
            ("deep", link("a/b")),
        ]);
        let p = strict();
        // Lexically "dot/.." is the root, but "dot" is "." so it really is the parent of the release.
        assert!(matches!(check(&seen, &comps("x"), b"dot/..", &p), Err(Refusal::SymlinkEscapes { .. })));
        // Lexically "deep/../.." escapes; really it is a/b/../.. = the release root.
        assert!(check(&seen, &comps("x"), b"deep/../..", &p).is_ok());
        assert!(check(&seen, &comps("a/b/x"), b"../../a", &p).is_ok());
        assert!(matches!(check(&seen, &comps("a/x"), b"../..", &p), Err(Refusal::SymlinkEscapes { .. })));
        assert!(matches!(check(&seen, &comps("x"), b"/etc", &p), Err(Refusal::SymlinkAbsolute { .. })));
        let loops = tree(&[("p", link("q")), ("q", link("p"))]);
        assert!(matches!(check(&loops, &comps("x"), b"p", &p), Err(Refusal::SymlinkLoop { .. })));
    }

    #[test]
    fn links_out_follow_the_policy() {
        let seen = PathMap::new();
        let p = LinkPolicy {
            location: Some(PathBuf::from("/srv/web/releases/1.0")),
            outside: vec![PathBuf::from("/usr"), PathBuf::from("/opt/py")],
        };
        assert!(check(&seen, &comps("venv/bin/python3"), b"/usr/bin/python3.11", &p).is_ok());
        assert!(check(&seen, &comps("x"), b"/usr/../etc/shadow", &p).is_err(), "normalised before it is judged");
        assert!(check(&seen, &comps("x"), b"/opt/python", &p).is_err(), "a prefix is whole components");
        // Relative, past the root: into ROOT/shared is the app's own; the rest of ROOT is not.
        assert!(check(&seen, &comps("log"), b"../../shared/log", &p).is_ok());
        assert!(matches!(check(&seen, &comps("x"), b"../../current", &p), Err(Refusal::SymlinkEscapes { .. })));
        assert!(check(&seen, &comps("x"), b"../../../../usr/lib", &p).is_ok());
    }
}
