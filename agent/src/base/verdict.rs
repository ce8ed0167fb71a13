//! Verdicts: what a round of health checks concluded about a release, as recorded in the state and shown by
//! `status`.

use serde::{Deserialize, Serialize};

use crate::base::version::Version;

/// The newest health result of an app: when, for which version, and what it said.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthSummary {
    pub at: String,
    pub version: Option<Version>,
    pub healthy: bool,
    pub detail: String,
}
