//! Freezing the filesystems on a machine's disks for the instant of a cut.
//!
//! `FIFREEZE` makes a filesystem flush its dirty data and journal, wait for writes in
//! flight, and hold every new write until `FITHAW`: what the disk holds while frozen is a
//! clean filesystem (stronger than crash-consistent). Writes straight to a block device are
//! not held: a device with no mounted filesystem cannot be frozen (see `docs/agent.md`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::disk::Disk;
use crate::freespace::{open_mount_point, parse_mountinfo, read_partitions};

/// `FIFREEZE`: `_IOWR('X', 119, int)`.
const FIFREEZE: rustix::ioctl::Opcode = rustix::ioctl::opcode::read_write::<i32>(b'X', 119);
/// `FITHAW`: `_IOWR('X', 120, int)`.
const FITHAW: rustix::ioctl::Opcode = rustix::ioctl::opcode::read_write::<i32>(b'X', 120);

/// A filesystem mounted from one of the disks (or a partition of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted (a mount of its root when there is one).
    pub mount_point: PathBuf,
    /// Its device.
    pub major: u32,
    /// Its device.
    pub minor: u32,
    /// Its type (`ext4`, `xfs`, …).
    pub fs_type: String,
}

/// The filesystems mounted from `disks` or their partitions, once each.
pub fn mounts_of(disks: &[&Disk]) -> Vec<Mount> {
    let Ok(text) = std::fs::read("/proc/self/mountinfo") else { return Vec::new() };
    let entries = parse_mountinfo(&text);
    let mut devs = Vec::new();
    for d in disks {
        let Some((major, minor)) = d.device_number() else { continue };
        devs.push((major, minor));
        for p in read_partitions(&PathBuf::from(format!("/sys/dev/block/{major}:{minor}"))) {
            devs.push((p.major, p.minor));
        }
    }
    let mut out: Vec<Mount> = Vec::new();
    for (major, minor) in devs {
        let mut candidates: Vec<_> =
            entries.iter().filter(|m| (m.major, m.minor) == (major, minor)).collect();
        candidates.sort_by_key(|m| m.root.as_os_str() != "/");
        if let Some(m) = candidates.first()
            && !out.iter().any(|o| (o.major, o.minor) == (major, minor))
        {
            out.push(Mount {
                mount_point: m.mount_point.clone(),
                major,
                minor,
                fs_type: m.fs_type.clone(),
            });
        }
    }
    out
}

/// Filesystems held frozen; thawed by [`Frozen::thaw`], on drop, or by a watchdog thread
/// at the deadline given to [`freeze`] whatever the freezing thread is doing.
#[derive(Debug)]
pub struct Frozen {
    held: Held,
    since: Instant,
    n: usize,
    fired: Arc<AtomicBool>,
}

type Held = Arc<Mutex<Vec<(PathBuf, OwnedFd)>>>;

/// Where the agent notes the mount points it froze, so that an agent killed while they were
/// frozen thaws them when it starts again ([`recover`]). On tmpfs: never itself frozen.
pub const RECORD: &str = "/run/lifeboat-agent/frozen";

fn thaw_list(held: &Held) -> usize {
    let mut g = held.lock().unwrap_or_else(|e| e.into_inner());
    let n = g.len();
    for (path, fd) in g.drain(..).rev() {
        if let Err(e) = ioctl(&fd, false) {
            tracing::error!(mount = %path.display(), "cannot thaw the filesystem: {e}; thaw it by hand with `fsfreeze -u {}`", path.display());
        }
    }
    let _ = std::fs::remove_file(RECORD);
    n
}

fn ioctl(fd: &OwnedFd, op: bool) -> rustix::io::Result<()> {
    // SAFETY: FIFREEZE and FITHAW take an int argument the kernel ignores; `Setter` passes a
    // pointer to its own i32. `fd` is a directory of the filesystem, as the ioctls require.
    unsafe {
        if op {
            rustix::ioctl::ioctl(fd, rustix::ioctl::Setter::<FIFREEZE, i32>::new(0))
        } else {
            rustix::ioctl::ioctl(fd, rustix::ioctl::Setter::<FITHAW, i32>::new(0))
        }
    }
}

/// Thaws the filesystems a previous agent froze and could not thaw (it was killed), from
/// [`RECORD`]. Call it at start, before anything is frozen.
pub fn recover() {
    let Ok(text) = std::fs::read_to_string(RECORD) else { return };
    for line in text.lines().filter(|l| !l.is_empty()) {
        let Ok(fd) = rustix::fs::open(
            line,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) else {
            continue;
        };
        match ioctl(&fd, false) {
            Ok(()) => {
                tracing::warn!(mount = line, "thawed a filesystem a previous agent left frozen")
            }
            Err(rustix::io::Errno::INVAL) => {} // not frozen
            Err(e) => tracing::error!(mount = line, "cannot thaw: {e}; run `fsfreeze -u {line}`"),
        }
    }
    let _ = std::fs::remove_file(RECORD);
}

/// Freezes `mounts` in order; one that cannot be frozen (a filesystem without freeze
/// support, such as vfat) is skipped with a note, and the capture's write check covers it.
/// A watchdog thaws everything `deadline` after the last freeze if nobody did, and says so
/// through [`Frozen::fired`].
pub fn freeze(mounts: &[Mount], deadline: Duration) -> Result<Frozen, String> {
    let held: Held = Arc::default();
    let fired = Arc::new(AtomicBool::new(false));
    let mut frozen =
        Frozen { held: held.clone(), since: Instant::now(), n: 0, fired: fired.clone() };
    let mut fds = Vec::new();
    for m in mounts {
        fds.push((m, open_mount_point(&m.mount_point, m.major, m.minor)?));
    }
    if !fds.is_empty() {
        // Noted before anything is frozen (the record is on tmpfs).
        let list: String =
            fds.iter().map(|(m, _)| format!("{}\n", m.mount_point.display())).collect();
        if let Some(dir) = Path::new(RECORD).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(RECORD, list)
            .map_err(|e| format!("cannot write {RECORD} before freezing: {e}"))?;
    }
    // Flushed first, while writes still flow: FIFREEZE then has little dirty data left to
    // write while it holds new writes back, so the freeze is shorter.
    for (_, fd) in &fds {
        let _ = rustix::fs::syncfs(fd);
    }
    frozen.since = Instant::now();
    for (m, fd) in fds {
        match ioctl(&fd, true) {
            Ok(()) => {
                held.lock().unwrap_or_else(|e| e.into_inner()).push((m.mount_point.clone(), fd));
            }
            // Frozen already, by an administrator or another tool: it holds still for us,
            // and thawing it is not ours to do.
            Err(rustix::io::Errno::BUSY) => {}
            Err(rustix::io::Errno::OPNOTSUPP) => {
                tracing::debug!(mount = %m.mount_point.display(), fs = m.fs_type, "this filesystem cannot be frozen; the capture's write check covers it");
                continue;
            }
            Err(e) => {
                return Err(format!(
                    "cannot freeze {} ({}): {e}",
                    m.mount_point.display(),
                    m.fs_type
                ));
            }
        }
        frozen.n += 1;
    }
    // The record keeps only what this agent froze: a freeze someone else holds is theirs.
    let ours: String = held
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(p, _)| format!("{}\n", p.display()))
        .collect();
    if ours.is_empty() {
        let _ = std::fs::remove_file(RECORD);
    } else {
        let _ = std::fs::write(RECORD, ours);
    }
    if frozen.n > 0 {
        let watched = held.clone();
        std::thread::Builder::new()
            .name("lifeboat-thaw".into())
            .spawn(move || {
                std::thread::sleep(deadline);
                if thaw_list(&watched) > 0 {
                    fired.store(true, Ordering::SeqCst);
                    tracing::error!(?deadline, "filesystems were still frozen at the deadline: thawed them; that cut is abandoned");
                }
            })
            .map_err(|e| format!("cannot start the thaw watchdog: {e}"))?;
    }
    Ok(frozen)
}

impl Frozen {
    /// Thaws everything; returns how long writes were held: from the first `FIFREEZE` call
    /// (which flushes dirty data while new writes already wait) to the thaw.
    pub fn thaw(self) -> Duration {
        let d = self.since.elapsed();
        thaw_list(&self.held);
        d
    }

    /// Whether the watchdog thawed the filesystems (the capture may not be consistent).
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// How many filesystems were frozen.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        thaw_list(&self.held);
    }
}
