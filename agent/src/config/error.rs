//! Why the configuration was not loaded, and the other errors of this layer. [`LoadError`] names the file and
//! carries, as its source, the [`ConfigError`] that says what is wrong with it; a [`ValueError`] is a value one of
//! the shared checks refused (credentials in a URL, a key that is not a minisign key, a program this host does not
//! have), in the file or elsewhere (`publish --to`, a source URL, a manifest's keys). Messages follow
//! `crate::error`: lowercase, the cause in `source()` and never pasted into the message, except where a message
//! always showed it in parentheses (said at the variant).

use std::path::PathBuf;

/// A configuration file that was not loaded: which file, and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration in {}", path.display())]
pub struct LoadError {
    pub path: PathBuf,
    #[source]
    pub source: ConfigError,
}

/// What is wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Running as root, the file is not one only root can change; `base::trust` says what is wrong.
    #[error("{0}")]
    Untrusted(String),
    #[error("cannot read it")]
    Read(#[source] std::io::Error),
    /// Not TOML, or not the configuration's shape (an unknown key, a bad duration). toml's message (several
    /// lines, with the place in the file) is this error's own message, without its trailing newline; it is not
    /// also the `source()`, which `{:#}` would print a second time.
    #[error("{}", .0.to_string().trim_end())]
    Syntax(toml::de::Error),
    /// A value the types cannot refuse; `key` names it (`agent.poll_interval`, `apps.web.checks[0]`).
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
    /// A value one of the shared checks refused; `key` names it.
    #[error("{key}")]
    Value {
        key: String,
        #[source]
        source: ValueError,
    },
}

/// A value refused by one of the shared checks. A URL in it is shown redacted.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error(
        "`{url}` carries credentials (user:password@); switchback never reads them from a URL: use the \
         environment (AWS_*, AZURE_*, GOOGLE_*) or the instance's credentials"
    )]
    UserInUrl { url: String },
    #[error(
        "`{url}` carries a query string, where tokens travel; switchback never reads credentials from a URL: use \
         the environment (AWS_*, AZURE_*, GOOGLE_*) or the instance's credentials"
    )]
    QueryInUrl { url: String },
    /// The minisign error is shown in the message, in parentheses as it always was, so it is not also the
    /// `source()` (`{:#}` would print it twice).
    #[error("`{key}` is not a minisign public key ({cause})")]
    NotAKey { key: String, cause: minisign_verify::Error },
    #[error("`{program}` is not an executable file on this host")]
    NotExecutable { program: String },
    #[error("`{program}` is not found on PATH on this host")]
    NotOnPath { program: String },
}

/// An app name the configuration does not have; the message lists those it has.
#[derive(Debug, thiserror::Error)]
#[error("unknown app `{app}` (configured: {known})")]
pub struct UnknownApp {
    pub app: String,
    pub known: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_reaches_the_cause_and_prints_as_before() {
        let e = LoadError {
            path: "/etc/switchback/switchback.toml".into(),
            source: ConfigError::Read(std::io::Error::from(std::io::ErrorKind::NotFound)),
        };
        let io = std::error::Error::source(&e).and_then(std::error::Error::source).unwrap();
        assert!(io.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound));
        assert_eq!(
            format!("{:#}", anyhow::Error::from(e)),
            "invalid configuration in /etc/switchback/switchback.toml: cannot read it: entity not found"
        );
        let key = crate::config::parse_keys(&["nope".to_owned()]).unwrap_err();
        let e = ConfigError::Value { key: "apps.web.trusted_keys".into(), source: key };
        assert!(matches!(std::error::Error::source(&e).unwrap().downcast_ref(), Some(ValueError::NotAKey { .. })));
        let shown = crate::base::chain::text(&e);
        assert!(shown.starts_with("apps.web.trusted_keys: `nope` is not a minisign public key ("), "{shown}");
        assert_eq!(shown.matches("minisign").count(), 2, "the cause is shown once: {shown}");
    }

    #[test]
    fn a_url_with_credentials_is_never_shown() {
        for url in ["s3://AKIA:hunter2@bucket/web", "az://container/web?sv=2024&sig=hunter2"] {
            let e = ConfigError::Value {
                key: "apps.web.source".into(),
                source: crate::config::no_credentials(url).unwrap_err(),
            };
            let e = LoadError { path: "/etc/switchback/switchback.toml".into(), source: e };
            let debug = format!("{e:?}");
            let shown = format!("{:#} {debug}", anyhow::Error::from(e));
            assert!(!shown.contains("hunter2") && !shown.contains("AKIA") && shown.contains("***"), "{shown}");
        }
    }
}
