//! The one table of exit codes. Scripts and the daemon branch on these numbers, so they are a contract: add new
//! codes at the end, never renumber. `error::code_for` is the only place that maps an error to a code.

/// Success.
pub const SUCCESS: u8 = 0;
/// The command failed and nothing changed on the host.
pub const FAILED: u8 = 1;
/// Usage or configuration error (bad flag, unknown app, invalid version, invalid config file).
pub const USAGE: u8 = 2;
/// The deploy (or an operator's rollback or pin) failed and the app is back on its last good release.
pub const ROLLED_BACK: u8 = 3;
/// A rollback failed, or was not made because it would have crossed an epoch (the app stays on the release that
/// failed, degraded): the app needs a person.
pub const ROLLBACK_FAILED: u8 = 4;
/// Another command or the daemon holds the app's lock.
pub const BUSY: u8 = 5;

/// The documented table, printed by `--help` epilogues and checked against the README by a test.
pub const TABLE: &[(u8, &str)] = &[
    (SUCCESS, "success"),
    (FAILED, "failed; nothing changed"),
    (USAGE, "usage or configuration error"),
    (ROLLED_BACK, "deploy or rollback failed; back on the last good release"),
    (ROLLBACK_FAILED, "rollback failed, or held by an epoch; the app needs a person"),
    (BUSY, "lock held by another command or the daemon"),
];

/// The exit-code table as `--help` shows it.
pub fn help_text() -> String {
    let mut out = String::from("Exit codes:");
    for (code, meaning) in TABLE {
        out.push_str(&format!("\n  {code}  {meaning}"));
    }
    out
}
