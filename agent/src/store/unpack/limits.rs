//! The limits applied to every archive of an app (the `[apps.NAME.limits]` table of the configuration): how much
//! an archive may unpack, how many entries, how long a path, how deep, how large a metadata record and a zstd
//! window, and how much free space must remain.

use serde::Deserialize;

/// Limits applied to every archive of an app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_max_unpacked", deserialize_with = "crate::base::units::size")]
    pub max_unpacked: u64,
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    #[serde(default = "default_max_path_len")]
    pub max_path_len: usize,
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// Largest PAX or GNU long-name record.
    #[serde(default = "default_max_record", deserialize_with = "crate::base::units::size")]
    pub max_record: u64,
    /// Largest zstd window the decoder accepts (memory used while unpacking).
    #[serde(default = "default_max_window", deserialize_with = "crate::base::units::size")]
    pub max_window: u64,
    /// Free space that must remain on the filesystem after the release is unpacked.
    #[serde(default = "default_reserve", deserialize_with = "crate::base::units::size")]
    pub reserve: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_unpacked: default_max_unpacked(),
            max_entries: default_max_entries(),
            max_path_len: default_max_path_len(),
            max_depth: default_max_depth(),
            max_record: default_max_record(),
            max_window: default_max_window(),
            reserve: default_reserve(),
        }
    }
}

fn default_max_unpacked() -> u64 {
    4 << 30
}
fn default_max_entries() -> u64 {
    500_000
}
fn default_max_path_len() -> usize {
    4096
}
fn default_max_depth() -> usize {
    64
}
fn default_max_record() -> u64 {
    64 << 10
}
fn default_max_window() -> u64 {
    // Enough for every standard zstd level (level 19 uses an 8 MiB window); `--long` archives need a larger limit.
    16 << 20
}
fn default_reserve() -> u64 {
    64 << 20
}
