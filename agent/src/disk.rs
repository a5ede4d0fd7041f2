//! Read-only access to a protected disk.
//!
//! A [`Disk`] is a regular image file, a loop device or a whole block device, opened read-only.
//! Reads are positional ([`Disk::read_at`]) into buffers the caller owns and reuses, so several
//! readers can share one `Disk` and nothing depends on a file cursor. [`Disk::data_ranges`]
//! tells where data may be (`SEEK_DATA`/`SEEK_HOLE`), so a sparse image's holes are skipped
//! without reading them; where the filesystem or device cannot tell, the whole disk is one range.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::SeekFrom;
use rustix::io::Errno;

/// What kind of object a [`Disk`] reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// A regular file holding a raw disk image (it may be sparse).
    ImageFile,
    /// A block device: a whole disk, a partition, a loop device, an LVM volume.
    BlockDevice,
}

/// Errors from opening or reading a disk. Every message names the disk and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The path could not be opened read-only.
    #[error(
        "cannot open disk {path} read-only: {source}; check that the path exists and that the agent runs as root or has read permission on it"
    )]
    Open {
        /// The disk's path.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The path is neither a regular file nor a block device.
    #[error(
        "{path} is not a disk ({what}); give a raw image file, a loop device or a whole block device such as /dev/sdb"
    )]
    NotADisk {
        /// The path given.
        path: PathBuf,
        /// What it is instead.
        what: &'static str,
    },
    /// The size of the disk could not be determined.
    #[error(
        "cannot get the size of disk {path} ({how}): {source}; check that it is a whole block device or a readable image file"
    )]
    Size {
        /// The disk's path.
        path: PathBuf,
        /// Which call failed.
        how: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// A read failed.
    #[error(
        "reading {len} bytes at offset {offset} of disk {path} failed: {source}; check the device's health (dmesg, smartctl) and retry"
    )]
    Read {
        /// The disk's path.
        path: PathBuf,
        /// Where the read started.
        offset: u64,
        /// How many bytes were asked for.
        len: usize,
        /// The operating system's error.
        source: io::Error,
    },
    /// A read asked for bytes beyond the size the disk had when it was opened.
    #[error(
        "read of {len} bytes at offset {offset} is past the end of disk {path} ({size} bytes); this is a caller bug, or the disk was resized: reopen it"
    )]
    OutOfRange {
        /// The disk's path.
        path: PathBuf,
        /// Where the read started.
        offset: u64,
        /// How many bytes were asked for.
        len: usize,
        /// The size of the disk when it was opened.
        size: u64,
    },
    /// The disk ended before the size it had when it was opened: it shrank while being read.
    #[error(
        "disk {path} ended at offset {at} while reading, before its size of {size} bytes when opened; it shrank: reopen it and run the cycle again"
    )]
    Shrunk {
        /// The disk's path.
        path: PathBuf,
        /// Where the data ended.
        at: u64,
        /// The size of the disk when it was opened.
        size: u64,
    },
    /// `SEEK_DATA`/`SEEK_HOLE` failed with an unexpected error.
    #[error(
        "finding data and holes (SEEK_DATA/SEEK_HOLE) in disk {path} at offset {offset} failed: {source}; check the filesystem holding the image, or retry"
    )]
    Seek {
        /// The disk's path.
        path: PathBuf,
        /// The offset asked about.
        offset: u64,
        /// The operating system's error.
        source: io::Error,
    },
}

/// A disk opened read-only: an image file, a loop device or a whole block device.
///
/// The size is taken once, at [`Disk::open`]; open the disk again to see a resize.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    size: u64,
    kind: DiskKind,
    /// The device number (`st_rdev`) of a block device; 0 for an image file.
    rdev: u64,
}

/// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)`. The kernel writes a `u64` whatever the size of
/// `size_t` in the opcode (a historic quirk), so the output type is `u64` and the opcode is
/// composed with `usize`, as in `<linux/fs.h>`.
const BLKGETSIZE64: rustix::ioctl::Opcode = rustix::ioctl::opcode::read::<usize>(0x12, 114);

impl Disk {
    /// Opens `path` read-only and takes its size: the file's length for an image file,
    /// `BLKGETSIZE64` for a block device.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DiskError> {
        let path = path.as_ref().to_path_buf();
        let file =
            File::open(&path).map_err(|source| DiskError::Open { path: path.clone(), source })?;
        let meta = file.metadata().map_err(|source| DiskError::Size {
            path: path.clone(),
            how: "fstat",
            source,
        })?;
        let ft = meta.file_type();
        let (kind, size) = if ft.is_file() {
            (DiskKind::ImageFile, meta.len())
        } else if ft.is_block_device() {
            // SAFETY: BLKGETSIZE64 is a read ioctl whose argument is a pointer to a u64 that
            // the kernel fills in; `Getter` passes a pointer to its own properly aligned
            // `MaybeUninit<u64>` and returns it only after the call succeeded. `file` is an
            // open block device, the only kind of descriptor this opcode is sent to.
            let size = unsafe {
                rustix::ioctl::ioctl(&file, rustix::ioctl::Getter::<BLKGETSIZE64, u64>::new())
            }
            .map_err(|e| DiskError::Size {
                path: path.clone(),
                how: "ioctl BLKGETSIZE64",
                source: e.into(),
            })?;
            (DiskKind::BlockDevice, size)
        } else {
            let what = if ft.is_dir() {
                "a directory"
            } else if ft.is_char_device() {
                "a character device"
            } else if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "not a regular file or block device"
            };
            return Err(DiskError::NotADisk { path, what });
        };
        let rdev = if kind == DiskKind::BlockDevice { meta.rdev() } else { 0 };
        Ok(Self { file, path, size, kind, rdev })
    }

    /// The path the disk was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size in bytes, as it was when the disk was opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether this is an image file or a block device.
    pub fn kind(&self) -> DiskKind {
        self.kind
    }

    /// The (major, minor) device number of a block device; None for an image file.
    pub fn device_number(&self) -> Option<(u32, u32)> {
        (self.kind == DiskKind::BlockDevice)
            .then(|| (rustix::fs::major(self.rdev), rustix::fs::minor(self.rdev)))
    }

    /// Fills `buf` with the bytes at `offset`. The whole range must lie within [`Disk::size`];
    /// a disk that turns out shorter (it shrank since it was opened) is [`DiskError::Shrunk`].
    /// Interrupted and short reads are retried.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let len = buf.len();
        if offset.checked_add(len as u64).is_none_or(|end| end > self.size) {
            return Err(DiskError::OutOfRange {
                path: self.path.clone(),
                offset,
                len,
                size: self.size,
            });
        }
        let mut done = 0usize;
        while done < len {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    return Err(DiskError::Shrunk {
                        path: self.path.clone(),
                        at: offset + done as u64,
                        size: self.size,
                    });
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(DiskError::Read { path: self.path.clone(), offset, len, source });
                }
            }
        }
        Ok(())
    }

    /// Advises the kernel that the cached pages of `offset .. offset + len` will not be needed
    /// again (`POSIX_FADV_DONTNEED`), so a full-disk scan does not push the server's working
    /// set out of the page cache. Advisory: errors are ignored, and dirty pages are kept.
    pub fn drop_cache(&self, offset: u64, len: u64) {
        if let Some(len) = std::num::NonZeroU64::new(len) {
            let _ =
                rustix::fs::fadvise(&self.file, offset, Some(len), rustix::fs::Advice::DontNeed);
        }
    }

    /// The ranges of the disk that may hold data, in ascending order and non-overlapping.
    /// Everything outside them reads as zeros (holes of a sparse image). Block devices, and
    /// filesystems that do not support `SEEK_DATA`/`SEEK_HOLE`, give one range covering the
    /// whole disk.
    ///
    /// The ranges are found lazily, a few system calls per range, so memory stays bounded
    /// however fragmented the image is. They describe the disk at the moment each one is
    /// found; an image being written meanwhile may gain data in a range reported as a hole.
    pub fn data_ranges(&self) -> DataRanges<'_> {
        self.data_ranges_from(0)
    }

    /// Like [`Disk::data_ranges`], starting at `start` (ranges are clipped to begin there).
    pub fn data_ranges_from(&self, start: u64) -> DataRanges<'_> {
        DataRanges { disk: self, pos: start, whole: self.kind == DiskKind::BlockDevice }
    }
}

/// Iterator over the ranges of a disk that may hold data; see [`Disk::data_ranges`].
#[derive(Debug)]
pub struct DataRanges<'a> {
    disk: &'a Disk,
    pos: u64,
    /// Report everything from `pos` to the end as data (no hole information available).
    whole: bool,
}

impl DataRanges<'_> {
    fn unsupported(e: Errno) -> bool {
        e == Errno::INVAL || e == Errno::OPNOTSUPP || e == Errno::NOSYS
    }
}

impl Iterator for DataRanges<'_> {
    type Item = Result<Range<u64>, DiskError>;

    fn next(&mut self) -> Option<Self::Item> {
        let size = self.disk.size;
        if self.pos >= size {
            return None;
        }
        if self.whole {
            let r = self.pos..size;
            self.pos = size;
            return Some(Ok(r));
        }
        let data = match rustix::fs::seek(&self.disk.file, SeekFrom::Data(self.pos)) {
            Ok(d) => d,
            // No data at or after pos: the rest is a hole.
            Err(Errno::NXIO) => {
                self.pos = size;
                return None;
            }
            Err(e) if Self::unsupported(e) => {
                self.whole = true;
                return self.next();
            }
            Err(e) => {
                let offset = self.pos;
                self.pos = size;
                return Some(Err(DiskError::Seek {
                    path: self.disk.path.clone(),
                    offset,
                    source: e.into(),
                }));
            }
        };
        if data >= size {
            self.pos = size;
            return None;
        }
        let hole = match rustix::fs::seek(&self.disk.file, SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            // The file shrank between the two calls, or the filesystem changed its mind:
            // conservatively call the rest data.
            Err(Errno::NXIO) => size,
            Err(e) if Self::unsupported(e) => size,
            Err(e) => {
                self.pos = size;
                return Some(Err(DiskError::Seek {
                    path: self.disk.path.clone(),
                    offset: data,
                    source: e.into(),
                }));
            }
        };
        // A hole position at or before the data position would not advance; treat the rest as
        // data rather than loop.
        let end = if hole > data { hole } else { size };
        self.pos = end;
        Some(Ok(data..end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sparse_image(size: u64, writes: &[(u64, &[u8])]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(size).unwrap();
        for (off, data) in writes {
            f.as_file().write_all_at(data, *off).unwrap();
        }
        f.flush().unwrap();
        f
    }

    #[test]
    fn opens_image_and_reads_positionally() {
        let img = sparse_image(1 << 20, &[(4096, b"hello"), (1_000_000, b"world")]);
        let disk = Disk::open(img.path()).unwrap();
        assert_eq!(disk.size(), 1 << 20);
        assert_eq!(disk.kind(), DiskKind::ImageFile);
        assert_eq!(disk.device_number(), None);
        let mut buf = [0u8; 5];
        disk.read_at(4096, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        disk.read_at(1_000_000, &mut buf).unwrap();
        assert_eq!(&buf, b"world");
        disk.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, [0; 5]);
        // The last byte is readable, one past it is not.
        let mut one = [1u8; 1];
        disk.read_at((1 << 20) - 1, &mut one).unwrap();
        assert_eq!(one, [0]);
        let err = disk.read_at(1 << 20, &mut one).unwrap_err();
        assert!(matches!(err, DiskError::OutOfRange { .. }), "{err}");
        let err = disk.read_at(u64::MAX, &mut one).unwrap_err();
        assert!(matches!(err, DiskError::OutOfRange { .. }), "{err}");
    }

    #[test]
    fn errors_name_the_path_and_what_to_do() {
        let err = Disk::open("/nonexistent/lifeboat-disk").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/lifeboat-disk"), "{msg}");
        assert!(msg.contains("check that the path exists"), "{msg}");

        let dir = tempfile::tempdir().unwrap();
        let err = Disk::open(dir.path()).unwrap_err();
        assert!(matches!(err, DiskError::NotADisk { what: "a directory", .. }), "{err}");
        assert!(err.to_string().contains("block device"), "{err}");
    }

    #[test]
    fn shrunk_disk_is_reported() {
        let img = sparse_image(1 << 16, &[]);
        let disk = Disk::open(img.path()).unwrap();
        img.as_file().set_len(1 << 12).unwrap();
        let mut buf = vec![0u8; 1 << 13];
        let err = disk.read_at(0, &mut buf).unwrap_err();
        assert!(matches!(err, DiskError::Shrunk { at: 4096, .. }), "{err}");
    }

    #[test]
    fn data_ranges_skip_holes() {
        let mib = 1u64 << 20;
        let img = sparse_image(
            16 * mib,
            &[(mib, &[1u8; 4096]), (5 * mib, &[2u8; 8192]), (16 * mib - 10, &[3u8; 10])],
        );
        let disk = Disk::open(img.path()).unwrap();
        let ranges: Vec<_> = disk.data_ranges().collect::<Result<_, _>>().unwrap();
        assert!(!ranges.is_empty());
        // Every written byte is inside some range, ranges ascend and stay within the disk.
        for w in [mib, 5 * mib, 5 * mib + 8191, 16 * mib - 1] {
            assert!(ranges.iter().any(|r| r.contains(&w)), "{w} not in {ranges:?}");
        }
        for pair in ranges.windows(2) {
            assert!(pair[0].end <= pair[1].start, "{ranges:?}");
        }
        assert!(ranges.iter().all(|r| r.start < r.end && r.end <= disk.size()));
        // On filesystems with hole support (ext4, xfs, btrfs, tmpfs) most of it is skipped.
        let covered: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        if covered < disk.size() {
            assert!(covered <= 4 * mib, "{ranges:?}");
        }
        // Starting in the middle clips.
        let from: Vec<_> = disk.data_ranges_from(5 * mib + 100).collect::<Result<_, _>>().unwrap();
        assert!(from[0].start >= 5 * mib + 100);
        assert!(from.iter().any(|r| r.contains(&(5 * mib + 8191))));
    }

    #[test]
    fn fully_sparse_and_empty_images() {
        let img = sparse_image(1 << 20, &[]);
        let disk = Disk::open(img.path()).unwrap();
        let ranges: Vec<_> = disk.data_ranges().collect::<Result<_, _>>().unwrap();
        // Either no data (hole support) or the whole disk (fallback).
        assert!(
            ranges.is_empty() || (ranges.len() == 1 && ranges[0] == (0..1 << 20)),
            "{ranges:?}"
        );

        let empty = sparse_image(0, &[]);
        let disk = Disk::open(empty.path()).unwrap();
        assert_eq!(disk.size(), 0);
        assert_eq!(disk.data_ranges().count(), 0);
    }

    /// A real loop device, when this machine lets us make one (root, loop module): the size
    /// comes from BLKGETSIZE64 and the data ranges cover the whole device.
    #[test]
    fn loop_device_when_available() {
        let img = sparse_image(3 << 20, &[(1 << 20, b"loop!")]);
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(img.path())
            .output();
        let Ok(out) = out else {
            eprintln!("losetup not available; skipping");
            return;
        };
        if !out.status.success() {
            eprintln!(
                "cannot create a loop device here ({}); skipping",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let result = std::panic::catch_unwind(|| {
            let disk = Disk::open(&dev).unwrap();
            assert_eq!(disk.kind(), DiskKind::BlockDevice);
            assert_eq!(disk.size(), 3 << 20);
            let st = rustix::fs::stat(dev.as_str()).unwrap();
            assert_eq!(
                disk.device_number(),
                Some((rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev)))
            );
            let ranges: Vec<_> = disk.data_ranges().collect::<Result<_, _>>().unwrap();
            assert_eq!(ranges.len(), 1);
            assert_eq!(ranges[0], 0..3 << 20);
            let mut buf = [0u8; 5];
            disk.read_at(1 << 20, &mut buf).unwrap();
            assert_eq!(&buf, b"loop!");
        });
        let _ = std::process::Command::new("losetup").args(["--detach", &dev]).status();
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    }
}
