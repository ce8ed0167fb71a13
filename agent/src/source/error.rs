//! What went wrong with a source (opening it, a request, a download), an artifact or a signing key, with the
//! cause as `source()`. Messages follow `crate::error`: lowercase, the cause never pasted into the message.
//!
//! Credentials never show. A URL in a message is redacted when the error is made (the `url` and `at` fields hold
//! it redacted). A cause that comes from outside (the object store, the HTTP client, a task, the app's lock and
//! state) is kept as [`Redacted`]: the redacted text of its whole chain, with no `source()` of its own, because the
//! original chain is not redacted and so is never exposed, not even through `{:?}`. The other causes say nothing a
//! credential could hide in: an OS error of a local file, a URL parser's or minisign's fixed texts, a
//! [`ValueError`] (which redacts its URL itself), `base::trust`'s verdict on a local directory. The variants about
//! an artifact or a key on this host show its path as it was given, as they always did.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::base::redact;
use crate::config::ValueError;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    // Opening a source; `url` is its URL, redacted.
    #[error("source {url}")]
    Credentials {
        url: String,
        #[source]
        source: ValueError,
    },
    #[error("source {url}: endpoint")]
    EndpointCredentials {
        url: String,
        #[source]
        source: ValueError,
    },
    #[error("source {url}: not a URL")]
    NotAUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("source {url}: unsupported source")]
    Unsupported {
        url: String,
        #[source]
        source: Redacted,
    },
    #[error("source {url}: unsupported scheme {scheme}")]
    UnsupportedScheme { url: String, scheme: String },
    #[error("source {url}: plain http:// needs `allow_http = true`")]
    PlainHttp { url: String },
    /// The object store's client could not be built (a bad endpoint or region, say).
    #[error("source {url}")]
    Client {
        url: String,
        #[source]
        source: Redacted,
    },

    // An object of an opened source; `at` is its URL, redacted.
    /// The request failed: the store's or the HTTP client's error says why.
    #[error("source {at}")]
    Request {
        at: String,
        #[source]
        source: Redacted,
    },
    #[error("source {at}: not found")]
    NotFound { at: String },
    #[error("source {at}: {size} bytes; a manifest is at most {max}")]
    TooLarge { at: String, size: u64, max: u64 },
    #[error("source {at}: larger than announced")]
    LargerThanAnnounced { at: String },
    #[error("source {at}: no answer{}", within.map(|s| format!(" within {s}s")).unwrap_or_default())]
    NoAnswer { at: String, within: Option<u64> },
    #[error("source {at}: no data for {}", humantime::format_duration(*silent))]
    Stalled { at: String, silent: Duration },
    #[error(
        "source {at}: too slow: {bytes} bytes in {}, below the minimum of {}/s",
        humantime::format_duration(*window),
        bytesize::ByteSize(*min_rate).display().iec()
    )]
    TooSlow { at: String, bytes: u64, window: Duration, min_rate: u64 },
    #[error("source {at}: the body ended after {have} of {size} bytes")]
    Truncated { at: String, have: u64, size: u64 },
    #[error("source {at}: not downloaded within the deadline of {}", humantime::format_duration(*deadline))]
    Deadline { at: String, deadline: Duration },
    #[error("source {at}: stopped: the agent is shutting down")]
    Stopped { at: String },
    /// A local file of a download or an upload (`action` is "opening", "writing", "renaming" ...).
    #[error("source {at}: {action} {}", redact::text(&path.display().to_string()))]
    Io {
        at: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Work of our own about the object failed (the downloads directory, the app's lock or state, a step of
    /// `publish`); the cause says which.
    #[error("source {at}")]
    Local {
        at: String,
        #[source]
        source: Redacted,
    },
    /// The artifact is not what its manifest promised: retrying cannot help.
    #[error("artifact {artifact} does not match its manifest: {mismatch}")]
    Mismatch { artifact: String, mismatch: Mismatch },

    // An artifact or a key on this host.
    #[error("refused artifact {}: {refusal}", artifact.display())]
    Refused { artifact: PathBuf, refusal: Refusal },
    /// `action` is "opening", "reading", "writing", "reading key" ...
    #[error("{action} {}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("copying {} to {}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The private directory an artifact is copied into is not root's alone, or cannot be made.
    #[error(transparent)]
    PrivateDir(anyhow::Error),
    #[error("{} already exists; refusing to overwrite a key", path.display())]
    KeyExists { path: PathBuf },
    #[error("generating a key")]
    KeyGen(#[source] minisign::PError),
    /// A key could not be encoded as minisign's text; minisign's message is the whole message.
    #[error(transparent)]
    KeyEncoding(minisign::PError),
    #[error("{} is not a minisign secret key", path.display())]
    NotASecretKey {
        path: PathBuf,
        #[source]
        source: minisign::PError,
    },
    /// minisign's error is shown in the message, before the hint as it always was, so it is not also the
    /// `source()` (`{:#}` would print it twice).
    #[error("{}: {cause} (publish needs a passwordless key, as written by `switchback keygen`)", path.display())]
    EncryptedKey { path: PathBuf, cause: minisign::PError },
    #[error("signing")]
    Sign(#[source] minisign::PError),
}

impl SourceError {
    /// Work of our own about the object at `at` failed, for the reason `cause` (both are redacted).
    pub fn local(at: &str, cause: impl fmt::Display) -> SourceError {
        SourceError::Local { at: redact::text(at), source: Redacted::text(cause) }
    }
}

/// Why an artifact does not match its manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("the bucket holds {held} bytes; the manifest says {size}")]
    Size { held: u64, size: u64 },
    #[error("the body is longer than the manifest's size of {size} bytes")]
    Longer { size: u64 },
    #[error("sha256 is {actual}, the manifest says {expected}")]
    Digest { actual: String, expected: String },
    /// A whole file (or a release on disk) against the manifest's sha256 and size.
    #[error("sha256 is {actual} ({size} bytes), the manifest says {expected} ({expected_size} bytes)")]
    Release { actual: String, size: u64, expected: String, expected_size: u64 },
}

/// Why an artifact was refused before it was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("it is a symlink, and links are never followed; give the file itself")]
    Symlink,
    /// `kind` is lowercase: "directory", "fifo" ...
    #[error("it is a {kind}, not a regular file")]
    NotRegular { kind: String },
    #[error("it is {size} bytes, more than the {max} its manifest allows")]
    TooLarge { size: u64, max: u64 },
    #[error("it grew past the {max} bytes its manifest allows")]
    Grew { max: u64 },
}

/// The redacted text of a cause from outside: see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted(String);

impl Redacted {
    /// `e` with the causes its message does not already say, redacted.
    pub fn chain(e: &dyn std::error::Error) -> Redacted {
        Redacted(redact::text(&crate::base::chain::unrepeated(e)))
    }

    /// `text`, redacted.
    pub fn text(text: impl fmt::Display) -> Redacted {
        Redacted(redact::text(&text.to_string()))
    }
}

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Redacted {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Everything an error shows: its message with its causes, and its `Debug`.
    fn shown(e: &SourceError) -> String {
        format!("{} {e:?}", crate::base::chain::text(e))
    }

    /// An error of the HTTP client, with the URL (and its credentials) in its message and in its cause's.
    #[derive(Debug, thiserror::Error)]
    #[error("error sending request for url (https://AKIA:hunter2@bucket.example/web/channels/production.json)")]
    struct Client(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("connection to https://bucket.example/x?X-Amz-Signature=hunter2 refused")]
    struct Inner;

    #[test]
    fn credentials_never_show_in_the_message_the_chain_or_debug() {
        let at = "https://bucket.example/web/channels/production.json";
        let e = SourceError::Request { at: at.to_owned(), source: Redacted::chain(&Client(Inner)) };
        let all = shown(&e);
        assert!(!all.contains("hunter2") && !all.contains("AKIA"), "{all}");
        assert_eq!(
            crate::base::chain::text(&e),
            format!(
                "source {at}: error sending request for url (https://***@bucket.example/web/channels/production.json): \
                 connection to https://bucket.example/x?*** refused"
            )
        );
        let e = SourceError::local("s3://u:hunter2@b/web/x", "cannot lock https://h/p?sig=hunter2 now");
        let all = shown(&e);
        assert!(!all.contains("hunter2"), "{all}");
        let e = SourceError::Credentials {
            url: redact::url("s3://AKIA:hunter2@b/web"),
            source: crate::config::no_credentials("s3://AKIA:hunter2@b/web").unwrap_err(),
        };
        let all = shown(&e);
        assert!(!all.contains("hunter2") && !all.contains("AKIA"), "{all}");
    }

    #[test]
    fn the_chain_reaches_the_cause() {
        let e = SourceError::Io {
            at: "file:///srv/bucket/web/releases/1.0.0.tar.zst".into(),
            action: "renaming",
            path: Path::new("/var/lib/switchback/web/downloads/x.part").to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let cause = std::error::Error::source(&e).unwrap().downcast_ref::<std::io::Error>().unwrap();
        assert_eq!(cause.kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(
            format!("{:#}", anyhow::Error::from(e)),
            "source file:///srv/bucket/web/releases/1.0.0.tar.zst: renaming /var/lib/switchback/web/downloads/x.part: \
             permission denied"
        );
        // A cause from outside ends the chain: its text is all of it, already redacted.
        let e = SourceError::Request { at: "x".into(), source: Redacted::chain(&Client(Inner)) };
        let outside = std::error::Error::source(&e).unwrap();
        assert!(outside.is::<Redacted>() && outside.source().is_none());
    }

    #[test]
    fn messages_without_a_cause_say_it_all() {
        let at = "s3://b/web/releases/1.0.0.tar.zst".to_owned();
        assert_eq!(
            SourceError::NoAnswer { at: at.clone(), within: Some(20) }.to_string(),
            format!("source {at}: no answer within 20s")
        );
        assert_eq!(
            SourceError::NoAnswer { at: at.clone(), within: None }.to_string(),
            format!("source {at}: no answer")
        );
        assert_eq!(
            SourceError::Stalled { at: at.clone(), silent: Duration::from_secs(30) }.to_string(),
            format!("source {at}: no data for 30s")
        );
        let e = SourceError::Mismatch { artifact: at.clone(), mismatch: Mismatch::Longer { size: 10 } };
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(
            e.to_string(),
            format!(
                "artifact {at} does not match its manifest: the body is longer than the manifest's size of 10 bytes"
            )
        );
        assert_eq!(SourceError::NotFound { at: at.clone() }.to_string(), format!("source {at}: not found"));
    }
}
