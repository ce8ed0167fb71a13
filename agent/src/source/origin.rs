//! Where an accepted manifest came from: the app's channel in its bucket, or a file dropped in its inbox. Written
//! in the state (and shown by `status`) as the channel's URL, or `inbox:` and the manifest's path.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const INBOX: &str = "inbox:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The channel manifest at this URL (credentials redacted).
    Channel(String),
    /// The manifest file of an inbox drop; its artifact sits beside it.
    Inbox(PathBuf),
}

impl Origin {
    /// The directory of an inbox drop (where its artifact is), if it is one.
    pub fn inbox_dir(&self) -> Option<&Path> {
        match self {
            Origin::Inbox(manifest) => Some(manifest.parent().unwrap_or(Path::new("/"))),
            Origin::Channel(_) => None,
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Channel(url) => f.write_str(url),
            Origin::Inbox(path) => write!(f, "{INBOX}{}", path.display()),
        }
    }
}

impl From<&str> for Origin {
    fn from(s: &str) -> Origin {
        match s.strip_prefix(INBOX) {
            Some(path) => Origin::Inbox(PathBuf::from(path)),
            None => Origin::Channel(s.to_owned()),
        }
    }
}

impl Serialize for Origin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Origin, D::Error> {
        Ok(Origin::from(String::deserialize(d)?.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_keep_the_words_of_the_state_file() {
        for (text, origin) in [
            ("s3://bucket/web/channels/stable.json", Origin::Channel("s3://bucket/web/channels/stable.json".into())),
            ("inbox:/srv/inbox/web.json", Origin::Inbox("/srv/inbox/web.json".into())),
        ] {
            assert_eq!(serde_json::from_value::<Origin>(text.into()).unwrap(), origin);
            assert_eq!(serde_json::to_value(&origin).unwrap(), text);
        }
        assert_eq!(Origin::from("inbox:/srv/inbox/web.json").inbox_dir(), Some(Path::new("/srv/inbox")));
        assert_eq!(Origin::from("https://example.invalid/c.json").inbox_dir(), None);
    }
}
