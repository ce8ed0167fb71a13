//! How durations and sizes are written in the configuration: "500ms", "30s"; "4GiB", "512MiB" or a plain number
//! of bytes. Serde helpers with errors that say what was expected.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration such as "500ms" or "30s".
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!("invalid duration `{s}` ({e}); expected e.g. \"500ms\", \"30s\""))
    })
}

/// A size such as "4GiB", "512MiB", or a number of bytes.
pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bytes(n) => Ok(n),
        Raw::Text(s) => s.parse::<bytesize::ByteSize>().map(|b| b.as_u64()).map_err(|e| {
            serde::de::Error::custom(format!("invalid size `{s}` ({e}); expected e.g. \"4GiB\", \"512MiB\""))
        }),
    }
}
