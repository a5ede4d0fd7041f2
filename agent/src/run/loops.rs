//! The two loops of `run`: the cycle thread, which runs a cycle every interval (and the
//! group's rounds), and the async side, which runs the sender and watches the signals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::group_loop::GroupLoop;
use super::{RunError, RunOptions};
use crate::cycle::{CycleError, CycleOutcome, Cycler};
use crate::journal::Journal;
use crate::sender::Sender;

/// What the cycle thread tells the async side.
#[derive(Debug)]
pub(super) enum CycleEvent {
    Done,
    Skipped,
    Failed(CycleError),
}

/// The async side: signals, the sender, and `--once` completion.
pub(super) async fn supervise(
    journal: Arc<Journal>,
    sender: Sender,
    stop: Arc<AtomicBool>,
    mut events: mpsc::UnboundedReceiver<CycleEvent>,
    requests: std::sync::mpsc::Sender<()>,
    opts: RunOptions,
) -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |kind, what| signal(kind).map_err(|source| RunError::Runtime { what, source });
    let mut sigterm = sig(SignalKind::terminate(), "install the SIGTERM handler")?;
    let mut sigint = sig(SignalKind::interrupt(), "install the SIGINT handler")?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut sender_task = tokio::spawn(sender.run(shutdown_rx));
    let mut journal_changed = journal.subscribe();
    // In --once mode: a cycle completed and the journal is to drain.
    let mut draining = false;
    let mut events_open = true;

    let outcome = loop {
        if opts.once && draining && journal.is_empty() {
            let mut resync = false;
            for d in 0..journal.disk_count() {
                resync |= journal.resync_requested(d)?.is_some();
            }
            if !resync {
                tracing::info!("everything is acknowledged by the appliance: done");
                break Ok(());
            }
            tracing::info!("the appliance asked for a resync meanwhile: one more cycle");
            draining = false;
            let _ = requests.send(());
        }
        tokio::select! {
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: stopping after the current batch; nothing is lost");
                break Ok(());
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: stopping after the current batch; nothing is lost");
                break Ok(());
            }
            r = &mut sender_task => {
                break match r {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(RunError::Runtime {
                        what: "run the sender",
                        source: std::io::Error::other(e.to_string()),
                    }),
                };
            }
            ev = events.recv(), if events_open => match ev {
                Some(CycleEvent::Done) => draining = opts.once,
                Some(CycleEvent::Skipped) => {
                    if opts.once {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = requests.send(());
                    }
                }
                Some(CycleEvent::Failed(e)) => {
                    if opts.once {
                        break Err(e.into());
                    }
                }
                None => events_open = false,
            },
            _ = journal_changed.changed() => {}
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = shutdown_tx.send(true);
    if !sender_task.is_finished() {
        match tokio::time::timeout(Duration::from_secs(660), sender_task).await {
            Ok(Ok(Err(e))) => tracing::warn!("sender stopped with an error: {e}"),
            Ok(_) => {}
            Err(_) => tracing::warn!(
                "the batch in flight did not finish in time; it is resent at the next start"
            ),
        }
    }
    outcome
}

/// The cycle thread: a cycle every `interval` (or, with `once`, one at start and one per
/// request), until `stop`.
pub(super) fn cycle_loop(
    mut cycler: Cycler,
    interval: Arc<AtomicU64>,
    once: bool,
    stop: &AtomicBool,
    events: &mpsc::UnboundedSender<CycleEvent>,
    requests: &std::sync::mpsc::Receiver<()>,
    mut group: Option<GroupLoop>,
) {
    /// Cycles retried at once after a deferred point, before waiting for the interval.
    const MAX_QUICK_RETRIES: u32 = 5;
    let mut deferred = 0u32;
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if let Some(g) = group.as_mut() {
            g.run_due(&mut cycler);
        }
        let started = Instant::now();
        let event = match cycler.run_cycle() {
            Ok(CycleOutcome::Done { point, disks, duration, freeze, kind, quiesce_failed }) => {
                deferred = 0;
                let changed: u64 = disks.iter().map(|d| d.stats.bytes_changed()).sum();
                let read: u64 = disks.iter().map(|d| d.stats.bytes_read).sum();
                let batches: u64 = disks.iter().map(|d| d.batches).sum();
                let how = match (freeze, kind) {
                    (Some(_), lifeboat_wire::PointKind::App) => {
                        "app-consistent: quiescers held the applications, cut under a filesystem freeze"
                    }
                    (Some(_), _) if quiesce_failed.is_some() => {
                        "cut under a filesystem freeze; app-consistent was due but a quiescer failed"
                    }
                    (Some(_), _) => "cut under a filesystem freeze",
                    (None, _) => "crash-consistent only if the disks were quiet (no freeze)",
                };
                tracing::info!(
                    point,
                    changed_bytes = changed,
                    read_bytes = read,
                    batches,
                    duration_ms = crate::millis(duration),
                    freeze_ms = freeze.map(crate::millis),
                    kind = ?kind,
                    journal_bytes = cycler.journal().bytes(),
                    "cycle done: point {point} journaled on every disk ({how})"
                );
                CycleEvent::Done
            }
            Ok(CycleOutcome::Deferred { .. }) if deferred < MAX_QUICK_RETRIES => {
                // Try again soon rather than after a whole interval.
                deferred += 1;
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            Ok(CycleOutcome::Deferred { .. }) => {
                deferred = 0;
                CycleEvent::Skipped
            }
            Ok(CycleOutcome::Skipped { .. }) => CycleEvent::Skipped,
            Err(CycleError::Stopped) => return,
            Err(e) => {
                tracing::error!("cycle failed: {e}; nothing was lost, the next cycle retries");
                CycleEvent::Failed(e)
            }
        };
        let failed = matches!(event, CycleEvent::Failed(_));
        if events.send(event).is_err() || (once && failed) {
            return;
        }
        // Wait for the next start: the interval (daemon) or a request (--once).
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if once {
                match requests.recv_timeout(Duration::from_millis(100)) {
                    Ok(()) => break,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            if let Some(g) = group.as_mut() {
                g.run_due(&mut cycler);
            }
            let elapsed = started.elapsed();
            let interval = Duration::from_secs(interval.load(Ordering::Relaxed));
            if elapsed >= interval {
                break;
            }
            std::thread::sleep((interval - elapsed).min(Duration::from_millis(100)));
        }
    }
}
