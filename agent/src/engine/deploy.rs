//! `deploy APP --file ARCHIVE --version V`: verify the artifact, unpack it into staging, rename it into
//! `releases/V`, run `before_activate`, then go live and prove it (see [`crate::engine::activate`]). A failure before the
//! switch changes nothing visible; a failure after it rolls back automatically.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::app::App;
use crate::base::crashpoint;
use crate::base::timeline::Timeline;
use crate::base::timeline::Timing;
use crate::base::verdict::Verdict;
use crate::base::version::Version;
use crate::engine::activate;
use crate::engine::reconcile;
use crate::engine::retention;
use crate::error::Error;
use crate::host::hooks::{self, Hook};
use crate::source::artifact::Artifact;
use crate::statedir::state::{Op, Step};
use crate::store::unpack;

#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// The archive; `None` deploys a release already on disk (no network, no unpack).
    pub archive: Option<PathBuf>,
    /// What a signed manifest promised for this version's artifact, if one did.
    pub expected: Option<Promise>,
    pub version: Version,
    pub force: bool,
    pub reason: Option<String>,
    /// The download that brought the archive, if one did (a step of the deploy, and part of its duration).
    pub fetched: Option<Fetched>,
    /// Set when the archive is a delta: the release it was made against, which must be on disk.
    pub delta: Option<DeltaOf>,
    /// The epoch the signed manifest declares, if one did: the release must not declare another.
    pub epoch: Option<u64>,
}

/// A delta archive's base, and the release it assembles (the full artifact's sha256 and size, which the release
/// is recorded with, as if that artifact had been unpacked).
#[derive(Debug, Clone)]
pub struct DeltaOf {
    pub base: Version,
    pub release: Promise,
}

/// A download done for a deploy: its step, and the bytes that came over the network.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub timing: Timing,
    pub bytes: u64,
}

impl Fetched {
    /// This download, after `earlier` ones that were not used (a delta that did not assemble): their bytes came
    /// over the network too, and their time is part of this step.
    pub fn after(mut self, earlier: &[Fetched]) -> Fetched {
        for e in earlier {
            self.bytes += e.bytes;
            self.timing.ms += e.timing.ms;
            if let (Some(d), Some(before)) = (self.timing.detail.as_mut(), e.timing.detail.as_ref()) {
                d.push_str(&format!("; after {before}, not used"));
            }
        }
        self
    }
}

/// The sha256 and size a signed manifest gives for an artifact.
#[derive(Debug, Clone)]
pub struct Promise {
    pub sha256: String,
    pub size: u64,
}

/// What a deploy that succeeded did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Deployed {
    /// The version went live and proved healthy.
    Deployed,
    /// It was already current (and not degraded): nothing was done.
    Unchanged,
}

impl std::fmt::Display for Deployed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Deployed::Deployed => "deployed",
            Deployed::Unchanged => "unchanged",
        })
    }
}

#[derive(Debug, Serialize)]
pub struct DeployOutcome {
    pub app: String,
    pub version: String,
    pub previous: Option<String>,
    pub outcome: Deployed,
    pub health: String,
    pub pruned: Vec<String>,
    /// Bytes downloaded for this deploy (0: the archive was given, on disk, or dropped in the inbox).
    pub downloaded: u64,
    pub steps: Vec<Timing>,
}

pub fn deploy(app: &App, req: &DeployRequest, wait: Duration, print: bool) -> anyhow::Result<DeployOutcome> {
    let mut tl = match &req.fetched {
        Some(f) => Timeline::after(print, f.timing.clone()),
        None => Timeline::new(print),
    };
    let _lock = app.lock_preempting(wait, "deploy", Some(&req.version))?;
    let mut state = reconcile::reconcile(app, &mut tl)?;
    let mut ev = app.event(crate::statedir::history::Action::Deploy);
    ev.version = Some(req.version.to_string());
    ev.reason = req.reason.clone();
    let previous = app.store.current()?;
    ev.previous = previous.as_ref().map(ToString::to_string);
    tl.note(&format!(
        "deploying {} {} (from {})",
        app.name,
        req.version,
        previous.as_ref().map_or("nothing".to_owned(), ToString::to_string)
    ));
    let mut outcome = app.recorded(ev, &mut tl, |ev, tl| {
        let v = &req.version;
        crate::engine::plan::may_switch_to(&state, v, req.force).map_err(|held| held.error(&app.name, v))?;
        let on_disk = app.store.on_disk()?;
        // The artifact is opened once, here: hashed, checked and unpacked from that one descriptor.
        let mut artifact = match &req.archive {
            Some(path) => Some(tl.step("verify", || {
                let max = req.expected.as_ref().map(|p| p.size);
                crate::source::artifact::Artifact::open(path, &app.downloads_dir(), max).map_err(Error::from).map(|a| {
                    let d = format!("sha256 {}", &a.sha256[..16]);
                    (a, Some(d))
                })
            })?),
            None => None,
        };
        let (file_sha, file_size) = match &artifact {
            Some(a) => (a.sha256.clone(), a.size),
            None => match state.releases.get(v) {
                Some(rec) if on_disk.contains(v) => (rec.sha256.clone(), rec.size),
                _ => return Err(Error::not_on_disk(&app.name, v, &on_disk).into()),
            },
        };
        if let Some(want) = &req.expected {
            if want.sha256 != file_sha || (artifact.is_some() && want.size != file_size) {
                return Err(Error::from(crate::source::SourceError::Mismatch {
                    artifact: req.archive.as_ref().map_or(format!("release {v} on disk"), |a| a.display().to_string()),
                    mismatch: crate::source::error::Mismatch::Release {
                        actual: file_sha,
                        size: file_size,
                        expected: want.sha256.clone(),
                        expected_size: want.size,
                    },
                })
                .into());
            }
        }
        // What the release is recorded as: its artifact, or the full artifact a delta assembles.
        let (sha, size) = match (&req.delta, &artifact) {
            (Some(d), Some(_)) => (d.release.sha256.clone(), d.release.size),
            _ => (file_sha, file_size),
        };
        match state.releases.get(v) {
            Some(rec) if rec.sha256 != sha => {
                return Err(Error::VersionConflict {
                    app: app.name.clone(),
                    version: v.to_string(),
                    recorded: rec.sha256.clone(),
                    actual: sha,
                }
                .into())
            }
            None if on_disk.contains(v) => {
                return Err(Error::VersionConflict {
                    app: app.name.clone(),
                    version: v.to_string(),
                    recorded: "unknown (not recorded)".to_owned(),
                    actual: sha,
                }
                .into())
            }
            Some(rec) => {
                if let (Some(manifest), Some(recorded)) = (req.epoch, rec.epoch) {
                    if manifest != recorded {
                        return Err(Error::EpochMismatch {
                            app: app.name.clone(),
                            version: v.to_string(),
                            manifest,
                            declared: recorded,
                            declared_by: "as recorded when it was unpacked".to_owned(),
                        }
                        .into());
                    }
                }
            }
            _ => {}
        }
        // A degraded app redeployed on its current version is restarted and verified again (that is how a person
        // proves it healthy); otherwise there is nothing to do.
        if previous.as_ref() == Some(v)
            && state.in_flight.is_none()
            && !state.bad.contains_key(v)
            && state.degraded.is_none()
        {
            tl.note(&format!("{v} is already current; nothing to do"));
            return Ok(DeployOutcome {
                app: app.name.clone(),
                version: v.to_string(),
                previous: previous.as_ref().map(ToString::to_string),
                outcome: Deployed::Unchanged,
                health: String::new(),
                pruned: vec![],
                downloaded: 0,
                steps: vec![],
            });
        }
        if !on_disk.contains(v) {
            let archive = artifact.as_mut().ok_or_else(|| Error::not_on_disk(&app.name, v, &on_disk))?;
            let base = req.delta.as_ref().map(|d| &d.base);
            stage_release(app, &mut state, archive, (v, &sha, size, req.epoch), base, previous.as_ref(), tl)?;
        }
        drop(artifact);
        // Now that its epoch is recorded (a release on disk was checked with the others above): never back to a
        // lower epoch unless forced. The release stays on disk, not activated.
        if let Err(held) = crate::engine::plan::not_lower_epoch(&state, previous.as_ref(), v, None, req.force) {
            state.abandon()?;
            return Err(held.error(&app.name, v).into());
        }
        if let Some(crate::base::progress::Interrupt::Cancel(why)) = crate::base::progress::interrupted() {
            anyhow::bail!("cancelled before the switch by an operator's request ({why}); nothing was activated");
        }
        let release_dir = app.store.release_dir(v);
        let prev = previous.as_ref().map(Version::as_str);
        if let Err(failure) = hooks::run_in(app, Hook::BeforeActivate, v.as_str(), prev, &release_dir, tl, ev) {
            state.abandon()?;
            anyhow::bail!("{failure}; nothing was activated");
        }
        match activate::go_live(app, &mut state, v, previous.as_ref(), Op::Deploy, tl, ev)? {
            Verdict::Healthy(health) => {
                state.bad.remove(v);
                state.commit(v, Some(crashpoint::Point::AfterCommit))?;
                let pruned = retention::prune_after_deploy(app, &mut state)?;
                ev.removed = pruned.clone();
                Ok(DeployOutcome {
                    app: app.name.clone(),
                    version: v.to_string(),
                    previous: previous.as_ref().map(ToString::to_string),
                    outcome: Deployed::Deployed,
                    health,
                    pruned,
                    downloaded: req.fetched.as_ref().map_or(0, |f| f.bytes),
                    steps: vec![],
                })
            }
            Verdict::Unhealthy(reason) => Err(activate::fall_back(app, &mut state, v, &reason, tl, ev)?.into()),
        }
    })?;
    retention::record_prune_after_deploy(app, &outcome.version, &outcome.pruned)?;
    outcome.steps = tl.steps;
    Ok(outcome)
}

/// Unpacks the archive into a staging directory and renames it to `releases/V`. On any error the staging
/// directory is removed and the journal cleared: nothing visible changed.
fn stage_release(
    app: &App,
    state: &mut crate::statedir::journal::Journal,
    artifact: &mut Artifact,
    (v, sha256, size, manifest_epoch): (&Version, &str, u64, Option<u64>),
    delta_base: Option<&Version>,
    previous: Option<&Version>,
    tl: &mut Timeline,
) -> anyhow::Result<()> {
    preflight_space(app, artifact)?;
    // The release is recorded before it exists, so a crash right after the rename still knows its sha256;
    // reconcile drops records of releases that never made it to disk.
    state.record_release(v, sha256, size, &crate::base::fsutil::now_rfc3339());
    state.begin(Op::Deploy, v, previous, Step::Unpacking, None)?;
    let archive = artifact.shown.clone();
    let result = (|| -> anyhow::Result<()> {
        let staging = app.store.stage(v)?;
        let file = artifact.reader()?;
        let print = tl.prints();
        let mut donors = donors(app, state, v, delta_base);
        let report = tl.step("unpack", || {
            crate::base::progress::long_work(format!("deploying {v}"), print, || {
                unpack::unpack_tar_zst_reusing(
                    std::io::BufReader::with_capacity(64 << 10, file),
                    staging.fd(),
                    &app.cfg.limits,
                    app.store.read_group(),
                    &unpack::LinkPolicy {
                        location: Some(app.store.release_dir(v)),
                        outside: app.cfg.outside_links.clone(),
                    },
                    &mut donors,
                )
            })
            .map_err(|source| unpack_failed(app, &archive, &staging, source))
            .map(|r| {
                let mut d = format!(
                    "{} files, {} dirs, {} links, {}",
                    r.files,
                    r.dirs,
                    r.symlinks + r.hardlinks,
                    bytesize::ByteSize(r.bytes).display().iec()
                );
                if r.reused > 0 {
                    d.push_str(&format!(
                        "; {} files ({}) shared with releases on disk",
                        r.reused,
                        bytesize::ByteSize(r.reused_bytes).display().iec()
                    ));
                }
                (r, Some(d))
            })
        })?;
        crashpoint::hit(crashpoint::Point::AfterUnpack);
        // What the release declares about itself, read from staging (never through a link); recorded before the
        // release is renamed into place, so that its epoch is known whenever it is on disk.
        let declared = crate::store::declared::read(staging.fd())
            .map_err(|source| Error::InvalidDeclaration { archive: archive.clone(), source })?;
        if let (Some(manifest), Some(declared)) = (manifest_epoch, declared.epoch) {
            if manifest != declared {
                return Err(Error::EpochMismatch {
                    app: app.name.clone(),
                    version: v.to_string(),
                    manifest,
                    declared,
                    declared_by: format!("its archive's {}", crate::store::declared::PATH),
                }
                .into());
            }
        }
        if let Some(rec) = state.releases.get_mut(v) {
            rec.epoch = Some(declared.epoch.or(manifest_epoch).unwrap_or(0));
        }
        state.save(None)?;
        // The shared links are part of the release: made before the sync, so that they are as durable as the
        // unpacked files when the rename publishes the release (they used to be made after it).
        staging.link_shared(&app.store, &app.cfg.shared)?;
        // The index describes the finished release (shared links included): what every later check compares with.
        let index = crate::store::index::path(&app.state_dir, v.as_str());
        crate::store::index::write(staging.fd(), staging.path(), v.as_str(), &report.hashes, &index, app.read_group)?;
        tl.step("sync", || staging.make_durable().map(|()| ((), None)))?;
        crashpoint::hit(crashpoint::Point::AfterStagingDurable);
        staging.commit(&app.store, v)?;
        crate::app::verify::unpacked_now(app, v);
        crashpoint::hit(crashpoint::Point::AfterReleaseRename);
        tracing::debug!("{}: unpacked {v}: {report:?}", app.name);
        Ok(())
    })();
    if let Err(e) = result {
        state.releases.remove(v);
        state.abandon()?;
        return Err(e);
    }
    state.advance(Step::Released, None)
}

/// The releases a new release `v` may share unchanged files with: a delta's base first, then the current one and
/// the last good one, when they are on disk with an index.
fn donors(
    app: &App,
    state: &crate::statedir::journal::Journal,
    v: &Version,
    delta_base: Option<&Version>,
) -> crate::store::reuse::Donors {
    let mut versions: Vec<&Version> = Vec::new();
    for d in [delta_base, state.current.as_ref(), state.last_good.as_ref()].into_iter().flatten() {
        if d != v && !versions.contains(&d) {
            versions.push(d);
        }
    }
    let paths: Vec<(PathBuf, PathBuf)> = versions
        .into_iter()
        .map(|d| (app.store.release_dir(d), crate::store::index::path(&app.state_dir, d.as_str())))
        .collect();
    let refs: Vec<(&Path, &Path)> = paths.iter().map(|(a, b)| (a.as_path(), b.as_path())).collect();
    match delta_base {
        Some(_) => crate::store::reuse::Donors::for_delta(app.cfg.reuse, &refs, app.store.read_group()),
        None => crate::store::reuse::Donors::load(app.cfg.reuse, &refs, app.store.read_group()),
    }
}

/// An unpack that failed, by its consequence. Only a refusal of the archive itself is [`Error::ArchiveRefused`]
/// (the daemon never fetches that artifact again until the channel moves on). A write that failed (a full disk or
/// quota, a read-only or failing filesystem, a chown the filesystem refuses) is a fault of this host, reported
/// as what it is, naming where, and tried again later: a passing disk fault must not block a good release for
/// good. A stop (the daemon's shutdown, an operator's cancel) is neither.
fn unpack_failed(
    app: &App,
    archive: &Path,
    staging: &crate::store::layout::Staging,
    source: unpack::UnpackError,
) -> anyhow::Error {
    match source.reason {
        unpack::Refusal::Write => {
            let where_ = staging.path().display().to_string();
            let what = if source.source.as_ref().and_then(std::io::Error::raw_os_error).is_some_and(|e| {
                e == rustix::io::Errno::NOSPC.raw_os_error() || e == rustix::io::Errno::DQUOT.raw_os_error()
            }) {
                "the filesystem is full"
            } else {
                "this host's filesystem failed (not the archive: it will be tried again)"
            };
            anyhow::Error::new(source).context(format!("unpacking {} into {where_}: {what}", archive.display()))
        }
        unpack::Refusal::Stopped => match crate::base::progress::interrupted() {
            Some(crate::base::progress::Interrupt::Cancel(why)) => anyhow::Error::new(source)
                .context(format!("cancelled while unpacking by an operator's request ({why}); nothing was activated")),
            _ => Error::Interrupted { app: app.name.clone(), step: "the unpack".to_owned() }.into(),
        },
        _ => Error::ArchiveRefused { archive: archive.to_owned(), source: Box::new(source) }.into(),
    }
}

/// Refuses early when the filesystem cannot hold the release plus the configured reserve. The unpacked size is
/// the zstd frame's declared content size when the archive has one, else the archive size (a lower bound).
fn preflight_space(app: &App, artifact: &Artifact) -> anyhow::Result<()> {
    let head = artifact.head(18);
    let declared = zstd::zstd_safe::get_frame_content_size(&head).ok().flatten();
    let estimate = declared.unwrap_or(artifact.size).min(app.cfg.limits.max_unpacked);
    let needed = estimate.saturating_add(app.cfg.limits.reserve);
    let available = app.store.free_space()?;
    if available < needed {
        return Err(Error::NoSpace {
            path: app.store.root().to_owned(),
            available: bytesize::ByteSize(available).display().iec().to_string(),
            needed: bytesize::ByteSize(needed).display().iec().to_string(),
        }
        .into());
    }
    Ok(())
}
