//! The free space of a mounted ext4 or XFS filesystem on a protected block device.
//!
//! A block the filesystem does not use holds nothing the replica needs. When the disk, or a
//! partition of it, is mounted here with ext4 or XFS, [`query`] asks the filesystem for its
//! free space with the `FS_IOC_GETFSMAP` ioctl and returns it as byte ranges of the disk
//! ([`FreeExtents`]), so the tracker neither reads nor sends them. Why that keeps the replica
//! right is in `docs/tracker.md` ("Free space of a mounted filesystem").
//!
//! Everything here is best effort. An image file, a disk that is not mounted (in this mount
//! namespace), another filesystem, an old kernel or a refused ioctl gives [`Unavailable`], and
//! the tracker reads the whole disk as before.
//!
//! How the filesystem is found: the disk's device number (`st_rdev`) is looked up in
//! `/proc/self/mountinfo`, as are those of its partitions (from sysfs, each with its start on
//! the disk). The mount point is opened as a directory and must be on that very device
//! (`st_dev`), so a mount stacked over it is never asked. Only records of that device
//! (`fmr_device`) whose owner is "free space" are used, clipped to the filesystem's device.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::disk::Disk;

/// At most this many free extents are kept per disk (16 bytes each: 4 MiB). Past it the
/// smallest extents are left to the scan; see [`FreeExtentsBuilder`].
pub const MAX_FREE_EXTENTS: usize = 1 << 18;

/// Filesystems whose free space is asked for: the ext4 driver (which also mounts ext2 and
/// ext3) and XFS implement `FS_IOC_GETFSMAP` and report free space as such.
const FS_TYPES: [&str; 4] = ["ext4", "ext3", "ext2", "xfs"];

/// One mounted filesystem whose free space was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeSource {
    /// The filesystem type from mountinfo, e.g. `ext4` or `xfs`.
    pub fs_type: String,
    /// Where it is mounted (the first usable mount of the device).
    pub mount_point: PathBuf,
    /// The partition's number when the filesystem is on a partition of the disk.
    pub partition: Option<u32>,
    /// Where the filesystem's device starts on the disk (0 for the whole disk).
    pub offset: u64,
    /// Free bytes the filesystem reported on its device, before alignment.
    pub free_bytes: u64,
}

impl fmt::Display for FreeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the mounted {} filesystem at {}", self.fs_type, self.mount_point.display())?;
        if let Some(n) = self.partition {
            write!(f, " (partition {n}, at offset {})", self.offset)?;
        }
        write!(f, ": {} free", human_bytes(self.free_bytes))
    }
}

/// The free space of a disk's mounted filesystems.
#[derive(Debug, Clone, Default)]
pub struct FreeSpace {
    /// The filesystems asked, in disk order.
    pub sources: Vec<FreeSource>,
    /// Their free space as disk offsets, aligned inwards and merged.
    pub extents: FreeExtents,
}

impl FreeSpace {
    /// A key naming the filesystems (type, mount point, offset) but not their free bytes, to
    /// tell when the mode changes between cycles.
    pub fn mode_key(&self) -> String {
        self.sources
            .iter()
            .map(|s| format!("{}@{}+{}", s.fs_type, s.mount_point.display(), s.offset))
            .collect::<Vec<_>>()
            .join(";")
    }
}

impl fmt::Display for FreeSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.sources.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

/// Why the free space of a disk is not known: the tracker reads the whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Asks the filesystems mounted on `disk` (or on its partitions) for their free space.
/// Extents are aligned inwards to `align` bytes (the tracker's block) and at most `cap` are
/// kept (the smallest are dropped first).
pub fn query(disk: &Disk, align: u64, cap: usize) -> Result<FreeSpace, Unavailable> {
    let Some((major, minor)) = disk.device_number() else {
        return Err(Unavailable(format!(
            "{} is an image file, not a block device (its holes are skipped instead)",
            disk.path().display()
        )));
    };
    let mountinfo = fs::read("/proc/self/mountinfo")
        .map_err(|e| Unavailable(format!("cannot read /proc/self/mountinfo: {e}")))?;
    let mounts = parse_mountinfo(&mountinfo);
    let mut targets = vec![Target { partition: None, major, minor, offset: 0, len: disk.size() }];
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    for p in read_partitions(&sys) {
        // A partition table the kernel read but that does not fit the disk: not trusted.
        if p.start.checked_add(p.len).is_some_and(|end| end <= disk.size()) {
            targets.push(Target {
                partition: Some(p.number),
                major: p.major,
                minor: p.minor,
                offset: p.start,
                len: p.len,
            });
        }
    }

    let mut builder = FreeExtentsBuilder::new(align, cap);
    let mut sources: Vec<(FreeSource, u64)> = Vec::new();
    // Why each target gave nothing; partitions that are simply not mounted are not worth it.
    let mut reasons = Vec::new();
    for t in &targets {
        match query_target(t, &mounts, align, cap) {
            Ok((source, extents)) => {
                for r in extents.ranges() {
                    builder.push(r.clone());
                }
                sources.push((source, t.len));
            }
            Err(Unavailable(reason)) => match t.partition {
                None => reasons.push(reason),
                Some(_) if reason.starts_with(NOT_MOUNTED) => {}
                Some(n) => reasons.push(format!("partition {n}: {reason}")),
            },
        }
    }
    if sources.is_empty() {
        return Err(Unavailable(reasons.join("; ")));
    }
    // Two mounted filesystems whose ranges of the disk overlap (a whole disk and one of its
    // partitions, overlapping partitions): their free space cannot both be right.
    sources.sort_by_key(|(s, _)| s.offset);
    if sources.windows(2).any(|w| w[0].0.offset + w[0].1 > w[1].0.offset) {
        return Err(Unavailable(
            "filesystems mounted on overlapping ranges of the disk; not trusting their free space"
                .to_string(),
        ));
    }
    Ok(FreeSpace {
        sources: sources.into_iter().map(|(s, _)| s).collect(),
        extents: builder.finish(),
    })
}

const NOT_MOUNTED: &str = "not mounted here";

/// The disk, or one of its partitions.
#[derive(Debug, Clone, Copy)]
struct Target {
    partition: Option<u32>,
    major: u32,
    minor: u32,
    /// Start on the disk.
    offset: u64,
    /// Length in bytes.
    len: u64,
}

fn query_target(
    t: &Target,
    mounts: &[MountEntry],
    align: u64,
    cap: usize,
) -> Result<(FreeSource, FreeExtents), Unavailable> {
    let mut candidates: Vec<&MountEntry> =
        mounts.iter().filter(|m| (m.major, m.minor) == (t.major, t.minor)).collect();
    if candidates.is_empty() {
        return Err(Unavailable(format!(
            "{NOT_MOUNTED} (device {}:{} is not in /proc/self/mountinfo)",
            t.major, t.minor
        )));
    }
    let fs_type = candidates[0].fs_type.clone();
    if !FS_TYPES.contains(&fs_type.as_str()) {
        return Err(Unavailable(format!(
            "mounted as {fs_type}; free space is asked of ext4 and XFS only"
        )));
    }
    // Prefer a mount of the filesystem's root (bind mounts of a subdirectory work too).
    candidates.sort_by_key(|m| m.root.as_os_str() != "/");
    let mut last_err = String::new();
    for m in candidates {
        let dir = match open_mount_point(&m.mount_point, t.major, t.minor) {
            Ok(d) => d,
            Err(e) => {
                last_err = e;
                continue;
            }
        };
        let mut builder = FreeExtentsBuilder::new(align, cap);
        let free = getfsmap_free(&dir, t.major, t.minor, t.len, FSMAP_RECORDS, |r| {
            builder.push(r.start + t.offset..r.end + t.offset)
        })
        .map_err(|e| {
            Unavailable(format!("FS_IOC_GETFSMAP on {} failed: {e}", m.mount_point.display()))
        })?;
        let source = FreeSource {
            fs_type: m.fs_type.clone(),
            mount_point: m.mount_point.clone(),
            partition: t.partition,
            offset: t.offset,
            free_bytes: free,
        };
        return Ok((source, builder.finish()));
    }
    Err(Unavailable(last_err))
}

/// Opens a mount point as a directory and checks that it is on device `major:minor` (not a
/// mount stacked over it, not a path replaced since mountinfo was read).
pub(crate) fn open_mount_point(path: &Path, major: u32, minor: u32) -> Result<OwnedFd, String> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open the mount point {}: {e}", path.display()))?;
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| format!("cannot stat the mount point {}: {e}", path.display()))?;
    let dev = st.st_dev;
    if (rustix::fs::major(dev), rustix::fs::minor(dev)) != (major, minor) {
        return Err(format!(
            "{} is not on device {major}:{minor} (another mount is stacked over it)",
            path.display()
        ));
    }
    Ok(fd)
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Major number of the mounted device.
    pub major: u32,
    /// Minor number of the mounted device.
    pub minor: u32,
    /// The directory of the filesystem mounted there (`/` unless a bind mount).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type, e.g. `ext4`.
    pub fs_type: String,
    /// The mount source, e.g. `/dev/sdb1`.
    pub source: String,
}

/// Parses `/proc/self/mountinfo` (see proc(5)): `id parent major:minor root mount-point
/// options [optional fields...] - fstype source super-options`, paths with `\ooo` octal
/// escapes. Malformed lines are skipped.
pub fn parse_mountinfo(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n').filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &[u8]) -> Option<MountEntry> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').filter(|f| !f.is_empty()).collect();
    if fields.len() < 10 {
        return None;
    }
    let devno = std::str::from_utf8(fields[2]).ok()?;
    let (major, minor) = devno.split_once(':')?;
    let (major, minor) = (major.parse().ok()?, minor.parse().ok()?);
    // Optional fields run from index 6 up to the "-" separator.
    let sep = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
    let fs_type = std::str::from_utf8(fields.get(sep + 1)?).ok()?.to_string();
    let source = String::from_utf8_lossy(&unescape(fields.get(sep + 2)?)).into_owned();
    Some(MountEntry {
        major,
        minor,
        root: PathBuf::from(OsStr::from_bytes(&unescape(fields[3]))),
        mount_point: PathBuf::from(OsStr::from_bytes(&unescape(fields[4]))),
        fs_type,
        source,
    })
}

/// Undoes mountinfo's `\ooo` escapes (space, tab, newline, backslash).
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 4 <= s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = s[i + 1..i + 4].iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// A partition of a disk, from sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The partition number (`sdb1`: 1).
    pub number: u32,
    /// Its device's major number.
    pub major: u32,
    /// Its device's minor number.
    pub minor: u32,
    /// Where it starts on the disk, in bytes.
    pub start: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// The partitions of the disk whose sysfs directory is `dir` (`/sys/dev/block/M:m`): its
/// subdirectories with a `partition` file; `start` and `size` are in 512-byte sectors
/// whatever the disk's sector size. Unreadable entries are skipped.
pub fn read_partitions(dir: &Path) -> Vec<Partition> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let read = |p: &Path, name: &str| -> Option<String> {
        fs::read_to_string(p.join(name)).ok().map(|s| s.trim().to_string())
    };
    let mut parts: Vec<Partition> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let p = e.path();
            let number = read(&p, "partition")?.parse().ok()?;
            let dev = read(&p, "dev")?;
            let (major, minor) = dev.split_once(':')?;
            let start: u64 = read(&p, "start")?.parse().ok()?;
            let size: u64 = read(&p, "size")?.parse().ok()?;
            Some(Partition {
                number,
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                start: start.checked_mul(512)?,
                len: size.checked_mul(512)?,
            })
        })
        .collect();
    parts.sort_by_key(|p| p.start);
    parts
}

// ---- FS_IOC_GETFSMAP, from <linux/fsmap.h> ----

/// `struct fsmap`: one mapping record, or a search key.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Fsmap {
    /// Device id (a `dev_t` in the kernel's `new_encode_dev` form when `FMH_OF_DEV_T`).
    fmr_device: u32,
    /// `FMR_OF_*`.
    fmr_flags: u32,
    /// Byte offset of the extent on the device.
    fmr_physical: u64,
    /// Owner: an inode number, or a special owner with `FMR_OF_SPECIAL_OWNER`.
    fmr_owner: u64,
    /// Byte offset in the owning file.
    fmr_offset: u64,
    /// Length in bytes.
    fmr_length: u64,
    fmr_reserved: [u64; 3],
}

/// `struct fsmap_head` without its flexible array of records.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct FsmapHead {
    fmh_iflags: u32,
    fmh_oflags: u32,
    /// Records the caller has room for.
    fmh_count: u32,
    /// Records the kernel filled in.
    fmh_entries: u32,
    fmh_reserved: [u64; 6],
    /// Low and high search keys.
    fmh_keys: [Fsmap; 2],
}

/// Records asked for per call (64 KiB of buffer).
const FSMAP_RECORDS: usize = 1024;

/// A `struct fsmap_head` followed by room for its records, as the kernel reads and fills it.
#[repr(C)]
struct FsmapQuery {
    head: FsmapHead,
    recs: [Fsmap; FSMAP_RECORDS],
}

const _: () = assert!(size_of::<Fsmap>() == 64);
const _: () = assert!(size_of::<FsmapHead>() == 192);
const _: () = assert!(std::mem::offset_of!(FsmapQuery, recs) == 192);

/// `FS_IOC_GETFSMAP`: `_IOWR('X', 59, struct fsmap_head)`.
const FS_IOC_GETFSMAP: rustix::ioctl::Opcode =
    rustix::ioctl::opcode::read_write::<FsmapHead>(b'X', 59);
const _: () = assert!(FS_IOC_GETFSMAP as u64 == 0xc0c0_583b);

/// `fmh_oflags`: `fmr_device` holds a device number.
const FMH_OF_DEV_T: u32 = 0x1;
/// `fmr_flags`: `fmr_owner` is a special owner, not an inode.
const FMR_OF_SPECIAL_OWNER: u32 = 0x10;
/// `fmr_flags`: the last record of the query.
const FMR_OF_LAST: u32 = 0x20;
/// `FMR_OWN_FREE`, `FMR_OWNER(0, 1)`: free space. (Owners of type 'X' and 'f' are XFS's and
/// ext4's own metadata, never free.)
const FMR_OWN_FREE: u64 = 1;

/// Decodes the kernel's `new_encode_dev` form of a device number.
fn decode_dev(d: u32) -> (u32, u32) {
    ((d & 0xfff00) >> 8, (d & 0xff) | ((d >> 12) & 0xfff00))
}

/// Runs `FS_IOC_GETFSMAP` over the whole filesystem open at `dir`, asking for `batch` records
/// per call (at most [`FSMAP_RECORDS`]), and calls `on_free` with each free extent of device
/// `major:minor`, clipped to `0 .. dev_len`. Returns the free bytes found. Follows the
/// kernel's convention: after each call the last record becomes the next low key, until a
/// record carries `FMR_OF_LAST` (or none comes back).
fn getfsmap_free(
    dir: &OwnedFd,
    major: u32,
    minor: u32,
    dev_len: u64,
    batch: usize,
    mut on_free: impl FnMut(Range<u64>),
) -> Result<u64, String> {
    let batch = batch.clamp(1, FSMAP_RECORDS);
    let mut q = Box::new(FsmapQuery {
        head: FsmapHead::default(),
        recs: [Fsmap::default(); FSMAP_RECORDS],
    });
    q.head.fmh_count = u32::try_from(batch)
        .map_err(|_| format!("{batch} records per call are over the 32-bit count"))?;
    q.head.fmh_keys[1] = Fsmap {
        fmr_device: u32::MAX,
        fmr_flags: u32::MAX,
        fmr_physical: u64::MAX,
        fmr_owner: u64::MAX,
        fmr_offset: u64::MAX,
        ..Fsmap::default()
    };
    let mut free = 0u64;
    let mut calls = 0u64;
    loop {
        q.head.fmh_entries = 0;
        q.head.fmh_oflags = 0;
        // SAFETY: FS_IOC_GETFSMAP reads a `struct fsmap_head` (the opcode's size) and writes
        // up to `fmh_count` records right after it. `FsmapQuery` is `#[repr(C)]`, its head
        // matches `struct fsmap_head` field for field (sizes and offsets asserted above) and
        // it has room for FSMAP_RECORDS >= `fmh_count` records at offset 192, where
        // `fmh_recs` starts. The buffer is exclusively borrowed for the call, and `dir` is an
        // open descriptor; a filesystem without this ioctl returns an error.
        unsafe {
            rustix::ioctl::ioctl(
                dir,
                rustix::ioctl::Updater::<FS_IOC_GETFSMAP, FsmapQuery>::new(&mut q),
            )
        }
        .map_err(|e| e.to_string())?;
        let n = q.head.fmh_entries as usize;
        if n == 0 {
            break;
        }
        if n > batch {
            return Err(format!("the kernel returned {n} records for {batch} slots"));
        }
        if q.head.fmh_oflags & FMH_OF_DEV_T == 0 {
            return Err("the records do not carry device numbers (no FMH_OF_DEV_T)".to_string());
        }
        for rec in &q.recs[..n] {
            if decode_dev(rec.fmr_device) != (major, minor)
                || rec.fmr_owner != FMR_OWN_FREE
                || rec.fmr_flags & FMR_OF_SPECIAL_OWNER == 0
            {
                continue;
            }
            let start = rec.fmr_physical.min(dev_len);
            let end = rec.fmr_physical.saturating_add(rec.fmr_length).min(dev_len);
            if start < end {
                free += end - start;
                on_free(start..end);
            }
        }
        let last = q.recs[n - 1];
        if last.fmr_flags & FMR_OF_LAST != 0 {
            break;
        }
        // Records ascend by (device, physical, owner, offset): a next low key that does not is
        // a kernel that would loop forever.
        let key = |r: &Fsmap| (r.fmr_device, r.fmr_physical, r.fmr_owner, r.fmr_offset);
        calls += 1;
        if calls > 1 && key(&last) <= key(&q.head.fmh_keys[0]) {
            return Err("the records stopped advancing".to_string());
        }
        q.head.fmh_keys[0] = last;
    }
    Ok(free)
}

// ---- Free extents ----

/// Free ranges of a disk: sorted, disjoint, not adjacent, each a whole number of aligned
/// units. Built by [`FreeExtentsBuilder`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreeExtents {
    ranges: Vec<Range<u64>>,
    /// Extents shorter than this were left out to respect the cap (0: none were).
    min_len: u64,
}

impl FreeExtents {
    /// The ranges, ascending.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Whether there is no free range.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Total bytes.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// When the cap was reached: the length under which extents were left out.
    pub fn dropped_below(&self) -> Option<u64> {
        (self.min_len > 0).then_some(self.min_len)
    }

    /// A cursor answering "is this range free?" for ranges asked in ascending order.
    pub fn cursor(&self) -> FreeCursor<'_> {
        FreeCursor { ranges: &self.ranges, next: 0 }
    }
}

/// Walks [`FreeExtents`] alongside a scan; see [`FreeExtents::cursor`].
#[derive(Debug)]
pub struct FreeCursor<'a> {
    ranges: &'a [Range<u64>],
    next: usize,
}

impl FreeCursor<'_> {
    /// Whether `start .. end` is wholly free. Ask with non-decreasing `start`.
    pub fn covers(&mut self, start: u64, end: u64) -> bool {
        while self.ranges.get(self.next).is_some_and(|r| r.end <= start) {
            self.next += 1;
        }
        self.ranges.get(self.next).is_some_and(|r| r.start <= start && end <= r.end)
    }
}

/// Collects free ranges with bounded memory.
///
/// Ranges come in any order. Touching or overlapping ranges are merged *before* alignment,
/// so an aligned unit split across two records (at a block group boundary, say) is kept.
/// Each merged run is then shrunk inwards to whole `align` units; what is left of less than
/// one unit is dropped (it is read, which is always safe). When more than `cap` ranges are
/// held, the shortest are dropped (the length threshold doubles until they fit): the
/// scan reads them, and the biggest savings are kept.
#[derive(Debug)]
pub struct FreeExtentsBuilder {
    align: u64,
    cap: usize,
    /// Ranges shorter than this are dropped (starts at one unit).
    min_len: u64,
    pruned: bool,
    /// The run being merged, not yet aligned.
    pending: Option<Range<u64>>,
    ranges: Vec<Range<u64>>,
    /// Whether `ranges` is sorted and merged.
    sorted: bool,
}

impl FreeExtentsBuilder {
    /// A builder keeping whole units of `align` bytes (at least 1) and at most `cap` ranges
    /// (at least 1).
    pub fn new(align: u64, cap: usize) -> Self {
        let align = align.max(1);
        Self {
            align,
            cap: cap.max(1),
            min_len: align,
            pruned: false,
            pending: None,
            ranges: Vec::new(),
            sorted: true,
        }
    }

    /// Adds a free range.
    pub fn push(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        match &mut self.pending {
            Some(p) if r.start <= p.end && r.end >= p.start => {
                p.start = p.start.min(r.start);
                p.end = p.end.max(r.end);
            }
            _ => {
                if let Some(p) = self.pending.replace(r) {
                    self.keep(p);
                }
            }
        }
    }

    /// Aligns a finished run and keeps it if long enough.
    fn keep(&mut self, r: Range<u64>) {
        let Some(start) = r.start.checked_next_multiple_of(self.align) else {
            return;
        };
        let end = r.end / self.align * self.align;
        if end <= start || end - start < self.min_len {
            return;
        }
        if let Some(last) = self.ranges.last_mut() {
            if start <= last.end && end >= last.start {
                last.start = last.start.min(start);
                last.end = last.end.max(end);
                return;
            }
            if start < last.start {
                self.sorted = false;
            }
        }
        self.ranges.push(start..end);
        if self.ranges.len() > self.cap {
            self.normalize();
            while self.ranges.len() > self.cap {
                self.min_len = self.min_len.saturating_mul(2);
                self.pruned = true;
                let min = self.min_len;
                self.ranges.retain(|r| r.end - r.start >= min);
            }
        }
    }

    /// Sorts and merges `ranges`.
    fn normalize(&mut self) {
        if self.sorted {
            return;
        }
        self.ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(self.ranges.len());
        for r in self.ranges.drain(..) {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        self.ranges = merged;
        self.sorted = true;
    }

    /// The extents.
    pub fn finish(mut self) -> FreeExtents {
        if let Some(p) = self.pending.take() {
            self.keep(p);
        }
        self.normalize();
        FreeExtents { ranges: self.ranges, min_len: if self.pruned { self.min_len } else { 0 } }
    }
}

/// `bytes` for a person: "52.3 MiB", "1.50 TiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} bytes") } else { format!("{v:.1} {}", UNITS[u]) }
}

#[cfg(test)]
mod tests;
