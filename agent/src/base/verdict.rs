//! Verdicts: what a round of health checks concluded about a release, as recorded in the state and shown by
//! `status`.

use serde::{Deserialize, Serialize};

use crate::base::version::Version;

/// What the restart, the hooks and the health policy concluded about a release that went live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Proven healthy: a one-line summary ("healthy after 1.2s (3 passes)").
    Healthy(String),
    /// Not proven: the reason to go back (a failed check, restart or hook, an operator's cancel).
    Unhealthy(String),
}

impl Verdict {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Verdict::Healthy(_))
    }

    /// The summary or the reason.
    pub fn detail(&self) -> &str {
        match self {
            Verdict::Healthy(s) | Verdict::Unhealthy(s) => s,
        }
    }
}

/// The newest health result of an app: when, for which version, and what it said.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthSummary {
    pub at: String,
    pub version: Option<Version>,
    pub healthy: bool,
    pub detail: String,
}
