//! Fleet rollouts through the bucket: the waves and the halt threshold a signed manifest carries, the report
//! each host writes to `BASE/APP/reports/HOST.json` after what it did, and the failure mark
//! `BASE/APP/failures/SEQUENCE/HOST.json` (a copy of the report) a host writes when it failed the release of the
//! manifest SEQUENCE: a host that is due counts the failures with one listing of that folder, whatever the size
//! of the fleet, and reads no report.
//!
//! Reports are written by hosts, which hold no signing key: whoever can write the bucket can forge them. They
//! (and the marks) are only ever counted (a forged failure can halt a rollout whose manifest asks for `halt_after`, as withholding
//! the artifact would stop it anyway); nothing in a report makes a host deploy, roll back or run anything.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::valid_host_id;

/// The folder of the hosts' reports, relative to `BASE/APP/`.
pub const REPORTS: &str = "reports";

/// The folder of the failure marks, relative to `BASE/APP/`: one folder per manifest sequence.
pub const FAILURES: &str = "failures";

/// How often a host writes its report again when nothing changed, so that a host that has gone quiet for several
/// times this long is gone, not idle.
pub const REPORT_EVERY: Duration = Duration::from_secs(3600);

/// One wave: from `after` seconds past the manifest's `published_at`, hosts whose seed is below `percent` deploy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    pub percent: u8,
    /// Seconds after the manifest's publication.
    pub after: u64,
}

impl FromStr for Wave {
    type Err = String;

    /// `P%:DELAY`, e.g. `10%:30m` (`--wave`).
    fn from_str(s: &str) -> Result<Wave, String> {
        let bad = |why: &str| format!("`{s}`: {why}; expected PERCENT%:DELAY, e.g. 10%:30m");
        let (p, d) = s.split_once(':').ok_or_else(|| bad("no `:`"))?;
        let percent = p
            .strip_suffix('%')
            .ok_or_else(|| bad("the percentage has no `%`"))?
            .parse::<u8>()
            .ok()
            .filter(|p| (1..=100).contains(p))
            .ok_or_else(|| bad("the percentage must be a whole number from 1 to 100"))?;
        let after = humantime::parse_duration(d).map_err(|e| bad(&format!("the delay: {e}")))?;
        Ok(Wave { percent, after: after.as_secs() })
    }
}

impl fmt::Display for Wave {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%:{}", self.percent, humantime::format_duration(Duration::from_secs(self.after)))
    }
}

/// Whether `waves` are in order: each covers at least as many hosts as the one before, and starts no earlier.
pub fn check_waves(waves: &[Wave]) -> Result<(), String> {
    for w in waves {
        if !(1..=100).contains(&w.percent) {
            return Err(format!("wave {w}: the percentage must be from 1 to 100"));
        }
    }
    for pair in waves.windows(2) {
        if pair[1].percent <= pair[0].percent || pair[1].after < pair[0].after {
            return Err(format!(
                "waves {} then {}: each wave must cover more hosts than the one before, and start no earlier",
                pair[0], pair[1]
            ));
        }
    }
    Ok(())
}

/// When a rollout stops: after this many failed hosts, or this percentage of the hosts that report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Threshold {
    Hosts(u32),
    Percent(u8),
}

impl FromStr for Threshold {
    type Err = String;

    fn from_str(s: &str) -> Result<Threshold, String> {
        let bad = || format!("`{s}`: expected a number of hosts (at least 1) or a percentage from 1% to 100%");
        match s.strip_suffix('%') {
            Some(p) => p.parse::<u8>().ok().filter(|p| (1..=100).contains(p)).map(Threshold::Percent),
            None => s.parse::<u32>().ok().filter(|n| *n >= 1).map(Threshold::Hosts),
        }
        .ok_or_else(bad)
    }
}

impl TryFrom<String> for Threshold {
    type Error = String;
    fn try_from(s: String) -> Result<Threshold, String> {
        s.parse()
    }
}

impl From<Threshold> for String {
    fn from(t: Threshold) -> String {
        t.to_string()
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Hosts(n) => write!(f, "{n}"),
            Threshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Threshold {
    /// Whether `failed` hosts of `hosts` (those that report) reach it.
    pub fn reached(&self, failed: u64, hosts: u64) -> bool {
        match *self {
            Threshold::Hosts(n) => failed >= u64::from(n),
            Threshold::Percent(p) => failed > 0 && failed * 100 >= u64::from(p) * hosts,
        }
    }
}

/// What a host did about a release, as its report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportOutcome {
    /// Deployed and healthy.
    Ok,
    /// Deployed, failed its checks, and went back to the last good release.
    RolledBack,
    /// Failed, and the way back failed too: the host needs a person.
    RollbackFailed,
    /// The deploy failed before the switch (nothing changed).
    Failed,
    /// The artifact was refused (verification or unpack).
    Refused,
    /// Not yet in a wave that covers this host.
    Waiting,
    /// Due, but the release's failures reached the manifest's `halt_after`.
    Halted,
    /// A manual rollback.
    Rollback,
    /// Written by a newer Switchback.
    #[serde(other)]
    Unknown,
}

impl ReportOutcome {
    /// Whether it counts as a failure of the release (towards `halt_after`).
    pub fn failed(self) -> bool {
        matches!(self, Self::RolledBack | Self::RollbackFailed | Self::Failed | Self::Refused)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::RolledBack => "rolled-back",
            Self::RollbackFailed => "rollback-failed",
            Self::Failed => "failed",
            Self::Refused => "refused",
            Self::Waiting => "waiting",
            Self::Halted => "halted",
            Self::Rollback => "rollback",
            Self::Unknown => "unknown",
        }
    }
}

/// `BASE/APP/reports/HOST.json`: the last thing a host did about the app.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostReport {
    pub host: String,
    pub app: String,
    /// The release the report is about.
    pub version: String,
    pub outcome: ReportOutcome,
    /// What the host runs now.
    pub current: Option<String>,
    /// The sequence of the manifest the host acted on (0: none).
    #[serde(default)]
    pub sequence: u64,
    #[serde(default)]
    pub health: String,
    #[serde(default)]
    pub duration_ms: u64,
    /// Milliseconds per step of the deploy (download, unpack, checks, ...).
    #[serde(default)]
    pub steps_ms: std::collections::BTreeMap<String, u64>,
    pub agent_version: String,
    /// When it happened (RFC 3339 UTC).
    pub time: String,
    /// When the report was written (it is written again every [`REPORT_EVERY`] when nothing changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<String>,
}

/// The object of `host`'s report, relative to `BASE/APP/`.
pub fn report_key(host: &str) -> String {
    format!("{REPORTS}/{host}.json")
}

/// The folder of the failure marks of the manifest `sequence`, relative to `BASE/APP/`.
pub fn failure_dir(sequence: u64) -> String {
    format!("{FAILURES}/{sequence}")
}

/// The object of `host`'s mark that it failed the release of the manifest `sequence`.
pub fn failure_key(sequence: u64, host: &str) -> String {
    format!("{}/{host}.json", failure_dir(sequence))
}

/// The host of a failure mark of the manifest `sequence` (an object name relative to `BASE/APP/`), if it is one.
pub fn failure_host(rel: &str, sequence: u64) -> Option<&str> {
    rel.strip_prefix(&failure_dir(sequence))?.strip_prefix('/')?.strip_suffix(".json").filter(|h| valid_host_id(h))
}

impl HostReport {
    /// The failure mark this report calls for: it says the host failed the release of a manifest.
    pub fn failure_mark(&self) -> Option<String> {
        (self.sequence != 0 && self.outcome.failed()).then(|| failure_key(self.sequence, &self.host))
    }
}

/// The host of a report's object name (relative to `BASE/APP/`), if it is one.
pub fn report_host(rel: &str) -> Option<&str> {
    rel.strip_prefix(REPORTS)?.strip_prefix('/')?.strip_suffix(".json").filter(|h| valid_host_id(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_parse_and_print() {
        let w: Wave = "10%:30m".parse().unwrap();
        assert_eq!(w, Wave { percent: 10, after: 1800 });
        assert_eq!(w.to_string(), "10%:30m");
        assert_eq!("100%:0s".parse::<Wave>().unwrap(), Wave { percent: 100, after: 0 });
        for bad in ["10:30m", "0%:1s", "101%:1s", "10%", "x%:1s", "10%:soon"] {
            assert!(bad.parse::<Wave>().is_err(), "{bad}");
        }
    }

    #[test]
    fn waves_must_grow() {
        let w = |percent, after| Wave { percent, after };
        assert!(check_waves(&[w(1, 0), w(10, 1800), w(100, 7200)]).is_ok());
        assert!(check_waves(&[w(10, 0), w(10, 60)]).is_err());
        assert!(check_waves(&[w(10, 60), w(50, 0)]).is_err());
        assert!(check_waves(&[]).is_ok());
    }

    #[test]
    fn thresholds() {
        assert_eq!("3".parse::<Threshold>().unwrap(), Threshold::Hosts(3));
        assert_eq!("10%".parse::<Threshold>().unwrap(), Threshold::Percent(10));
        for bad in ["0", "0%", "101%", "-1", "x"] {
            assert!(bad.parse::<Threshold>().is_err(), "{bad}");
        }
        assert!(!Threshold::Hosts(3).reached(2, 10));
        assert!(Threshold::Hosts(3).reached(3, 10));
        assert!(!Threshold::Percent(10).reached(9, 100));
        assert!(Threshold::Percent(10).reached(10, 100));
        assert!(!Threshold::Percent(10).reached(0, 0));
        let json = serde_json::to_string(&Threshold::Percent(5)).unwrap();
        assert_eq!(json, "\"5%\"");
        assert!(serde_json::from_str::<Threshold>("\"0\"").is_err());
    }

    #[test]
    fn report_names() {
        assert_eq!(report_key("h-1"), "reports/h-1.json");
        assert_eq!(report_host("reports/h-1.json"), Some("h-1"));
        assert_eq!(report_host("reports/sub/h.json"), None);
        assert_eq!(report_host("reports/.json"), None);
        assert_eq!(report_host("channels/x.json"), None);
        assert_eq!(failure_key(7, "h-1"), "failures/7/h-1.json");
        assert_eq!(failure_host("failures/7/h-1.json", 7), Some("h-1"));
        assert_eq!(failure_host("failures/7/h-1.json", 8), None);
        assert_eq!(failure_host("failures/70/h-1.json", 7), None);
        assert_eq!(failure_host("failures/7/x/h.json", 7), None);
        assert_eq!(failure_host("reports/h-1.json", 7), None);
        assert!(!valid_host_id("a/b") && !valid_host_id("") && !valid_host_id(".x") && valid_host_id("h-1.a_b"));
    }
}
