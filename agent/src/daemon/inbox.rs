//! The local inbox of an app: complete drops (`NAME.json`, its `.minisig` and the archive it names) are accepted
//! like channel manifests, deployed and removed; what can never be a drop is set aside as `NAME.refused`. Files of
//! the inbox are read without links, without blocking and with a size cap, never on the async thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::app::App;
use crate::base::fsutil;
use crate::base::progress::Worker;
use crate::engine::pull::{self, Polled};
use crate::source::bucket::Source;

use super::blocking;
use super::worker::{converge, Converged, Memory};

/// Watches `dir` for new files; each event wakes the worker. The watcher stops when dropped.
pub(super) fn watch_inbox(app: &str, dir: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::error!("{app}: inbox {}: {e}", dir.display());
        return None;
    }
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| e.kind.is_create() || e.kind.is_modify()) {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::error!("{app}: cannot watch inbox {}: {e}", dir.display()))
    .ok()?;
    w.watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| tracing::error!("{app}: cannot watch inbox {}: {e}", dir.display()))
        .ok()?;
    Some(w)
}

/// A complete drop found in the inbox: the manifest and its signature read (nothing of them trusted yet).
pub(super) struct Drop {
    manifest: PathBuf,
    sig_path: PathBuf,
    bytes: Vec<u8>,
    sig: String,
    artifact: Option<PathBuf>,
}

/// What a look at the inbox found: complete drops, and files that can never be a drop (set aside).
#[derive(Default)]
pub(super) struct InboxScan {
    drops: Vec<Drop>,
    set_aside: Vec<(PathBuf, String)>,
}

/// Lists the inbox and reads each drop's manifest and signature. Blocking (runs off the async thread); every file
/// is opened without following links and without blocking, regular files only, at most [`fsutil::SMALL_MAX`]
/// bytes: a FIFO, a link to /dev/zero or a huge file in the inbox is set aside, never waited on or read whole.
pub(super) fn look_at_inbox(dir: &Path) -> InboxScan {
    let mut scan = InboxScan::default();
    let Ok(read) = std::fs::read_dir(dir) else { return scan };
    let mut manifests: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && name.ends_with(".json")
        })
        .collect();
    manifests.sort();
    for m in manifests {
        let mut sig_path = m.clone().into_os_string();
        sig_path.push(".minisig");
        let sig_path = PathBuf::from(sig_path);
        let bytes = match fsutil::read_small(&m) {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(why) => {
                scan.set_aside.push((m, why));
                continue;
            }
        };
        let sig = match fsutil::read_small(&sig_path) {
            Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
            // Not there yet: the drop is incomplete.
            Ok(None) => continue,
            Err(why) => {
                scan.set_aside.push((m, format!("its signature {}: {why}", sig_path.display())));
                continue;
            }
        };
        // Only to see whether the archive has arrived yet; nothing of it is trusted before the signature.
        let artifact = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("artifact").and_then(|a| a.as_str()).map(str::to_owned))
            .and_then(|a| Path::new(&a).file_name().map(|n| dir.join(n)));
        if artifact.as_ref().is_some_and(|a| std::fs::symlink_metadata(a).is_err()) {
            continue;
        }
        scan.drops.push(Drop { manifest: m, sig_path, bytes, sig, artifact });
    }
    scan
}

/// Renames an inbox file `NAME.refused`, for a person to look at; the worker never looks at it again.
pub(super) fn set_aside(m: &Path) {
    let mut refused = m.to_path_buf().into_os_string();
    refused.push(".refused");
    let _ = std::fs::rename(m, &refused);
}

/// Handles complete drops in the inbox: `NAME.json`, `NAME.json.minisig` and the archive the manifest names.
/// Each is accepted like a channel manifest, deployed, then removed; a refused manifest is renamed
/// `NAME.json.refused` (and stays, for a person to look at). No file of the inbox is touched on the async thread.
pub(super) async fn scan_inbox(app: &App, dir: &Path, src: Option<&Source>, worker: &Arc<Worker>, mem: &mut Memory) {
    let d = dir.to_owned();
    let Ok(scan) = blocking(worker, move || Ok(look_at_inbox(&d))).await else { return };
    for (m, why) in scan.set_aside {
        tracing::warn!("{}: inbox: {} set aside: {why}", app.name, m.display());
        let m2 = m.clone();
        let _ = blocking(worker, move || {
            set_aside(&m2);
            Ok(())
        })
        .await;
        let text = format!("{} inbox: refused {}: {why}", fsutil::now_rfc3339(), m.display());
        worker.set_refusal(Some(text.clone()));
        worker.set_poll(text);
    }
    for drop in scan.drops {
        let m = drop.manifest.clone();
        let from = crate::source::origin::Origin::Inbox(m.clone());
        let (a, b, s, f) = (app.clone(), drop.bytes, drop.sig, from.clone());
        let verdict = blocking(worker, move || Ok(pull::accept_under_lock(&a, &b, &s, &f))).await;
        // A drop leaves the inbox once what it asks for is settled: deployed, rolled back, or refused for good; a
        // busy app or a pin keeps it for the next scan.
        let done = match verdict {
            Ok(Ok(Polled::Accepted { .. })) => converge(app, src, worker, mem).await == Converged::Settled,
            Ok(Ok(_)) => true,
            Ok(Err(pull::AcceptError::Refused(r))) => {
                let m2 = m.clone();
                let _ = blocking(worker, move || {
                    set_aside(&m2);
                    Ok(())
                })
                .await;
                let text = format!("{} inbox: refused {}: {}", fsutil::now_rfc3339(), m.display(), r.reason);
                worker.set_refusal(Some(text.clone()));
                worker.set_poll(text);
                false
            }
            Ok(Err(pull::AcceptError::Other(e))) | Err(e) => {
                tracing::warn!("{}: inbox {}: {e:#}; trying again later", app.name, m.display());
                false
            }
        };
        if done {
            let files: Vec<PathBuf> =
                [Some(m.clone()), Some(drop.sig_path), drop.artifact].into_iter().flatten().collect();
            let _ = blocking(worker, move || {
                for p in files {
                    let _ = std::fs::remove_file(p);
                }
                Ok(())
            })
            .await;
            worker.set_poll(format!("{} inbox: took {}", fsutil::now_rfc3339(), m.display()));
        }
    }
}
