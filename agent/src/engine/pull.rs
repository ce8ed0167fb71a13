//! From a signed manifest to a deploy: fetch the channel manifest (conditionally), accept it under the app's lock
//! (signature, app, channel, sequence, expiry; the accepted sequence is saved durably), fetch the artifact and
//! hand it to the ordinary deploy path. Used by the daemon's workers and by `deploy APP --version V`.

use crate::source::origin::Origin;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::app::App;
use crate::error::Error;
use crate::source::bucket::{Fetched, Source};
use crate::source::manifest::{self, Accepted, Verdict};
use crate::source::SourceError;

/// What one poll of the channel found.
#[derive(Debug)]
pub enum Polled {
    /// 304: nothing changed since the last ETag.
    Unchanged,
    /// No manifest published for the channel.
    Missing,
    /// A manifest was fetched and verified: a new one was accepted, or it was the one already accepted.
    Accepted { version: String, new: bool },
    /// A manifest was fetched and refused.
    Refused { reason: String },
}

pub fn channel_key(channel: &str) -> String {
    format!("channels/{channel}.json")
}

/// The URL of the app's channel manifest, redacted (for status and messages).
pub fn channel_url(app: &App) -> String {
    let base = app.cfg.source.as_deref().unwrap_or("").trim_end_matches('/');
    crate::base::redact::url(&format!("{base}/{}", channel_key(&app.cfg.channel)))
}

/// Fetches the channel manifest unless its ETag is `etag`; accepts it under the lock. `etag` is updated to what
/// should be sent next time (left alone when the verdict is worth fetching again).
pub async fn poll_channel(app: &App, src: &Source, etag: &mut Option<String>) -> Result<Polled, Error> {
    let key = channel_key(&app.cfg.channel);
    let (bytes, new_etag) = match src.fetch_small(&key, etag.as_deref()).await? {
        Fetched::NotModified => return Ok(Polled::Unchanged),
        Fetched::Missing => {
            *etag = None;
            return Ok(Polled::Missing);
        }
        Fetched::Body { bytes, etag } => (bytes, etag),
    };
    let sig = match src.fetch_small(&format!("{key}.minisig"), None).await? {
        Fetched::Body { bytes, .. } => String::from_utf8_lossy(&bytes).into_owned(),
        _ => return Ok(Polled::Refused { reason: format!("{} has no signature", src.describe(&key)) }),
    };
    let from = Origin::Channel(src.describe(&key));
    let app2 = app.clone();
    let verdict = tokio::task::spawn_blocking(move || accept_under_lock(&app2, &bytes, &sig, &from))
        .await
        .map_err(|e| SourceError::local(&src.describe(&key), format!("accepting the manifest: {e}")))?;
    match verdict {
        Ok(polled) => {
            *etag = new_etag;
            Ok(polled)
        }
        Err(AcceptError::Refused(r)) => {
            if !r.retry {
                *etag = new_etag;
            }
            Ok(Polled::Refused { reason: r.reason })
        }
        Err(AcceptError::Other(e)) => Err(SourceError::local(&src.describe(&key), format!("{e:#}")).into()),
    }
}

#[derive(Debug)]
pub enum AcceptError {
    Refused(manifest::Refused),
    /// Lock busy, state unreadable: try again later.
    Other(anyhow::Error),
}

/// Verifies a manifest and, when it is new, saves it as the app's accepted manifest (under the app's lock, so the
/// sequence check and the write are one step). Refusals are logged with their reason.
pub fn accept_under_lock(app: &App, bytes: &[u8], sig: &str, from: &Origin) -> Result<Polled, AcceptError> {
    // The signature is checked before anything else is believed, and before the lock is taken.
    if let Err(r) = manifest::verify_signature(bytes, sig, &app.trusted_keys) {
        tracing::warn!("{}: refused manifest {from}: {}", app.name, r.reason);
        return Err(AcceptError::Refused(r));
    }
    let _lock = app.lock(Duration::from_secs(2), "accept a manifest").map_err(AcceptError::Other)?;
    let mut state = app.journal().map_err(AcceptError::Other)?;
    let now = SystemTime::now();
    match manifest::check(
        bytes,
        &app.name,
        &app.cfg.channel,
        state.channel.as_ref(),
        now,
        app.cfg.max_manifest_lifetime,
    ) {
        Ok(Verdict::Same) => Ok(Polled::Accepted {
            version: state.channel.as_ref().map_or(String::new(), |c| c.version.to_string()),
            new: false,
        }),
        Ok(Verdict::New(m)) => {
            let accepted = m.accepted(from.clone()).map_err(AcceptError::Other)?;
            tracing::info!(
                "{}: accepted manifest {from}: version {} (sequence {})",
                app.name,
                accepted.version,
                accepted.sequence
            );
            let mut ev = app.event(crate::statedir::history::Action::Accept);
            ev.version = Some(accepted.version.to_string());
            ev.previous = state.channel.as_ref().map(|c| c.version.to_string());
            ev.reason = Some(format!("manifest {from}, sequence {}", accepted.sequence));
            state.channel = Some(accepted);
            let mut tl = crate::base::timeline::Timeline::new(false);
            app.recorded(ev, &mut tl, |_, _| state.save(None)).map_err(AcceptError::Other)?;
            Ok(Polled::Accepted { version: m.version, new: true })
        }
        Err(r) => {
            tracing::warn!("{}: refused manifest {from}: {}", app.name, r.reason);
            Err(AcceptError::Refused(r))
        }
    }
}

/// Where the artifact of an accepted manifest is, fetching it when it comes from the bucket. `inbox` is the
/// directory an inbox manifest came from.
/// `progress` hears (bytes so far, size) while it downloads; the result says how long it took and how many bytes
/// came over the network (none for an inbox drop, or an artifact already downloaded). With `delta` (one the
/// manifest names, see [`crate::engine::plan::delta_base`]), that delta is fetched instead of the artifact.
pub async fn fetch_artifact(
    app: &App,
    src: Option<&Source>,
    want: &Accepted,
    delta: Option<&crate::source::manifest::Delta>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(PathBuf, Option<crate::engine::deploy::Fetched>), Error> {
    if let Some(dir) = want.from.inbox_dir() {
        let name = Path::new(&want.artifact).file_name().unwrap_or_default();
        return Ok((dir.join(name), None));
    }
    let src =
        src.ok_or_else(|| SourceError::local(&want.from.to_string(), "the app has no `source` configured any more"))?;
    let started = std::time::Instant::now();
    let got = std::sync::atomic::AtomicU64::new(0);
    let first = std::sync::atomic::AtomicU64::new(u64::MAX);
    let track = |n: u64, total: u64| {
        // The bytes of this run only: a resumed download starts from what an earlier run left.
        let _ = first.compare_exchange(
            u64::MAX,
            n,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
        got.store(n, std::sync::atomic::Ordering::Relaxed);
        progress(n, total);
    };
    let (rel, sha256, size) = match delta {
        Some(d) => (&d.artifact, &d.sha256, d.size),
        None => (&want.artifact, &want.sha256, want.size),
    };
    let path = src.download(rel, &app.downloads_dir(), sha256, size, &track).await?;
    let bytes = got
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(first.load(std::sync::atomic::Ordering::Relaxed).min(size));
    let ms = started.elapsed().as_millis() as u64;
    let detail = format!(
        "{} of {} from {}{}",
        bytesize::ByteSize(bytes).display().iec(),
        bytesize::ByteSize(size).display().iec(),
        src.describe(rel),
        delta.map_or(String::new(), |d| format!(
            " (the delta from {}; the release is {})",
            d.from,
            bytesize::ByteSize(want.size).display().iec()
        ))
    );
    let timing = crate::base::timeline::Timing { step: "download".to_owned(), ms, detail: Some(detail) };
    Ok((path, Some(crate::engine::deploy::Fetched { timing, bytes })))
}

/// A terminal line that shows a download's progress (stderr, only when it is a terminal), at most 4 times a
/// second.
pub fn terminal_progress(what: String) -> impl Fn(u64, u64) + Sync {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let last = std::sync::Mutex::new(None::<std::time::Instant>);
    move |n, total| {
        if !tty {
            return;
        }
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if n < total && last.is_some_and(|t| t.elapsed() < std::time::Duration::from_millis(250)) {
            return;
        }
        *last = Some(std::time::Instant::now());
        let pct = n.saturating_mul(100).checked_div(total).unwrap_or(100);
        crate::base::progress::note_inline!(
            "\r  {what}: {} of {} ({pct}%){}",
            bytesize::ByteSize(n).display().iec(),
            bytesize::ByteSize(total).display().iec(),
            if n >= total { "\n" } else { "" }
        );
    }
}

/// `deploy APP --version V` without `--file`: a release already on disk is deployed from disk (no network);
/// otherwise the channel manifest is fetched (and accepted if new), and V is fetched only if a signed manifest
/// names it: nothing unsigned is ever deployed from the bucket.
pub fn deploy_version(
    app: &App,
    v: &crate::base::version::Version,
    force: bool,
    reason: Option<String>,
    wait: Duration,
    print: bool,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<crate::engine::deploy::DeployOutcome> {
    let mut req = crate::engine::deploy::DeployRequest {
        archive: None,
        expected: None,
        version: v.clone(),
        force,
        reason,
        fetched: None,
        delta: None,
        epoch: None,
    };
    let state = app.load_state()?;
    if app.store.on_disk()?.contains(v) && state.releases.contains_key(v) {
        return crate::engine::deploy::deploy(app, &req, wait, print);
    }
    let Some(url) = app.cfg.source.clone() else {
        return Err(Error::Usage(format!(
            "`{v}` is not on disk and app `{}` has no `source` to fetch it from; pass --file ARCHIVE",
            app.name
        ))
        .into());
    };
    // The delta the manifest names when its base is here; the full artifact if the delta fails in any way.
    let mut use_delta = true;
    // Downloads that were not used (a delta that did not assemble, or did not arrive whole).
    let mut unused: Vec<crate::engine::deploy::Fetched> = Vec::new();
    loop {
        let fetched = rt.block_on(async {
            let src = Source::open(&url, &crate::source::bucket::Options::of(&app.cfg))?;
            let refusal = match poll_channel(app, &src, &mut None).await {
                Ok(Polled::Refused { reason }) => Some(format!("the channel's manifest was refused: {reason}")),
                Ok(Polled::Missing) => {
                    Some(format!("no manifest is published at {}", src.describe(&channel_key(&app.cfg.channel))))
                }
                Ok(_) => None,
                // Busy (the daemon holds the lock) or the bucket is away: the manifest accepted before still counts.
                Err(e) => {
                    Some(format!("the channel's manifest could not be refreshed: {}", crate::base::chain::text(&e)))
                }
            };
            if let Some(r) = &refusal {
                crate::base::progress::note!("{}: {r}", app.name);
            }
            let state = app.load_state()?;
            let on_disk = app.store.on_disk()?;
            match &state.channel {
                Some(c) if c.version == *v => {
                    let delta = crate::engine::plan::delta_base(&state, &on_disk, c).filter(|_| use_delta).cloned();
                    let show = terminal_progress(format!("downloading {v}"));
                    let full = crate::engine::deploy::Promise { sha256: c.sha256.clone(), size: c.size };
                    let (path, took) = match fetch_artifact(app, Some(&src), c, delta.as_ref(), &show).await {
                        Ok(got) => got,
                        Err(e) if delta.is_some() => {
                            crate::base::progress::note!(
                                "{}: cannot fetch the delta of {v} ({}); fetching the full artifact",
                                app.name,
                                crate::base::chain::text(&e)
                            );
                            return anyhow::Ok(None);
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let delta = delta.map(|d| {
                        let of = crate::engine::deploy::DeltaOf { base: d.from.clone(), release: full.clone() };
                        (of, crate::engine::deploy::Promise { sha256: d.sha256, size: d.size })
                    });
                    anyhow::Ok(Some((path, full, took, delta, c.epoch)))
                }
                other => Err(Error::NotPublished {
                    app: app.name.clone(),
                    version: v.to_string(),
                    channel: app.cfg.channel.clone(),
                    named: other.as_ref().map_or("nothing".to_owned(), |c| format!("`{}`", c.version)),
                    why: refusal.map(|r| format!(" ({r})")).unwrap_or_default(),
                }
                .into()),
            }
        })?;
        let Some((path, sha, took, delta, epoch)) = fetched else {
            use_delta = false;
            continue;
        };
        req.archive = Some(path.clone());
        req.epoch = epoch;
        let used_delta = delta.is_some();
        (req.expected, req.delta) = match delta {
            Some((of, file)) => (Some(file), Some(of)),
            None => (Some(sha), None),
        };
        req.fetched = took.clone().map(|t| t.after(&unused));
        let out = crate::engine::deploy::deploy(app, &req, wait, print);
        if path.starts_with(app.downloads_dir()) {
            let _ = std::fs::remove_file(&path);
        }
        match out {
            Err(e) if used_delta && refused_archive(&e) => {
                crate::base::progress::note!(
                    "{}: the delta of {v} was not used ({e:#}); fetching the full artifact",
                    app.name
                );
                use_delta = false;
                unused.extend(took);
            }
            out => return out,
        }
    }
}

/// Whether a deploy failed because its archive was refused or is not what its manifest says (not the host).
pub fn refused_archive(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<Error>(),
        Some(
            Error::ArchiveRefused { .. }
                | Error::Source(SourceError::Mismatch { .. } | SourceError::Refused { .. })
                | Error::VersionConflict { .. }
                | Error::InvalidDeclaration { .. }
                | Error::EpochMismatch { .. }
        )
    )
}
