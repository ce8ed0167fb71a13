//! Loading the configuration: the file is read (as root only when nobody but root can change it), parsed, and
//! every value checked once (durations, programs, URLs, owners, keys, names), so that what the rest of the crate
//! sees is valid. Every error names the file, the key and what was expected.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::error::{ConfigError, LoadError, UnknownApp, ValueError};
use super::*;

/// Parses the `trusted_keys` entries (base64 minisign public keys, the second line of a `.pub` file).
pub fn parse_keys(keys: &[String]) -> Result<Vec<minisign_verify::PublicKey>, ValueError> {
    keys.iter()
        .map(|k| {
            minisign_verify::PublicKey::from_base64(k.trim())
                .map_err(|cause| ValueError::NotAKey { key: k.clone(), cause })
        })
        .collect()
}

/// A value the types cannot refuse, at `key`.
fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), problem: problem.into() }
}

impl Config {
    /// Reads and validates the file. Every error names the file.
    /// As root, only a file that nobody but root can change is read (see `base::trust`): a delegated
    /// `sudo switchback ...` cannot be pointed at a configuration of the caller's own.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let fail = |source| LoadError { path: path.to_owned(), source };
        let real = if crate::base::trust::running_as_root() {
            crate::base::trust::only_root_can_change(path, "configuration")
                .map_err(|e| fail(ConfigError::Untrusted(e)))?
        } else {
            path.to_owned()
        };
        let text = std::fs::read_to_string(&real).map_err(|e| fail(ConfigError::Read(e)))?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, LoadError> {
        let fail = |source| LoadError { path: path.to_owned(), source };
        let config: Config = toml::from_str(text).map_err(|e| fail(ConfigError::Syntax(e)))?;
        config.validate().map_err(fail)?;
        Ok(config)
    }

    pub fn app(&self, name: &str) -> Result<&AppConfig, UnknownApp> {
        self.apps.get(name).ok_or_else(|| UnknownApp {
            app: name.to_owned(),
            known: if self.apps.is_empty() {
                "none".to_owned()
            } else {
                self.apps.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
            },
        })
    }

    /// Checks that cannot be expressed in the types. Errors name the key.
    fn validate(&self) -> Result<(), ConfigError> {
        // A value one of the shared checks refused, at `key`.
        let value = |key: String| move |source| ConfigError::Value { key, source };
        if !self.agent.state_dir.is_absolute() {
            return Err(invalid(
                "agent.state_dir",
                format!("expected an absolute path, got {}", self.agent.state_dir.display()),
            ));
        }
        if self.agent.poll_interval < Duration::from_millis(100) {
            return Err(invalid(
                "agent.poll_interval",
                format!("expected at least 100ms, got {}", humantime::format_duration(self.agent.poll_interval)),
            ));
        }
        if let Some(id) = &self.agent.host_id {
            if !valid_host_id(id) {
                return Err(invalid(
                    "agent.host_id",
                    format!("`{id}`: expected 1 to 128 of A-Z a-z 0-9 . _ - (not starting with a dot)"),
                ));
            }
        }
        if let Some(g) = &self.agent.read_group {
            crate::base::trust::group(g).map_err(|e| invalid("agent.read_group", e))?;
        }
        if let Some(m) = &self.agent.metrics {
            if m.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    "agent.metrics",
                    format!("expected an IP address and port such as \"127.0.0.1:9853\", got \"{m}\""),
                ));
            }
        }
        let mut roots: BTreeMap<&Path, &str> = BTreeMap::new();
        for (name, app) in &self.apps {
            let key = |k: &str| format!("apps.{name}.{k}");
            if !valid_app_name(name) {
                return Err(invalid(format!("apps.{name}"), "app names must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}"));
            }
            if !app.root.is_absolute() || app.root.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(invalid(
                    key("root"),
                    format!("expected an absolute path without `..`, got {}", app.root.display()),
                ));
            }
            if let Some(other) = roots.insert(&app.root, name) {
                return Err(invalid(key("root"), format!("the same root is used by app `{other}`")));
            }
            if app.keep < 2 {
                return Err(invalid(key("keep"), "expected at least 2 (the current and the last good release)"));
            }
            for p in &app.shared {
                let ok =
                    !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, std::path::Component::Normal(_)));
                if !ok {
                    return Err(invalid(
                        key("shared"),
                        format!("`{}` must be a relative path without `.` or `..`", p.display()),
                    ));
                }
            }
            for (k, url) in [("source", &app.source), ("endpoint", &app.endpoint)] {
                if let Some(url) = url {
                    no_credentials(url).map_err(value(key(k)))?;
                }
            }
            if let Some(src) = &app.source {
                let scheme = src.split_once("://").map(|(s, _)| s);
                if !matches!(scheme, Some("s3" | "gs" | "az" | "abfs" | "https" | "http" | "file")) {
                    return Err(invalid(
                        key("source"),
                        format!(
                            "`{}` must start with s3://, gs://, az://, https:// or file://",
                            crate::base::redact::url(src)
                        ),
                    ));
                }
                if scheme == Some("http") && !app.allow_http {
                    return Err(invalid(key("source"), "plain http:// needs `allow_http = true`"));
                }
            }
            if let Some(e) = &app.endpoint {
                if e.starts_with("http://") && !app.allow_http {
                    return Err(invalid(
                        key("endpoint"),
                        format!(
                            "`{}` is plain http, which sends request signatures and tokens in clear text; set \
                             `allow_http = true` to allow it (loopback test servers), or use https://",
                            crate::base::redact::url(e)
                        ),
                    ));
                }
            }
            let d = &app.download;
            if d.stall.is_zero() || d.deadline.is_zero() || d.attempts == 0 {
                return Err(invalid(key("download"), "stall, deadline and attempts must be greater than zero"));
            }
            if let Some(inbox) = &app.inbox {
                if !inbox.is_absolute() {
                    return Err(invalid(key("inbox"), format!("expected an absolute path, got {}", inbox.display())));
                }
            }
            if (app.source.is_some() || app.inbox.is_some()) && app.trusted_keys.is_empty() {
                return Err(invalid(
                    key("trusted_keys"),
                    "a `source` or `inbox` needs at least one key to verify manifests with",
                ));
            }
            parse_keys(&app.trusted_keys).map_err(value(key("trusted_keys")))?;
            if !valid_app_name(&app.channel) {
                return Err(invalid(key("channel"), "channel names must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}"));
            }
            if let Some(owner) = &app.owner {
                crate::base::owner::Owner::parse(owner).map_err(|e| invalid(key("owner"), e))?;
            }
            for p in &app.outside_links {
                if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
                    return Err(invalid(
                        key("outside_links"),
                        format!("`{}` must be an absolute path without `..`", p.display()),
                    ));
                }
            }
            if let Some(user) = &app.run_as {
                crate::base::owner::Owner::parse(user).map_err(|e| invalid(key("run_as"), e))?;
            }
            if app.max_manifest_lifetime.is_zero() {
                return Err(invalid(key("max_manifest_lifetime"), "expected more than 0s"));
            }
            let l = &app.limits;
            if l.max_entries == 0 || l.max_unpacked == 0 || l.max_path_len == 0 || l.max_depth == 0 {
                return Err(invalid(key("limits"), "limits must be greater than zero"));
            }
            if l.max_window < 1 << 10 || l.max_window > 1 << 31 {
                return Err(invalid(key("limits.max_window"), "expected between 1KiB and 2GiB"));
            }
            if let Some(svc) = &app.service {
                match (&svc.unit, &svc.restart) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(key("service"), "set either `unit` or `restart`, not both"))
                    }
                    (None, None) => return Err(invalid(key("service"), "expected `unit` or `restart`")),
                    (None, Some(argv)) if argv.is_empty() => {
                        return Err(invalid(key("service.restart"), "expected a non-empty command"))
                    }
                    (None, Some(_)) if svc.reload => {
                        return Err(invalid(key("service.reload"), "`reload` only applies to a systemd `unit`"))
                    }
                    _ => {}
                }
            }
            for (i, c) in app.checks.iter().enumerate() {
                let kinds = [c.http.is_some(), c.tcp.is_some(), c.exec.is_some(), c.unit_active.is_some()];
                let k = key(&format!("checks[{i}]"));
                if kinds.iter().filter(|x| **x).count() != 1 {
                    return Err(invalid(k, "expected exactly one of `http`, `tcp`, `exec`, `unit_active`"));
                }
                if (c.expect_status.is_some() || c.body_contains.is_some()) && c.http.is_none() {
                    return Err(invalid(k, "`expect_status` and `body_contains` apply to `http` checks only"));
                }
                if let Some(url) = &c.http {
                    if !url.starts_with("http://") {
                        return Err(invalid(format!("{k}.http"), format!("expected an http:// URL, got `{url}`")));
                    }
                }
                if let Some(addr) = &c.tcp {
                    if !addr.contains(':') {
                        return Err(invalid(format!("{k}.tcp"), format!("expected HOST:PORT, got `{addr}`")));
                    }
                }
                if matches!(&c.exec, Some(argv) if argv.is_empty()) {
                    return Err(invalid(format!("{k}.exec"), "expected a non-empty command"));
                }
                if c.unit_active == Some(true) && app.service.as_ref().and_then(|s| s.unit.as_ref()).is_none() {
                    return Err(invalid(format!("{k}.unit_active"), "the app has no systemd `service.unit`"));
                }
            }
            for (k, t) in [
                ("health.deadline", app.health.deadline),
                ("hooks.timeout", app.hooks.timeout),
                ("max_manifest_lifetime", app.max_manifest_lifetime),
            ]
            .into_iter()
            .chain(app.service.as_ref().map(|s| ("service.timeout", s.timeout)))
            .chain(app.checks.iter().map(|c| ("checks[].timeout", c.timeout)))
            {
                if t.is_zero() {
                    return Err(invalid(key(k), "expected more than 0s"));
                }
            }
            if let Some(argv) = app.service.as_ref().and_then(|s| s.restart.as_ref()) {
                program_exists(&argv[0]).map_err(value(key("service.restart")))?;
            }
            for (hook, argv) in [
                ("before_activate", &app.hooks.before_activate),
                ("after_activate", &app.hooks.after_activate),
                ("after_rollback", &app.hooks.after_rollback),
            ] {
                if let Some(p) = argv.as_ref().and_then(|a| a.first()) {
                    program_exists(p).map_err(value(key(&format!("hooks.{hook}"))))?;
                }
            }
            for (i, c) in app.checks.iter().enumerate() {
                if let Some(p) = c.exec.as_ref().and_then(|a| a.first()) {
                    program_exists(p).map_err(value(key(&format!("checks[{i}].exec"))))?;
                }
            }
            let h = &app.health;
            if h.healthy_after == 0 {
                return Err(invalid(key("health.healthy_after"), "expected at least 1"));
            }
            if h.interval.is_zero() {
                return Err(invalid(key("health.interval"), "expected more than 0s"));
            }
            for (hook, argv) in [
                ("before_activate", &app.hooks.before_activate),
                ("after_activate", &app.hooks.after_activate),
                ("after_rollback", &app.hooks.after_rollback),
            ] {
                if matches!(argv, Some(a) if a.is_empty()) {
                    return Err(invalid(key(&format!("hooks.{hook}")), "expected a non-empty command"));
                }
            }
        }
        Ok(())
    }
}

/// A configured program must exist: an absolute path to an executable file, or a bare name found on `PATH`. A
/// relative path with a slash is the release's own (it runs from the release directory) and is checked when it
/// runs, against the release's index.
fn program_exists(program: &str) -> Result<(), ValueError> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.starts_with('/') {
        return if executable(Path::new(program)) {
            Ok(())
        } else {
            Err(ValueError::NotExecutable { program: program.to_owned() })
        };
    }
    if program.contains('/') {
        return Ok(());
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    if std::env::split_paths(&path).any(|d| executable(&d.join(program))) {
        Ok(())
    } else {
        Err(ValueError::NotOnPath { program: program.to_owned() })
    }
}

/// Refuses a URL that carries credentials: a user or password, or a query string (where tokens such as Azure SAS
/// signatures travel). Switchback never takes credentials from a URL (it would print and store them); they come
/// from the environment or the instance.
pub fn no_credentials(url: &str) -> Result<(), ValueError> {
    let Ok(parsed) = url::Url::parse(url) else { return Ok(()) };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ValueError::UserInUrl { url: crate::base::redact::url(url) });
    }
    if parsed.query().is_some() {
        return Err(ValueError::QueryInUrl { url: crate::base::redact::url(url) });
    }
    Ok(())
}

/// A host id: what names its report in the bucket (1 to 128 of `[A-Za-z0-9._-]`, not starting with a dot).
pub fn valid_host_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

pub fn valid_app_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration, or the error as the CLI prints it (with its causes).
    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/switchback/test.toml")).map_err(|e| crate::base::chain::text(&e))
    }

    #[test]
    fn full_example_parses() {
        let c = parse(
            r#"
[agent]
state_dir = "/var/lib/switchback"
poll_interval = "30s"

[apps.web]
root = "/srv/web"
keep = 5
shared = ["log", "storage", ".env"]
limits = { max_unpacked = "4GiB", max_entries = 500000 }

[apps.web.service]
unit = "web.service"

[[apps.web.checks]]
http = "http://127.0.0.1:8080/healthz"
expect_status = 200
timeout = "2s"

[apps.web.health]
start_period = "5s"
interval = "500ms"
healthy_after = 3
deadline = "60s"
bake = "30s"

[apps.web.hooks]
before_activate = ["bin/migrate"]
"#,
        )
        .unwrap();
        let web = c.app("web").unwrap();
        assert_eq!(web.limits.max_unpacked, 4 << 30);
        assert_eq!(web.health.interval, Duration::from_millis(500));
        assert_eq!(web.checks[0].expect_status, Some(200));
        assert_eq!(c.agent.poll_interval, Duration::from_secs(30));
        // Tables left out get the documented defaults, not zeroes.
        let bare = parse("[apps.api]\nroot = \"/srv/api\"\n").unwrap();
        let api = bare.app("api").unwrap();
        assert_eq!(api.hooks.timeout, Duration::from_secs(300));
        assert_eq!(api.health.deadline, Duration::from_secs(60));
        assert_eq!(api.limits.max_entries, 500_000);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = parse("[apps.web]\nroot = \"/srv/web\"\nkepp = 3\n").unwrap_err().to_string();
        assert!(err.contains("/etc/switchback/test.toml"), "{err}");
        assert!(err.contains("kepp"), "{err}");
    }

    #[test]
    fn bad_duration_and_size_say_what_is_expected() {
        let err =
            parse("[apps.web]\nroot = \"/srv/web\"\n[apps.web.health]\ninterval = \"soon\"\n").unwrap_err().to_string();
        assert!(err.contains("invalid duration `soon`") && err.contains("interval"), "{err}");
        let err =
            parse("[apps.web]\nroot = \"/srv/web\"\nlimits = { max_unpacked = \"lots\" }\n").unwrap_err().to_string();
        assert!(err.contains("invalid size `lots`") && err.contains("max_unpacked"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        for (text, key) in [
            ("[apps.web]\nroot = \"srv/web\"\n", "apps.web.root"),
            ("[apps.web]\nroot = \"/srv/web\"\nkeep = 1\n", "apps.web.keep"),
            ("[apps.web]\nroot = \"/srv/web\"\nshared = [\"../etc\"]\n", "apps.web.shared"),
            ("[apps.web]\nroot = \"/srv/web\"\n[[apps.web.checks]]\ntimeout = \"1s\"\n", "apps.web.checks[0]"),
            ("[apps.web]\nroot = \"/srv/web\"\n[apps.web.service]\nreload = true\n", "apps.web.service"),
            ("[apps.a]\nroot = \"/srv/x\"\n[apps.b]\nroot = \"/srv/x\"\n", "apps.b.root"),
            ("[apps.\"a/b\"]\nroot = \"/srv/x\"\n", "apps.a/b"),
            ("[agent]\nmetrics = \"localhost\"\n", "agent.metrics"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }

    #[test]
    fn messages_read_as_they_always_did() {
        assert_eq!(
            parse("[apps.web]\nroot = \"/srv/web\"\nkeep = 1\n").unwrap_err(),
            "invalid configuration in /etc/switchback/test.toml: apps.web.keep: expected at least 2 (the current and \
             the last good release)"
        );
        assert_eq!(
            parse("[apps.web]\nroot = \"/srv/web\"\nsource = \"s3://u:p@b/web\"\ntrusted_keys = [\"x\"]\n")
                .unwrap_err(),
            "invalid configuration in /etc/switchback/test.toml: apps.web.source: `s3://***@b/web` carries \
             credentials (user:password@); switchback never reads them from a URL: use the environment (AWS_*, \
             AZURE_*, GOOGLE_*) or the instance's credentials"
        );
        let err = parse("[apps.web]\nroot = \"/srv/web\"\nkepp = 3\n").unwrap_err();
        assert!(err.starts_with("invalid configuration in /etc/switchback/test.toml: TOML parse error"), "{err}");
        assert_eq!(err, err.trim_end(), "toml's trailing newline is not shown");
        let err = parse("[apps.web]\nroot = \"/srv/web\"\n[apps.web.hooks]\nbefore_activate = [\"/nonexistent/x\"]\n");
        assert_eq!(
            err.unwrap_err(),
            "invalid configuration in /etc/switchback/test.toml: apps.web.hooks.before_activate: `/nonexistent/x` is \
             not an executable file on this host"
        );
    }

    #[test]
    fn unknown_app_lists_known_ones() {
        let c = parse("[apps.web]\nroot = \"/srv/web\"\n[apps.api]\nroot = \"/srv/api\"\n").unwrap();
        let err = c.app("wbe").unwrap_err().to_string();
        assert!(err.contains("api, web"), "{err}");
    }
}
