//! The CI side: `keygen` and `publish`. `publish` packs a deterministic `.tar.zst` from a directory (sorted
//! entries, fixed mtimes, owners and modes, so the same tree always gives the same bytes), uploads it to
//! `BASE/APP/releases/VERSION.tar.zst`, then signs and writes the channel manifest with the next sequence:
//! the signature first, the manifest last, so an agent never sees a new manifest without its signature.
//! `--promote-only` points a channel at an already uploaded version (a promotion, or a deliberate rollback).
//! Against the version the channel named before, it also publishes a delta ([`delta`]) that the manifest names.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;

use crate::base::version::Version;
use crate::engine::pull;
use crate::error::Error;
use crate::source::bucket::{Fetched, Options, Source};
use crate::source::manifest::{self, Manifest};
use crate::source::SourceError;

pub mod delta;
pub mod fleet;

#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub base: String,
    pub app: String,
    pub channel: String,
    pub version: Version,
    pub key: PathBuf,
    /// A directory to pack, or an archive to upload as it is; neither with `promote_only`.
    pub dir: Option<PathBuf>,
    pub file: Option<PathBuf>,
    pub promote_only: bool,
    pub expires_in: Duration,
    pub options: Options,
    /// Also publish a delta against the version the channel named before (see [`delta`]).
    pub delta: bool,
    /// A staged rollout (`--wave`), and when it halts (`--halt-after`).
    pub waves: Vec<crate::source::rollout::Wave>,
    pub halt_after: Option<crate::source::rollout::Threshold>,
    /// The release's epoch, for the manifest (`--epoch`).
    pub epoch: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct PublishOutcome {
    pub app: String,
    pub channel: String,
    pub version: String,
    pub artifact: String,
    pub sha256: String,
    pub size: u64,
    pub sequence: u64,
    pub expires: String,
    /// Whether the artifact was uploaded now (false: it was already there, byte for byte).
    pub uploaded: bool,
    /// The delta the manifest names, if one was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<PublishedDelta>,
}

#[derive(Debug, Serialize)]
pub struct PublishedDelta {
    pub from: String,
    pub artifact: String,
    pub sha256: String,
    pub size: u64,
    /// Files it carries (changed or added), and files it takes from `from`.
    pub files_carried: u64,
    pub files_referenced: u64,
}

pub fn publish(req: &PublishRequest, rt: &tokio::runtime::Runtime) -> anyhow::Result<PublishOutcome> {
    rt.block_on(publish_async(req))
}

async fn publish_async(req: &PublishRequest) -> anyhow::Result<PublishOutcome> {
    if !crate::config::valid_app_name(&req.app) {
        return Err(Error::Usage(format!("--app `{}`: expected [A-Za-z0-9][A-Za-z0-9_-]{{0,63}}", req.app)).into());
    }
    if !crate::config::valid_app_name(&req.channel) {
        return Err(
            Error::Usage(format!("--channel `{}`: expected [A-Za-z0-9][A-Za-z0-9_-]{{0,63}}", req.channel)).into()
        );
    }
    crate::config::no_credentials(&req.base).map_err(|e| Error::Usage(format!("--to: {e}")))?;
    if url::Url::parse(&req.base).is_err() {
        return Err(Error::Usage(format!(
            "--to `{}` is not a URL; give the bucket base with its scheme, e.g. s3://bucket/deploy, \
             https://host/deploy or file:///srv/bucket",
            crate::base::redact::url(&req.base)
        ))
        .into());
    }
    // Checked before anything is uploaded.
    if req.expires_in > MAX_EXPIRES_IN || req.expires_in.is_zero() {
        return Err(Error::Usage(format!(
            "--expires-in {}: expected more than 0s and at most {} (agents refuse manifests valid longer than their \
             max_manifest_lifetime, {} by default)",
            humantime::format_duration(req.expires_in),
            days(MAX_EXPIRES_IN),
            days(DEFAULT_AGENT_LIFETIME)
        ))
        .into());
    }
    if req.expires_in > DEFAULT_AGENT_LIFETIME {
        tracing::warn!(
            "--expires-in {} is longer than the agents' default max_manifest_lifetime ({}): agents keeping that \
             default will refuse this manifest",
            days(req.expires_in),
            days(DEFAULT_AGENT_LIFETIME)
        );
    }
    crate::source::rollout::check_waves(&req.waves).map_err(|e| Error::Usage(format!("--wave {e}")))?;
    let sk = manifest::load_secret_key(&req.key)?;
    let now = SystemTime::now();
    let base = format!("{}/{}", req.base.trim_end_matches('/'), req.app);
    let src = Source::open(&base, &req.options)?;
    let artifact = format!("releases/{}.tar.zst", req.version);
    let existing = hash_object(&src, &artifact).await?;
    let key = pull::channel_key(&req.channel);
    let previous = trusted_manifest(&src, &key, &sk, now).await?;
    let mut new_archive = None;
    // A packed directory's archive, kept until the delta is made from it.
    let tmp;
    let (sha256, size, uploaded) = if req.promote_only {
        let (sha, size) = existing.ok_or_else(|| {
            SourceError::local(
                &src.describe(&artifact),
                "not found: --promote-only needs a version that was published before",
            )
        })?;
        (sha, size, false)
    } else {
        let archive = match (&req.dir, &req.file) {
            (Some(dir), None) => {
                tmp = tempfile::NamedTempFile::new().context("creating a temporary archive")?;
                pack_dir(dir, tmp.path())?;
                tmp.path().to_owned()
            }
            (None, Some(file)) => file.clone(),
            _ => return Err(Error::Usage("give either a directory to pack or --file ARCHIVE".to_owned()).into()),
        };
        check_archive(&archive)?;
        new_archive = Some(archive.clone());
        let (sha, size) = crate::base::digest::sha256_file(&archive)?;
        match existing {
            Some((old, _)) if old == sha => (sha, size, false),
            Some((old, _)) => {
                return Err(Error::Usage(format!(
                    "{} already exists with other content (sha256 {old}, this one {sha}); releases are immutable: \
                     publish a new version",
                    src.describe(&artifact)
                ))
                .into())
            }
            None => {
                src.put_file(&artifact, &archive).await?;
                (sha, size, true)
            }
        }
    };
    let delta = match (&previous, &new_archive) {
        (Some(prev), Some(archive)) if req.delta && prev.version != req.version.as_str() => {
            publish_delta(&src, prev, &req.version, archive, size).await?
        }
        _ => None,
    };
    let unix = manifest::unix(now);
    let sequence = match previous.as_ref().map(|m| m.sequence) {
        Some(old) => old
            .checked_add(1)
            .ok_or_else(|| Error::Usage(format!("the channel's sequence {old} cannot grow any more")))?
            .max(unix),
        None => unix,
    };
    let expires = now.checked_add(req.expires_in).context("--expires-in was checked")?;
    let m = Manifest {
        app: req.app.clone(),
        channel: req.channel.clone(),
        version: req.version.to_string(),
        artifact: artifact.clone(),
        sha256: sha256.clone(),
        size,
        sequence,
        expires: humantime::format_rfc3339_seconds(expires).to_string(),
        published_at: Some(humantime::format_rfc3339_seconds(now).to_string()),
        published_by: std::env::var("USER").ok(),
        waves: req.waves.clone(),
        halt_after: req.halt_after,
        delta: delta.as_ref().map(|(d, _)| d.clone()),
        epoch: req.epoch,
    };
    let mut bytes = serde_json::to_vec_pretty(&m)?;
    bytes.push(b'\n');
    let comment = format!("app:{} channel:{} version:{} sequence:{}", m.app, m.channel, m.version, m.sequence);
    let sig = manifest::sign(&sk, &bytes, &comment)?;
    src.put(&format!("{key}.minisig"), Bytes::from(sig.into_bytes())).await?;
    src.put(&key, Bytes::from(bytes)).await?;
    Ok(PublishOutcome {
        app: m.app,
        channel: m.channel,
        version: m.version,
        artifact: src.describe(&artifact),
        sha256,
        size,
        sequence: m.sequence,
        expires: m.expires,
        uploaded,
        delta: delta.map(|(d, made)| PublishedDelta {
            from: d.from.to_string(),
            artifact: src.describe(&d.artifact),
            sha256: d.sha256,
            size: d.size,
            files_carried: made.carried,
            files_referenced: made.referenced,
        }),
    })
}

/// The delta of `version` (its archive `archive`, `full_size` bytes) against the previous manifest's release,
/// uploaded; `None` when none is made (the previous artifact is gone or not what its manifest says, the delta
/// cannot be proven, or it would not be much smaller): said, never an error of the publish.
async fn publish_delta(
    src: &Source,
    prev: &Manifest,
    version: &Version,
    archive: &Path,
    full_size: u64,
) -> anyhow::Result<Option<(manifest::Delta, delta::Made)>> {
    let Ok(from) = Version::parse(&prev.version) else { return Ok(None) };
    let tmp = tempfile::tempdir().context("creating a directory for the delta")?;
    let base = match src.download_unverified(&prev.artifact, &tmp.path().join("base.tar.zst")).await? {
        Some(p) => p,
        None => {
            tracing::warn!("no delta: {} (the release of {from}) is not in the bucket", src.describe(&prev.artifact));
            return Ok(None);
        }
    };
    let (sha, _) = crate::base::digest::sha256_file(&base)?;
    if sha != prev.sha256 {
        tracing::warn!(
            "no delta: {} is not what the channel's manifest says (sha256 {sha})",
            src.describe(&prev.artifact)
        );
        return Ok(None);
    }
    let out = tmp.path().join("delta.tar.zst");
    let (base2, archive2, out2) = (base.clone(), archive.to_owned(), out.clone());
    let made = tokio::task::spawn_blocking(move || delta::make(&base2, &archive2, &out2))
        .await
        .map_err(|e| anyhow::anyhow!("making the delta: {e}"))??;
    let Some(made) = made else { return Ok(None) };
    let (sha256, size) = crate::base::digest::sha256_file(&out)?;
    if size.saturating_mul(10) >= full_size.saturating_mul(9) {
        tracing::info!(
            "no delta: against {from} it would be {size} bytes, not much less than the release's {full_size}"
        );
        return Ok(None);
    }
    let artifact = format!("releases/{version}.from-{from}.delta.tar.zst");
    match hash_object(src, &artifact).await? {
        None => src.put_file(&artifact, &out).await?,
        Some((old, _)) if old == sha256 => {}
        Some((old, _)) => {
            tracing::warn!(
                "no delta: {} exists with other content (sha256 {old}); it is left as it is",
                src.describe(&artifact)
            );
            return Ok(None);
        }
    }
    Ok(Some((manifest::Delta { from, artifact, sha256, size }, made)))
}

/// The longest `--expires-in` publish writes.
const MAX_EXPIRES_IN: Duration = Duration::from_secs(3650 * 86400);
/// The agents' default `max_manifest_lifetime` (publish warns above it).
const DEFAULT_AGENT_LIFETIME: Duration = Duration::from_secs(90 * 86400);

/// Unpacks `archive` into a throwaway directory with the agents' own unpacker and default limits: an archive
/// every host would refuse never reaches a channel (the version would be burned for good).
fn check_archive(archive: &Path) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a directory to check the archive in")?;
    let fd = File::open(dir.path()).with_context(|| format!("opening {}", dir.path().display()))?;
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let limits = crate::config::Limits::default();
    // Agents judge links that leave the release by their own `outside_links`; publish uses the default, and a
    // release location of the usual shape (so links into ROOT/shared pass).
    crate::store::unpack::unpack_tar_zst_with(
        std::io::BufReader::with_capacity(64 << 10, file),
        fd.as_fd(),
        &limits,
        None,
        &check_links(),
    )
    .map_err(|source| Error::ArchiveRefused { archive: archive.to_owned(), source: Box::new(source) })?;
    Ok(())
}

/// Links that leave the release, judged as agents do by default, for a release at a place of the usual shape (so
/// links into `ROOT/shared` pass).
fn check_links() -> crate::store::unpack::LinkPolicy {
    crate::store::unpack::LinkPolicy {
        location: Some(PathBuf::from("/srv/app/releases/check")),
        outside: crate::config::default_outside_links(),
    }
}

fn days(d: Duration) -> String {
    format!("{}d", d.as_secs() / 86400)
}

/// The channel's current manifest, if it can be trusted (for its sequence, and as the base of a delta): only a
/// manifest whose signature verifies against the key publish signs with counts (anyone who can write the bucket
/// could put an unsigned one there, with a sequence that would freeze the channel), and only when its sequence is
/// not implausibly far above this clock. Otherwise publish says why and uses the clock.
async fn trusted_manifest(
    src: &Source,
    key: &str,
    sk: &minisign::SecretKey,
    now: SystemTime,
) -> anyhow::Result<Option<Manifest>> {
    let bytes = match src.fetch_small(key, None).await? {
        Fetched::Body { bytes, .. } => bytes,
        _ => return Ok(None),
    };
    let shown = src.describe(key);
    let sig = match src.fetch_small(&format!("{key}.minisig"), None).await? {
        Fetched::Body { bytes, .. } => String::from_utf8_lossy(&bytes).into_owned(),
        _ => {
            tracing::warn!("{shown} has no signature: its sequence is not trusted; using the clock");
            return Ok(None);
        }
    };
    let pk = minisign::PublicKey::from_secret_key(sk).map_err(|e| anyhow::anyhow!("deriving the public key: {e}"))?;
    let pk = minisign_verify::PublicKey::from_base64(&pk.to_base64())
        .map_err(|e| anyhow::anyhow!("reading the public key: {e}"))?;
    if let Err(r) = manifest::verify_signature(&bytes, &sig, &[pk]) {
        tracing::warn!(
            "{shown} is not signed by this key ({}): its sequence is not trusted; using the clock",
            r.reason
        );
        return Ok(None);
    }
    let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) else {
        tracing::warn!("{shown} is signed by this key but is not a manifest; using the clock");
        return Ok(None);
    };
    if let Some(why) = manifest::sequence_ahead(m.sequence, now) {
        tracing::warn!("{shown}: {why}; agents refuse it, so the clock is used instead");
        return Ok(None);
    }
    Ok(Some(m))
}

/// The sha256 and size of an object, streamed; `None` if it does not exist.
async fn hash_object(src: &Source, rel: &str) -> Result<Option<(String, u64)>, Error> {
    let dir = tempfile::tempdir().map_err(|e| SourceError::local(&src.describe(rel), e))?;
    match src.download_unverified(rel, &dir.path().join("a")).await? {
        None => Ok(None),
        Some(path) => {
            let (sha, size) = crate::base::digest::sha256_file(&path)
                .map_err(|e| SourceError::local(&src.describe(rel), format!("{e:#}")))?;
            Ok(Some((sha, size)))
        }
    }
}

/// Packs `dir` into a deterministic `.tar.zst` at `out`: entries in byte order of their paths, mtime from
/// `SOURCE_DATE_EPOCH` (or 0), owner 0:0 without names, modes 0755 (directories and executables) or 0644.
/// Regular files, directories and symlinks only.
pub fn pack_dir(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "{} is not a directory", dir.display());
    let mtime = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let mut paths = Vec::new();
    collect(dir, Path::new(""), &mut paths)?;
    paths.sort();
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut enc = zstd::Encoder::new(BufWriter::new(file), 10)?;
    enc.include_checksum(true)?;
    let mut tar = tar::Builder::new(enc);
    for rel in &paths {
        let full = dir.join(rel);
        let meta = std::fs::symlink_metadata(&full).with_context(|| format!("reading {}", full.display()))?;
        let mut h = tar::Header::new_gnu();
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        let ft = meta.file_type();
        use std::os::unix::fs::PermissionsExt;
        let exec = meta.permissions().mode() & 0o111 != 0;
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, rel, std::io::empty())?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&full)?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            tar.append_link(&mut h, rel, &target)?;
        } else if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(if exec { 0o755 } else { 0o644 });
            h.set_size(meta.len());
            let f = File::open(&full).with_context(|| format!("opening {}", full.display()))?;
            tar.append_data(&mut h, rel, f.take(meta.len()))?;
        } else {
            anyhow::bail!("{}: only files, directories and symlinks can be packed", full.display());
        }
    }
    let enc = tar.into_inner()?;
    let mut w = enc.finish()?;
    w.flush()?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let dir = root.join(rel);
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let child = rel.join(entry.file_name());
        out.push(child.clone());
        if entry.file_type()?.is_dir() {
            collect(root, &child, out)?;
        }
    }
    Ok(())
}
