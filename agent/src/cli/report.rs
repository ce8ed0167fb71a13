//! What a command found or did, as a value: each command returns a [`Report`], which is rendered to any
//! `impl Write`, for people or as one JSON document with the `schema` number. Rendering decides nothing and
//! changes nothing; the JSON documents are a contract (their shapes are snapshot-tested).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::engine::clear::Cleared;
use crate::engine::delivery::Figures;
use crate::engine::deploy::DeployOutcome;
use crate::engine::pin::Pinned;
use crate::engine::retention::PruneOutcome;
use crate::engine::rollback::RollbackOutcome;
use crate::engine::status::{self, AppStatus};
use crate::error::Error;
use crate::host::health::CheckResult;
use crate::publish::PublishOutcome;
use crate::statedir::history::Event;

use super::JSON_SCHEMA;

pub enum Report {
    Keygen {
        prefix: PathBuf,
        public_key: String,
    },
    Published(PublishOutcome),
    Fleet(Box<crate::publish::fleet::FleetStatus>),
    Deployed(DeployOutcome),
    RolledBack(RollbackOutcome),
    Status(Vec<AppStatus>),
    Releases(Box<AppStatus>),
    History {
        app: String,
        events: Vec<Event>,
    },
    /// `report`: the delivery figures of one app.
    Delivery {
        app: String,
        figures: Figures,
    },
    Pinned(Pinned),
    Cleared(Cleared),
    Unpinned {
        app: String,
        was: Option<String>,
    },
    Pruned(PruneOutcome),
    /// The results of `check`; `failed` is the error it exits with when a check failed.
    Checked {
        app: String,
        results: Vec<CheckResult>,
        failed: Option<Error>,
    },
    ConfigChecked {
        path: PathBuf,
        apps: Vec<String>,
    },
    /// Said on the terminal as it happened (the demo): nothing more.
    Done,
}

impl Report {
    /// The exit code the command ends with once this is said.
    pub fn exit_code(&self) -> u8 {
        match self {
            Report::Checked { failed: Some(e), .. } => e.exit_code(),
            _ => crate::base::exit::SUCCESS,
        }
    }

    /// Writes the report: one JSON document (`json`), or lines for people.
    pub fn render(&self, w: &mut impl Write, json: bool) -> anyhow::Result<()> {
        if json {
            if let Some(doc) = self.json()? {
                write_json(w, doc)?;
            }
            return Ok(());
        }
        self.human(w).map_err(Into::into)
    }

    fn json(&self) -> anyhow::Result<Option<serde_json::Value>> {
        Ok(Some(match self {
            Report::Keygen { prefix, public_key } => serde_json::json!({ "public_key": public_key, "prefix": prefix }),
            Report::Published(o) => value(o)?,
            Report::Fleet(o) => value(o)?,
            Report::Deployed(o) => value(o)?,
            Report::RolledBack(o) => value(o)?,
            Report::Status(all) => serde_json::json!({ "apps": all }),
            Report::Releases(s) => serde_json::json!({ "app": s.app, "releases": s.releases }),
            Report::History { app, events } => serde_json::json!({ "app": app, "events": events }),
            Report::Delivery { app, figures } => {
                let mut doc = value(figures)?;
                doc["app"] = app.clone().into();
                doc
            }
            Report::Pinned(o) => value(o)?,
            Report::Cleared(o) => value(o)?,
            Report::Unpinned { app, was } => serde_json::json!({ "app": app, "unpinned": was }),
            Report::Pruned(o) => value(o)?,
            Report::Checked { app, results, failed } => {
                // One document, failed or not: the results, and the error with its exit code when one failed.
                let mut doc = serde_json::json!({ "app": app, "checked": !results.is_empty(), "results": results });
                doc["healthy"] = failed.is_none().into();
                if let Some(e) = failed {
                    doc["error"] = e.to_string().into();
                    doc["exit_code"] = e.exit_code().into();
                }
                doc
            }
            Report::ConfigChecked { path, apps } => serde_json::json!({ "config": path, "valid": true, "apps": apps }),
            Report::Done => return Ok(None),
        }))
    }

    fn human(&self, w: &mut impl Write) -> std::io::Result<()> {
        match self {
            Report::Keygen { prefix, public_key } => {
                writeln!(w, "wrote {0}.key (secret, no password) and {0}.pub", prefix.display())?;
                writeln!(w, "trusted_keys = [\"{public_key}\"]")
            }
            Report::Published(o) => writeln!(
                w,
                "{}: channel {} -> {} (sequence {}, sha256 {}, {} bytes{}{})",
                o.app,
                o.channel,
                o.version,
                o.sequence,
                o.sha256,
                o.size,
                if o.uploaded { ", uploaded" } else { ", already uploaded" },
                o.delta.as_ref().map_or(String::new(), |d| format!(
                    "; delta from {}: {} bytes, {} files carried, {} taken from {}",
                    d.from, d.size, d.files_carried, d.files_referenced, d.from
                ))
            ),
            Report::Fleet(o) => o.human(w),
            Report::Deployed(o) => writeln!(
                w,
                "{}: {} {} ({})",
                o.app,
                o.version,
                o.outcome,
                if o.health.is_empty() { "already current" } else { &o.health }
            ),
            Report::RolledBack(o) => writeln!(w, "{}: rolled back from {} to {} ({})", o.app, o.from, o.to, o.health),
            Report::Status(all) => {
                for s in all {
                    status::print_human(s, w)?;
                }
                Ok(())
            }
            Report::Releases(s) => status::print_releases(s, w),
            Report::History { events, .. } => {
                for e in events {
                    let v = match (&e.previous, &e.version) {
                        (Some(p), Some(v)) => format!("{p} -> {v}"),
                        (None, Some(v)) => v.clone(),
                        (Some(p), None) => p.clone(),
                        (None, None) => String::new(),
                    };
                    writeln!(
                        w,
                        "{}  {:<8} {:<16} {:<15} {:>6}ms  {}  {}",
                        e.time,
                        e.op,
                        v,
                        e.outcome,
                        e.duration_ms,
                        e.who.describe(),
                        e.reason.as_deref().unwrap_or("")
                    )?;
                }
                Ok(())
            }
            Report::Delivery { app, figures } => delivery_human(w, app, figures),
            Report::Pinned(o) => match &o.switched_from {
                Some(from) => writeln!(
                    w,
                    "{}: switched from {from} to {} ({}) and pinned it",
                    o.app,
                    o.pin,
                    o.health.as_deref().unwrap_or("")
                ),
                None => writeln!(w, "{}: pinned to {}", o.app, o.pin),
            },
            Report::Cleared(o) => {
                let mut parts = Vec::new();
                if let Some(d) = &o.degraded {
                    parts.push(format!("no longer degraded (was: {d})"));
                }
                if !o.bad.is_empty() {
                    parts.push(format!("no longer marked bad: {}", o.bad.join(", ")));
                }
                writeln!(
                    w,
                    "{}: {}",
                    o.app,
                    if parts.is_empty() { "nothing to clear".to_owned() } else { parts.join("; ") }
                )
            }
            Report::Unpinned { app, was } => {
                writeln!(
                    w,
                    "{app}: {}",
                    was.as_ref().map_or("was not pinned".to_owned(), |v| format!("unpinned (was {v})"))
                )
            }
            Report::Pruned(o) => writeln!(
                w,
                "{}: removed {}; kept {}",
                o.app,
                if o.removed.is_empty() { "nothing".into() } else { o.removed.join(", ") },
                o.kept.join(", ")
            ),
            Report::Checked { app, results, .. } => {
                if results.is_empty() {
                    writeln!(w, "{app}: no health checks configured (unchecked)")?;
                }
                for r in results {
                    writeln!(w, "{} {:<40} {:>5}ms  {}", if r.ok { "ok  " } else { "FAIL" }, r.check, r.ms, r.detail)?;
                }
                Ok(())
            }
            Report::ConfigChecked { path, apps } if apps.is_empty() => {
                writeln!(w, "{}: ok (no app configured: the daemon would idle)", path.display())
            }
            Report::ConfigChecked { path, apps } => {
                writeln!(w, "{}: ok ({} app(s): {})", path.display(), apps.len(), apps.join(", "))
            }
            Report::Done => Ok(()),
        }
    }
}

/// The delivery figures on a few lines.
fn delivery_human(w: &mut impl Write, app: &str, f: &Figures) -> std::io::Result<()> {
    let secs = |s: Option<f64>| {
        s.map_or("-".to_owned(), |s| humantime::format_duration(Duration::from_secs(s.round() as u64)).to_string())
    };
    let window = humantime::format_duration(Duration::from_secs(f.window_seconds));
    writeln!(w, "{app}: delivery over {window}, {} to {}", f.from, f.until)?;
    writeln!(
        w,
        "  deploys               {} ({} ok, {} failed; {} more changed nothing or did not finish)",
        f.deploys, f.successful, f.failed, f.not_deployed
    )?;
    writeln!(w, "  deployment frequency  {:.2} per day", f.deployment_frequency_per_day)?;
    match f.change_failure_rate {
        Some(r) => writeln!(w, "  change failure rate   {:.1}% ({} of {})", r * 100.0, f.failed, f.deploys)?,
        None => writeln!(w, "  change failure rate   - (no deploys)")?,
    }
    writeln!(
        w,
        "  time to restore       median {}, mean {} ({} restored, {} not yet)",
        secs(f.time_to_restore_median_seconds),
        secs(f.time_to_restore_mean_seconds),
        f.restored,
        f.unrestored
    )
}

/// Writes `doc` as one pretty JSON document with the schema number added.
pub fn write_json(w: &mut impl Write, mut doc: serde_json::Value) -> anyhow::Result<()> {
    if let serde_json::Value::Object(map) = &mut doc {
        map.insert("schema".to_owned(), JSON_SCHEMA.into());
    }
    writeln!(w, "{}", serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}

fn value<T: Serialize>(v: &T) -> anyhow::Result<serde_json::Value> {
    serde_json::to_value(v).context("serializing output")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(r: &Report, json: bool) -> String {
        let mut out = Vec::new();
        r.render(&mut out, json).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_report_reads_the_same_for_people_and_in_json() {
        let r = Report::Pruned(PruneOutcome {
            app: "web".into(),
            removed: vec!["1.0.0".into()],
            kept: vec!["1.1.0".into(), "1.2.0".into()],
        });
        assert_eq!(rendered(&r, false), "web: removed 1.0.0; kept 1.1.0, 1.2.0\n");
        let doc: serde_json::Value = serde_json::from_str(&rendered(&r, true)).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({ "app": "web", "removed": ["1.0.0"], "kept": ["1.1.0", "1.2.0"], "schema": JSON_SCHEMA })
        );
        assert_eq!(r.exit_code(), 0);
    }

    #[test]
    fn a_failed_check_is_one_document_and_its_exit_code() {
        let failed = Error::CheckFailed { app: "web".into(), reason: "http x: status 500".into() };
        let code = failed.exit_code();
        let r = Report::Checked {
            app: "web".into(),
            results: vec![CheckResult { check: "http x".into(), ok: false, detail: "status 500".into(), ms: 3 }],
            failed: Some(failed),
        };
        assert_eq!(r.exit_code(), code);
        let doc: serde_json::Value = serde_json::from_str(&rendered(&r, true)).unwrap();
        assert_eq!((doc["healthy"].clone(), doc["exit_code"].clone()), (false.into(), code.into()));
        assert!(rendered(&r, false).starts_with("FAIL http x"));
        assert_eq!(rendered(&Report::Done, true), "");
    }
}
