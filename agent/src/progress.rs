//! What the agent is doing right now, per disk: shared by the cycle (which updates it from
//! the tracker's sink), the sender (which reports it to the appliance's dashboard) and the
//! terminal progress bar of the initial copy.

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lifeboat_api::Progress;

/// What a disk's cycle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The first copy of the disk to a blank replica.
    InitialCopy,
    /// A delta cycle.
    Delta,
    /// A cycle comparing the whole disk again (the appliance lost what the journal held).
    Resync,
}

impl Phase {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::InitialCopy => "initial-copy",
            Phase::Delta => "delta",
            Phase::Resync => "resync",
        }
    }
}

/// Progress of one disk's current (or last) cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskProgress {
    /// Initial copy or delta.
    pub phase: Phase,
    /// Bytes of the disk examined so far (the end of the last change seen; the whole disk
    /// once the collect finished).
    pub done_bytes: u64,
    /// The disk's size.
    pub total_bytes: u64,
    /// Bytes found changed and journaled this cycle.
    pub sent_bytes: u64,
    /// Whether the disk's collect is running.
    pub active: bool,
}

/// Progress of every disk; see the module documentation.
#[derive(Debug)]
pub struct ProgressBoard {
    disks: Mutex<Vec<Option<DiskProgress>>>,
    /// An alert for the appliance, not sent yet (the newest one wins).
    alert: Mutex<Option<lifeboat_api::AgentAlert>>,
}

impl ProgressBoard {
    /// A board for `disks` disks, none started.
    pub fn new(disks: u32) -> Self {
        Self { disks: Mutex::new(vec![None; disks as usize]), alert: Mutex::new(None) }
    }

    /// Keeps `alert` for the sender to pass on to the appliance.
    pub fn raise(&self, alert: lifeboat_api::AgentAlert) {
        *self.alert.lock().unwrap_or_else(|p| p.into_inner()) = Some(alert);
    }

    /// The alert not sent yet, if any (taken: raise it again if sending fails).
    pub fn take_alert(&self) -> Option<lifeboat_api::AgentAlert> {
        self.alert.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Vec<Option<DiskProgress>>) -> R) -> R {
        f(&mut self.disks.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A disk's collect starts.
    pub fn start(&self, disk: u32, phase: Phase, total_bytes: u64) {
        self.with(|d| {
            if let Some(slot) = d.get_mut(disk as usize) {
                *slot = Some(DiskProgress {
                    phase,
                    done_bytes: 0,
                    total_bytes,
                    sent_bytes: 0,
                    active: true,
                });
            }
        });
    }

    /// The collect reached `done` and journaled `sent` more bytes.
    pub fn advance(&self, disk: u32, done: u64, sent: u64) {
        self.with(|d| {
            if let Some(Some(p)) = d.get_mut(disk as usize) {
                p.done_bytes = p.done_bytes.max(done.min(p.total_bytes));
                p.sent_bytes += sent;
            }
        });
    }

    /// The disk's collect ended (`ok`: it covered the whole disk).
    pub fn finish(&self, disk: u32, ok: bool) {
        self.with(|d| {
            if let Some(Some(p)) = d.get_mut(disk as usize) {
                if ok {
                    p.done_bytes = p.total_bytes;
                }
                p.active = false;
            }
        });
    }

    /// Every disk's progress (None: no cycle started yet).
    pub fn snapshot(&self) -> Vec<Option<DiskProgress>> {
        self.with(|d| d.clone())
    }

    /// The progress as the API's [`Progress`] bodies, for the disks that started.
    pub fn reports(&self) -> Vec<Progress> {
        (0u32..)
            .zip(self.snapshot())
            .filter_map(|(i, p)| {
                p.map(|p| Progress {
                    disk: i,
                    phase: p.phase.as_str().to_string(),
                    done_bytes: p.done_bytes,
                    total_bytes: p.total_bytes,
                    sent_bytes: p.sent_bytes,
                })
            })
            .collect()
    }
}

/// The terminal's progress bars; log lines go through it so they print above the bar instead
/// of through it.
fn bars() -> &'static indicatif::MultiProgress {
    static BARS: OnceLock<indicatif::MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| {
        indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr())
    })
}

/// A `tracing` writer for stderr that hides the progress bar while a log line is printed.
/// Use it (see `main.rs`) when stderr is a terminal.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

/// One log line being written through [`LogWriter`].
#[derive(Debug, Default)]
pub struct LogLine(Vec<u8>);

impl std::io::Write for LogLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.0.is_empty() {
            let line = std::mem::take(&mut self.0);
            bars().suspend(|| std::io::stderr().write_all(&line))?;
        }
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> Self::Writer {
        LogLine::default()
    }
}

/// Draws the initial copy's progress bar (rate and ETA) on stderr until `stop` is set, when
/// stderr is a terminal; does nothing otherwise. Runs on its own thread.
pub fn spawn_bar(
    board: Arc<ProgressBoard>,
    stop: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(std::thread::spawn(move || {
        let mut bar: Option<indicatif::ProgressBar> = None;
        while !stop.load(Ordering::Relaxed) {
            let initial: Vec<DiskProgress> = board
                .snapshot()
                .into_iter()
                .flatten()
                .filter(|p| p.phase == Phase::InitialCopy)
                .collect();
            let active = initial.iter().any(|p| p.active);
            match (&bar, active) {
                (None, true) => {
                    let total: u64 = initial.iter().map(|p| p.total_bytes).sum();
                    let b = bars().add(indicatif::ProgressBar::new(total));
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    b.set_message("initial copy");
                    bar = Some(b);
                }
                (Some(b), false) => {
                    b.finish_and_clear();
                    bar = None;
                }
                _ => {}
            }
            if let Some(b) = &bar {
                b.set_length(initial.iter().map(|p| p.total_bytes).sum());
                b.set_position(initial.iter().map(|p| p.done_bytes).sum());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_tracks_and_reports() {
        let b = ProgressBoard::new(2);
        assert!(b.reports().is_empty());
        b.start(1, Phase::InitialCopy, 1000);
        b.advance(1, 400, 100);
        b.advance(1, 300, 50); // never backwards
        b.advance(1, 5000, 0); // never past the end
        let r = b.reports();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].disk, r[0].done_bytes, r[0].sent_bytes), (1, 1000, 150));
        assert_eq!(r[0].phase, "initial-copy");
        b.start(0, Phase::Delta, 10);
        b.finish(0, true);
        let s = b.snapshot();
        assert_eq!(s[0].as_ref().unwrap().done_bytes, 10);
        assert!(!s[0].as_ref().unwrap().active);
        assert_eq!(b.reports()[0].phase, "delta");
    }
}
