//! Release versions: the names of directories under `ROOT/releases/`. Validation is pure and happens before any
//! syscall, so a hostile version string can never become a path.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A string that is not a valid version, and why (a usage error: exit code 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version `{version}`: {reason}")]
pub struct InvalidVersion {
    pub version: String,
    pub reason: &'static str,
}

/// A validated version: `[A-Za-z0-9][A-Za-z0-9._+-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version(String);

impl Version {
    pub fn parse(s: &str) -> Result<Version, InvalidVersion> {
        let invalid = |reason| InvalidVersion { version: s.escape_debug().to_string(), reason };
        let mut chars = s.chars();
        match chars.next() {
            None => return Err(invalid("it is empty")),
            Some(c) if !c.is_ascii_alphanumeric() => return Err(invalid("it must start with a letter or digit")),
            Some(_) => {}
        }
        if s.len() > 128 {
            return Err(invalid("it is longer than 128 characters"));
        }
        if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')) {
            return Err(invalid("only letters, digits and . _ + - are allowed"));
        }
        Ok(Version(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Version {
    type Error = InvalidVersion;
    fn try_from(s: String) -> Result<Self, InvalidVersion> {
        Version::parse(&s)
    }
}

impl From<Version> for String {
    fn from(v: Version) -> String {
        v.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_versions() {
        for v in ["1", "v42", "1.2.3", "2024-06-01_rc1", "1.0+build.7", &"a".repeat(128)] {
            assert_eq!(Version::parse(v).unwrap().as_str(), v);
        }
    }

    #[test]
    fn refuses_paths_and_junk() {
        for v in ["", ".", "..", ".hidden", "-x", "a/b", "../x", "a b", "v1\n", "é", &"a".repeat(129), ".staging-1"] {
            assert!(Version::parse(v).is_err(), "{v:?} must be refused");
        }
    }
}
