//! Channel manifests: what a channel wants, signed with minisign (ed25519) keys.
//!
//! A manifest is the JSON document `BASE/APP/channels/CHANNEL.json`, signed by `CHANNEL.json.minisig`. The agent
//! accepts it only when the signature verifies against one of the app's `trusted_keys`, it names this app and
//! channel, it has not expired, and its `sequence` is above the last one accepted (kept durably in the app's
//! state): a replayed older manifest is an attack. The same rules apply to a manifest dropped into the inbox.

use std::io::Cursor;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::error::SourceError;
use super::rollout::{Threshold, Wave};
use crate::base::version::Version;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub app: String,
    pub channel: String,
    pub version: String,
    /// The artifact's path relative to `BASE/APP/`, e.g. `releases/1.4.2.tar.zst`.
    pub artifact: String,
    pub sha256: String,
    pub size: u64,
    /// Only grows; see the module documentation.
    pub sequence: u64,
    /// RFC 3339 UTC time after which the manifest is refused.
    pub expires: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_by: Option<String>,
    /// A staged rollout: hosts deploy when a wave in force covers their seed (see `engine::plan::wave`). Needs
    /// `published_at`, from which the waves' delays count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Wave>,
    /// Hosts that are due stop deploying this version once this many (or this share) of the hosts report failing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt_after: Option<Threshold>,
    /// A delta of this release against the version the channel named before: only the changed and added files
    /// (see `publish`). An agent that has that version on disk may download it instead of the artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    /// The release's epoch (`publish --epoch N`); when its archive's `.switchback/release.toml` declares one too,
    /// the two must agree. No epoch declared anywhere is epoch 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// A delta artifact, as a manifest names it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Delta {
    /// The version it was made against (its base).
    pub from: Version,
    /// Its path relative to `BASE/APP/`, e.g. `releases/1.4.2.from-1.4.1.delta.tar.zst`.
    pub artifact: String,
    pub sha256: String,
    pub size: u64,
}

/// The last manifest an app accepted, kept in its state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Accepted {
    pub sequence: u64,
    pub version: Version,
    pub sha256: String,
    pub size: u64,
    pub artifact: String,
    pub expires: String,
    pub accepted_at: String,
    /// Where it came from: the channel's URL or the inbox file.
    pub from: crate::source::origin::Origin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Wave>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt_after: Option<Threshold>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// Why a manifest was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: String,
    /// A signature that does not match may be a publish caught half-way (manifest and signature are two
    /// objects): worth fetching again next time rather than remembering the verdict.
    pub retry: bool,
}

impl Refused {
    fn final_(reason: impl Into<String>) -> Refused {
        Refused { reason: reason.into(), retry: false }
    }
}

/// The verdict on a manifest that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// New: it names what the app should run now.
    New(Box<Manifest>),
    /// The same manifest as the last accepted one (e.g. fetched again after a restart).
    Same,
}

/// Checks the signature of `bytes` against `keys`.
pub fn verify_signature(bytes: &[u8], sig: &str, keys: &[minisign_verify::PublicKey]) -> Result<(), Refused> {
    let retry = |reason: String| Refused { reason, retry: true };
    if keys.is_empty() {
        return Err(Refused::final_("no trusted_keys are configured for this app"));
    }
    let signature = minisign_verify::Signature::decode(sig).map_err(|e| retry(format!("unreadable signature: {e}")))?;
    let mut last = None;
    for key in keys {
        match key.verify(bytes, &signature, false) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(minisign_verify::Error::UnexpectedKeyId) => {
            let id = minisign::SignatureBox::from_string(sig)
                .map(|b| {
                    let mut id = b.keynum().to_vec();
                    id.reverse();
                    hex::encode_upper(id)
                })
                .unwrap_or_else(|_| "unknown".to_owned());
            retry(format!("signed by key {id}, which is not among the trusted_keys"))
        }
        Some(minisign_verify::Error::UnexpectedAlgorithm) => {
            retry("legacy (non-prehashed) signatures are refused; sign with a current minisign".to_owned())
        }
        Some(e) => retry(format!("bad signature: {e}")),
        None => retry("bad signature".to_owned()),
    })
}

/// How far a sequence may run ahead of this host's clock. Sequences are Unix times (`publish` takes the larger of
/// the clock and the channel's sequence + 1), so one far above the clock is a publisher's clock gone wrong or a
/// bug, and accepting it would freeze the channel: every later manifest would look like a replay until the clock
/// caught up.
pub const MAX_SEQUENCE_AHEAD: u64 = 86_400;

/// `now` as a Unix time in seconds (0 before 1970).
pub fn unix(now: SystemTime) -> u64 {
    now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether `sequence` is implausibly far above the clock `now`; the refusal says why.
pub fn sequence_ahead(sequence: u64, now: SystemTime) -> Option<String> {
    let clock = unix(now);
    (sequence > clock.saturating_add(MAX_SEQUENCE_AHEAD)).then(|| {
        format!(
            "sequence {sequence} is {} ahead of this host's clock (sequences are Unix times, and at most {} ahead is \
             accepted): the publisher's clock is wrong, or this host's is; check both clocks and publish again",
            humantime::format_duration(std::time::Duration::from_secs(sequence - clock)),
            humantime::format_duration(std::time::Duration::from_secs(MAX_SEQUENCE_AHEAD))
        )
    })
}

/// The checks after the signature: app, channel, sequence, expiry (and its lifetime, at most `max_lifetime`
/// from `now`) and the fields' own validity.
pub fn check(
    bytes: &[u8],
    app: &str,
    channel: &str,
    last: Option<&Accepted>,
    now: SystemTime,
    max_lifetime: std::time::Duration,
) -> Result<Verdict, Refused> {
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| Refused::final_(format!("not a valid manifest: {e}")))?;
    if m.app != app {
        return Err(Refused::final_(format!("it is for app `{}`, not `{app}`", m.app)));
    }
    if m.channel != channel {
        return Err(Refused::final_(format!("it is for channel `{}`, not `{channel}`", m.channel)));
    }
    let version = Version::parse(&m.version).map_err(|e| Refused::final_(e.to_string()))?;
    if !valid_artifact_path(&m.artifact) {
        return Err(Refused::final_(format!("artifact path `{}` is not a plain relative path", m.artifact)));
    }
    if !valid_sha256(&m.sha256) {
        return Err(Refused::final_(format!("sha256 `{}` is not 64 lowercase hex digits", m.sha256)));
    }
    if let Some(d) = &m.delta {
        if !valid_artifact_path(&d.artifact) {
            return Err(Refused::final_(format!("delta artifact path `{}` is not a plain relative path", d.artifact)));
        }
        if !valid_sha256(&d.sha256) {
            return Err(Refused::final_(format!("the delta's sha256 `{}` is not 64 lowercase hex digits", d.sha256)));
        }
    }
    super::rollout::check_waves(&m.waves).map_err(Refused::final_)?;
    if !m.waves.is_empty() {
        let at = m.published_at.as_deref().unwrap_or_default();
        if humantime::parse_rfc3339_weak(at).is_err() {
            return Err(Refused::final_(format!(
                "it has waves but no published_at time to count their delays from (`{at}`)"
            )));
        }
    }
    if let Some(last) = last {
        if m.sequence < last.sequence {
            return Err(Refused::final_(format!(
                "replayed: sequence {} is below the last accepted {} (version {})",
                m.sequence, last.sequence, last.version
            )));
        }
        if m.sequence == last.sequence {
            return if version == last.version && m.sha256 == last.sha256 {
                Ok(Verdict::Same)
            } else {
                Err(Refused::final_(format!(
                    "sequence {} was already accepted for version {}; a new manifest needs a higher sequence",
                    m.sequence, last.version
                )))
            };
        }
    }
    if let Some(why) = sequence_ahead(m.sequence, now) {
        return Err(Refused::final_(why));
    }
    let expires = humantime::parse_rfc3339_weak(&m.expires)
        .map_err(|e| Refused::final_(format!("expires `{}` is not an RFC 3339 time ({e})", m.expires)))?;
    if expires <= now {
        return Err(Refused::final_(format!("expired at {}", m.expires)));
    }
    if expires.duration_since(now).is_ok_and(|left| left > max_lifetime) {
        return Err(Refused::final_(format!(
            "it expires at {}, beyond the longest lifetime accepted ({}, max_manifest_lifetime): a manifest valid \
             that long could hold hosts on it long after its publisher moved on; publish with a shorter --expires-in",
            m.expires,
            humantime::format_duration(max_lifetime)
        )));
    }
    Ok(Verdict::New(Box::new(m)))
}

impl Manifest {
    pub fn accepted(&self, from: crate::source::origin::Origin) -> anyhow::Result<Accepted> {
        Ok(Accepted {
            sequence: self.sequence,
            version: Version::parse(&self.version)?,
            sha256: self.sha256.clone(),
            size: self.size,
            artifact: self.artifact.clone(),
            expires: self.expires.clone(),
            accepted_at: crate::base::fsutil::now_rfc3339(),
            from,
            delta: self.delta.clone(),
            published_at: self.published_at.clone(),
            waves: self.waves.clone(),
            halt_after: self.halt_after,
            epoch: self.epoch,
        })
    }
}

impl Accepted {
    /// Whether the manifest's `expires` has passed by `now`: a manifest accepted in time but acted on later (after
    /// an unpin, a busy lock, an outage) must still be in date, or a withheld channel could bring back an old
    /// release long after its publisher moved on.
    pub fn expired(&self, now: SystemTime) -> bool {
        !matches!(humantime::parse_rfc3339_weak(&self.expires), Ok(t) if t > now)
    }
}

fn valid_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn valid_artifact_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+/".contains(&b))
}

/// A minisign key pair for CI: `PREFIX.key` (unencrypted secret key) and `PREFIX.pub`.
pub fn keygen(prefix: &std::path::Path) -> Result<String, SourceError> {
    let with = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(ext);
        std::path::PathBuf::from(p)
    };
    let (sk_path, pk_path) = (with(".key"), with(".pub"));
    for p in [&sk_path, &pk_path] {
        if p.exists() {
            return Err(SourceError::KeyExists { path: p.clone() });
        }
    }
    let minisign::KeyPair { pk, sk } =
        minisign::KeyPair::generate_unencrypted_keypair().map_err(SourceError::KeyGen)?;
    let sk_text = sk.to_box(Some("switchback secret key")).map_err(SourceError::KeyEncoding)?.to_string();
    let pk_text = pk.to_box().map_err(SourceError::KeyEncoding)?.to_string();
    for (path, text, mode) in [(&sk_path, &sk_text, 0o600), (&pk_path, &pk_text, 0o644)] {
        crate::base::fsutil::write_new(path, text.as_bytes(), mode).map_err(|source| SourceError::File {
            action: "writing",
            path: path.clone(),
            source,
        })?;
    }
    Ok(pk.to_base64())
}

/// Reads an unencrypted minisign secret key.
pub fn load_secret_key(path: &std::path::Path) -> Result<minisign::SecretKey, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|source| SourceError::File {
        action: "reading key",
        path: path.to_owned(),
        source,
    })?;
    let sk_box = minisign::SecretKeyBox::from_string(&text)
        .map_err(|source| SourceError::NotASecretKey { path: path.to_owned(), source })?;
    sk_box.into_unencrypted_secret_key().map_err(|cause| SourceError::EncryptedKey { path: path.to_owned(), cause })
}

/// Signs `bytes` (prehashed, as current minisign does); returns the `.minisig` text.
pub fn sign(sk: &minisign::SecretKey, bytes: &[u8], trusted_comment: &str) -> Result<String, SourceError> {
    let sig = minisign::sign(None, sk, Cursor::new(bytes), Some(trusted_comment), None).map_err(SourceError::Sign)?;
    Ok(sig.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn keypair() -> (minisign::SecretKey, Vec<minisign_verify::PublicKey>) {
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let pk = minisign_verify::PublicKey::from_base64(&kp.pk.to_base64()).unwrap();
        (kp.sk, vec![pk])
    }

    fn now_seq() -> u64 {
        unix(SystemTime::now())
    }

    fn manifest(seq: u64, version: &str, expires: &str) -> Vec<u8> {
        serde_json::to_vec(&Manifest {
            app: "web".into(),
            channel: "production".into(),
            version: version.into(),
            artifact: format!("releases/{version}.tar.zst"),
            sha256: "a".repeat(64),
            size: 10,
            sequence: seq,
            expires: expires.into(),
            published_at: None,
            published_by: None,
            waves: Vec::new(),
            halt_after: None,
            delta: None,
            epoch: None,
        })
        .unwrap()
    }

    /// The full check: signature first (nothing of an unverified document is believed), then [`check`].
    pub fn accept(
        bytes: &[u8],
        sig: &str,
        keys: &[minisign_verify::PublicKey],
        app: &str,
        channel: &str,
        last: Option<&Accepted>,
        now: SystemTime,
    ) -> Result<Verdict, Refused> {
        verify_signature(bytes, sig, keys)?;
        check(bytes, app, channel, last, now, LIFE)
    }

    const LIFE: Duration = Duration::from_secs(90 * 86400);

    fn future() -> String {
        humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(86400)).to_string()
    }

    #[test]
    fn signed_manifest_is_accepted_and_tampering_is_not() {
        let (sk, keys) = keypair();
        let bytes = manifest(5, "1.0.0", &future());
        let sig = sign(&sk, &bytes, "t").unwrap();
        let now = SystemTime::now();
        assert!(matches!(accept(&bytes, &sig, &keys, "web", "production", None, now), Ok(Verdict::New(_))));
        let mut tampered = bytes.clone();
        let i = tampered.iter().position(|&b| b == b'1').unwrap();
        tampered[i] = b'2';
        let err = accept(&tampered, &sig, &keys, "web", "production", None, now).unwrap_err();
        assert!(err.reason.contains("signature"), "{err:?}");
        let (_, other) = keypair();
        let err = accept(&bytes, &sig, &other, "web", "production", None, now).unwrap_err();
        assert!(err.reason.contains("not among the trusted_keys"), "{err:?}");
    }

    #[test]
    fn replay_expiry_and_wrong_target_are_refused() {
        let now = SystemTime::now();
        let last = Manifest::accepted(&serde_json::from_slice(&manifest(10, "2.0.0", &future())).unwrap(), "x".into())
            .unwrap();
        let older = manifest(9, "1.0.0", &future());
        assert!(check(&older, "web", "production", Some(&last), now, LIFE).unwrap_err().reason.contains("replayed"));
        assert_eq!(
            check(&manifest(10, "2.0.0", &future()), "web", "production", Some(&last), now, LIFE),
            Ok(Verdict::Same)
        );
        assert!(check(&manifest(10, "3.0.0", &future()), "web", "production", Some(&last), now, LIFE).is_err());
        let past = humantime::format_rfc3339_seconds(now - Duration::from_secs(60)).to_string();
        assert!(check(&manifest(11, "3.0.0", &past), "web", "production", Some(&last), now, LIFE)
            .unwrap_err()
            .reason
            .contains("expired"));
        assert!(check(&manifest(11, "3.0.0", &future()), "api", "production", None, now, LIFE).is_err());
        assert!(check(&manifest(11, "3.0.0", &future()), "web", "staging", None, now, LIFE).is_err());
        assert!(matches!(
            check(&manifest(11, "3.0.0", &future()), "web", "production", Some(&last), now, LIFE),
            Ok(Verdict::New(_))
        ));
    }

    #[test]
    fn sequences_far_ahead_and_lifetimes_too_long_are_refused() {
        let now = SystemTime::now();
        let far = manifest(now_seq() + 2 * MAX_SEQUENCE_AHEAD, "1.0.0", &future());
        let err = check(&far, "web", "production", None, now, LIFE).unwrap_err();
        assert!(err.reason.contains("ahead of this host's clock"), "{err:?}");
        assert!(check(&manifest(u64::MAX - 1, "1.0.0", &future()), "web", "production", None, now, LIFE).is_err());
        let soon = manifest(now_seq() + 60, "1.0.0", &future());
        assert!(matches!(check(&soon, "web", "production", None, now, LIFE), Ok(Verdict::New(_))));
        let forever = manifest(now_seq(), "1.0.0", "9999-01-01T00:00:00Z");
        let err = check(&forever, "web", "production", None, now, LIFE).unwrap_err();
        assert!(err.reason.contains("max_manifest_lifetime"), "{err:?}");
    }

    #[test]
    fn artifact_paths_stay_relative() {
        assert!(valid_artifact_path("releases/1.0.tar.zst"));
        for bad in ["", "/etc/passwd", "../x", "releases/../../x", "a//b", "a/./b", "a\\b", "a b"] {
            assert!(!valid_artifact_path(bad), "{bad}");
        }
    }
}
