//! What the daemon is doing for an app, in one line: kept by its worker, published in `daemon.json` (shown by
//! `status`) and in systemd's `STATUS=`. A value, said in words only when shown; nothing decides on the words.

/// One app's activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activity {
    /// The worker has not finished its first reconcile.
    Starting,
    /// Idle on `current`, with the newest word on its health (`None`: no word on this version).
    On { current: String, healthy: Option<bool> },
    /// Idle on `current` but not where the channel points, and why (no manifest yet, a hold, a failure).
    Waiting { current: String, why: String },
    /// Fetching the artifact of `version`; `progress` is (bytes so far, size) once known.
    Downloading { current: String, version: String, progress: Option<(u64, u64)> },
    /// Deploying `version`, at `stage` (the health checks' progress) when known.
    Deploying { version: String, stage: Option<String> },
    /// Long work inside a step (an unpack), with its own progress line.
    Working { label: String, progress: String },
}

impl std::fmt::Display for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Activity::Starting => f.write_str("starting"),
            Activity::On { current, healthy: None } => write!(f, "on {current}"),
            Activity::On { current, healthy: Some(true) } => write!(f, "on {current} healthy"),
            Activity::On { current, healthy: Some(false) } => write!(f, "on {current} UNHEALTHY"),
            Activity::Waiting { current, why } => write!(f, "on {current}; {why}"),
            Activity::Downloading { current, version, progress: None } => {
                write!(f, "on {current}; downloading {version}")
            }
            Activity::Downloading { current, version, progress: Some((n, total)) } => {
                write!(f, "on {current}; {}", download_text(version, *n, *total))
            }
            Activity::Deploying { version, stage: None } => write!(f, "deploying {version}"),
            Activity::Deploying { version, stage: Some(s) } => write!(f, "deploying {version} ({s})"),
            Activity::Working { label, progress } => write!(f, "{label} ({progress})"),
        }
    }
}

/// A one-line summary of a download's progress (for `STATUS=`, `status` and the terminal).
pub fn download_text(v: &str, n: u64, total: u64) -> String {
    let pct = n.saturating_mul(100).checked_div(total).unwrap_or(100);
    format!(
        "downloading {v} ({} of {}, {pct}%)",
        bytesize::ByteSize(n).display().iec(),
        bytesize::ByteSize(total).display().iec()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activities_read_as_before() {
        let on = |healthy| Activity::On { current: "1.0.0".into(), healthy };
        assert_eq!(on(Some(true)).to_string(), "on 1.0.0 healthy");
        assert_eq!(on(Some(false)).to_string(), "on 1.0.0 UNHEALTHY");
        assert_eq!(on(None).to_string(), "on 1.0.0");
        let d = Activity::Downloading { current: "1".into(), version: "2".into(), progress: Some((512, 2048)) };
        assert_eq!(d.to_string(), "on 1; downloading 2 (512 B of 2.0 KiB, 25%)");
        let c = Activity::Deploying { version: "2".into(), stage: Some("checks 1/3".into()) };
        assert_eq!(c.to_string(), "deploying 2 (checks 1/3)");
    }
}
