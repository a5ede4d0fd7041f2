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

/// Where agents note the mount points they froze, one file per agent process
/// (`frozen.<pid>`), so that an agent killed while they were frozen has them thawed by the
/// next agent that starts ([`recover`]). On tmpfs: never itself frozen.
pub const RECORD_DIR: &str = "/run/lifeboat-agent";

/// This process's record.
fn record_path() -> PathBuf {
    Path::new(RECORD_DIR).join(format!("frozen.{}", std::process::id()))
}

/// Whether process `pid` is a running lifeboat-agent (its record is then its own business).
fn agent_alive(pid: u32) -> bool {
    pid != std::process::id()
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim_end() == "lifeboat-agent")
}

/// Thaws what `held` still holds; `fired`, if given, is set first, under the same lock, so
/// whoever thaws after this sees it (the watchdog's thaw is never missed).
fn thaw_list(held: &Held, fired: Option<&AtomicBool>) -> usize {
    let mut g = held.lock().unwrap_or_else(|e| e.into_inner());
    let n = g.len();
    if n > 0
        && let Some(f) = fired
    {
        f.store(true, Ordering::SeqCst);
    }
    for (path, fd) in g.drain(..).rev() {
        if let Err(e) = ioctl(&fd, false) {
            tracing::error!(mount = %path.display(), "cannot thaw the filesystem: {e}; thaw it by hand with `fsfreeze -u {}`", path.display());
        }
    }
    let _ = std::fs::remove_file(record_path());
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

/// Thaws the filesystems agents froze and could not thaw (they were killed), from their
/// records in [`RECORD_DIR`] — never those of an agent still running (several agents may
/// share a host, each in the middle of its own cut). Call it at start, before anything is
/// frozen.
pub fn recover() {
    let Ok(dir) = std::fs::read_dir(RECORD_DIR) else { return };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `frozen` alone is the record of an agent from before records were per process.
        let pid = match name.strip_prefix("frozen.") {
            Some(p) => match p.parse::<u32>() {
                Ok(p) => Some(p),
                Err(_) => continue,
            },
            None if name == "frozen" => None,
            None => continue,
        };
        if pid.is_some_and(agent_alive) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
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
                Err(e) => {
                    tracing::error!(mount = line, "cannot thaw: {e}; run `fsfreeze -u {line}`")
                }
            }
        }
        let _ = std::fs::remove_file(e.path());
    }
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
        let _ = std::fs::create_dir_all(RECORD_DIR);
        let record = record_path();
        std::fs::write(&record, list)
            .map_err(|e| format!("cannot write {} before freezing: {e}", record.display()))?;
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
        let _ = std::fs::remove_file(record_path());
    } else {
        let _ = std::fs::write(record_path(), ours);
    }
    if frozen.n > 0 {
        let watched = held.clone();
        std::thread::Builder::new()
            .name("lifeboat-thaw".into())
            .spawn(move || {
                std::thread::sleep(deadline);
                if thaw_list(&watched, Some(&fired)) > 0 {
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
        thaw_list(&self.held, None);
        d
    }

    /// Thaws everything; returns how long writes were held, and whether the watchdog had
    /// thawed them already (read after the thaw, so a watchdog thaw is never missed).
    pub fn thaw_checked(self) -> (Duration, bool) {
        let fired = self.fired.clone();
        let d = self.thaw();
        (d, fired.load(Ordering::SeqCst))
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
        thaw_list(&self.held, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_other_running_agents_records_are_left_alone() {
        // This test process is not a lifeboat-agent, and an agent's own record is never
        // "someone else's".
        assert!(!agent_alive(std::process::id()));
        assert!(
            !agent_alive(1)
                || std::fs::read_to_string("/proc/1/comm").unwrap().trim() == "lifeboat-agent"
        );
        assert!(!agent_alive(u32::MAX));
        assert!(
            record_path().to_string_lossy().ends_with(&format!("frozen.{}", std::process::id()))
        );
    }
}
