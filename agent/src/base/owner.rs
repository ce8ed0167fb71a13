//! The owner given to unpacked files: `USER`, `USER:GROUP` or `UID:GID`. Names are looked up on this host when the
//! configuration is loaded, so `config check` reports a user that does not exist here.

use rustix::fs::{Gid, Uid};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: Uid,
    pub gid: Gid,
}

impl Owner {
    pub fn parse(spec: &str) -> Result<Owner, String> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let (uid, primary_gid) = match user.parse::<u32>() {
            Ok(n) => (n, None),
            Err(_) => {
                let u = nix::unistd::User::from_name(user)
                    .map_err(|e| format!("cannot look up user `{user}`: {e}"))?
                    .ok_or_else(|| format!("no user `{user}` on this host"))?;
                (u.uid.as_raw(), Some(u.gid.as_raw()))
            }
        };
        let gid = match group {
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => nix::unistd::Group::from_name(g)
                    .map_err(|e| format!("cannot look up group `{g}`: {e}"))?
                    .ok_or_else(|| format!("no group `{g}` on this host"))?
                    .gid
                    .as_raw(),
            },
            None => primary_gid.ok_or_else(|| format!("`{spec}`: a numeric owner needs a group, as UID:GID"))?,
        };
        Ok(Owner { uid: Uid::from_raw(uid), gid: Gid::from_raw(gid) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numeric_and_names() {
        assert_eq!(Owner::parse("1000:1001").unwrap(), Owner { uid: Uid::from_raw(1000), gid: Gid::from_raw(1001) });
        assert_eq!(Owner::parse("root").unwrap(), Owner { uid: Uid::ROOT, gid: Gid::ROOT });
        assert!(Owner::parse("1000").unwrap_err().contains("UID:GID"));
        assert!(Owner::parse("no-such-user-here").unwrap_err().contains("no user"));
    }
}
