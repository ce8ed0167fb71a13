//! One app's loop in the daemon: reconcile on start, then until the configuration changes or the daemon stops,
//! scan the inbox, poll the channel (saying a repeating trouble once), converge, check the current release while
//! idle, and sleep until the next poll, an inbox event or a reload. The steps themselves are in `worker` and
//! `inbox`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::app::App;
use crate::base::fsutil;
use crate::base::progress::Worker;
use crate::base::timeline::Timeline;
use crate::engine::pull::{self, Polled};
use crate::engine::reconcile;

use super::blocking;
use super::inbox::{scan_inbox, watch_inbox};
use super::worker::{converge, idle_health, open_source, Memory};

pub(super) async fn worker_loop(
    mut cfg_rx: watch::Receiver<(App, Duration)>,
    mut stop: watch::Receiver<bool>,
    worker: Arc<Worker>,
    ready: mpsc::Sender<()>,
) {
    let (mut app, mut poll) = cfg_rx.borrow_and_update().clone();
    {
        let a = app.clone();
        if let Err(e) = blocking(&worker, move || {
            let _lock = a.lock(Duration::from_secs(60), "reconcile")?;
            reconcile::reconcile(&a, &mut Timeline::new(false)).map(|_| ())
        })
        .await
        {
            tracing::error!("{}: reconcile on start failed: {e:#}", app.name);
        }
        let _ = ready.send(()).await;
    }
    let mut mem = Memory::default();
    loop {
        let src = open_source(&app);
        let (inbox_tx, mut inbox_rx) = mpsc::channel::<()>(1);
        let _watcher = app.cfg.inbox.as_deref().and_then(|dir| watch_inbox(&app.name, dir, inbox_tx));
        mem.etag = None;
        // Work until the configuration changes or the daemon stops.
        loop {
            if *stop.borrow() {
                return;
            }
            if let Some(dir) = app.cfg.inbox.clone() {
                scan_inbox(&app, &dir, src.as_ref(), &worker, &mut mem).await;
            }
            if let Some(src) = &src {
                let polled = pull::poll_channel(&app, src, &mut mem.etag).await;
                let now = fsutil::now_rfc3339();
                let url = pull::channel_url(&app);
                let (text, trouble) = match &polled {
                    Ok(Polled::Unchanged) => ("unchanged".to_owned(), None),
                    Ok(Polled::Missing) => {
                        let t = format!("no manifest is published at {url}");
                        (t.clone(), Some(t))
                    }
                    Ok(Polled::Accepted { version, new: true }) => {
                        worker.set_refusal(None);
                        (format!("accepted a new manifest: {version}"), None)
                    }
                    Ok(Polled::Accepted { version, new: false }) => (format!("manifest names {version}"), None),
                    Ok(Polled::Refused { reason }) => {
                        worker.set_refusal(Some(format!("{now} refused the manifest {url}: {reason}")));
                        (format!("refused the manifest: {reason}"), None)
                    }
                    Err(e) => {
                        let t = format!("poll failed ({url}): {}", crate::base::chain::text(e));
                        (t.clone(), Some(t))
                    }
                };
                mem.trouble.report(&app.name, trouble);
                worker.set_poll(format!("{now} {text}"));
                super::metrics::polled(&app.name, &polled);
            }
            if *stop.borrow() {
                return;
            }
            converge(&app, src.as_ref(), &worker, &mut mem).await;
            super::fleet::report(&app, src.as_ref(), &worker, &mut mem.fleet).await;
            if !*stop.borrow() {
                idle_health(&app, &worker).await;
            }
            let delay = poll.mul_f64(0.9 + fastrand::f64() * 0.2);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                Some(()) = inbox_rx.recv() => {
                    // Let a burst of renames settle.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                changed = cfg_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    (app, poll) = cfg_rx.borrow_and_update().clone();
                    break;
                }
                _ = stop.changed() => return,
            }
        }
    }
}
