//! Freezing the filesystems on a machine's disks for the instant of a cut.
//!
//! `FIFREEZE` makes a filesystem flush its dirty data and journal, wait for writes in
//! flight, and hold every new write until `FITHAW`: what the disk holds while frozen is a
//! clean filesystem (stronger than crash-consistent). Writes straight to a block device are
//! not held: a device with no mounted filesystem cannot be frozen (see `docs/agent.md`).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
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
    held: Arc<Mutex<Vec<(PathBuf, OwnedFd)>>>,
    since: Instant,
    n: usize,
}

type Held = Arc<Mutex<Vec<(PathBuf, OwnedFd)>>>;

fn thaw_list(held: &Held) -> usize {
    let mut g = held.lock().unwrap_or_else(|e| e.into_inner());
    let n = g.len();
    for (path, fd) in g.drain(..).rev() {
        if let Err(e) = ioctl(&fd, false) {
            tracing::error!(mount = %path.display(), "cannot thaw the filesystem: {e}; thaw it by hand with `fsfreeze -u {}`", path.display());
        }
    }
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

/// Freezes `mounts` in order. On a failure, thaws what it froze and says which one failed.
/// A watchdog thaws everything `deadline` after the first freeze if nobody did.
pub fn freeze(mounts: &[Mount], deadline: Duration) -> Result<Frozen, String> {
    let held: Held = Arc::default();
    let mut frozen = Frozen { held: held.clone(), since: Instant::now(), n: 0 };
    let mut fds = Vec::new();
    for m in mounts {
        fds.push((m, open_mount_point(&m.mount_point, m.major, m.minor)?));
    }
    if !fds.is_empty() {
        let watched = held.clone();
        std::thread::Builder::new()
            .name("lifeboat-thaw".into())
            .spawn(move || {
                std::thread::sleep(deadline);
                if thaw_list(&watched) > 0 {
                    tracing::error!(
                        ?deadline,
                        "filesystems were still frozen at the deadline: thawed them"
                    );
                }
            })
            .map_err(|e| format!("cannot start the thaw watchdog: {e}"))?;
    }
    for (m, fd) in fds {
        match ioctl(&fd, true) {
            Ok(()) => {
                held.lock().unwrap_or_else(|e| e.into_inner()).push((m.mount_point.clone(), fd));
            }
            // Frozen already, by an administrator or another tool: it holds still for us,
            // and thawing it is not ours to do.
            Err(rustix::io::Errno::BUSY) => {}
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
