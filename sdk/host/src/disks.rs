//! `host-disks`: the I/O of virtual disks attached to the appliance, for targets whose
//! replicas are a hypervisor's disks (the VMware target hot-adds its replica disks to the
//! appliance VM and writes them in place).
//!
//! A plugin names a disk as vSphere does (datastore, descriptor path, UUID); the host
//! resolves it as the grant (`[plugins.grants.<name>.attached_disks]`) allows:
//!
//! - **a datastore folder** (`datastores = { name = "/folder" }`): `[name] dir/x.vmdk` is the
//!   flat extent `/folder/dir/x-flat.vmdk`, opened beneath the folder with no link followed
//!   ([`crate::beneath`]). This is how vcsim's datastores (folders on the host) and an NFS
//!   datastore mounted on the appliance are reached.
//! - **a block device** (`devices = true`): the device whose SCSI WWN (`/sys/block/*/device/
//!   wwid`, `naa.<32 hex digits>`) is the disk's UUID — what a VMware disk hot-added to the
//!   appliance VM shows when `disk.EnableUUID` is on. A device that is mounted, used as swap
//!   or held by another driver (LVM, RAID), or whose partitions are, is refused: a plugin
//!   can reach disks attached for it, never the appliance's own.
//!
//! Every call opens the disk anew (no descriptor is kept between calls), so a disk deleted
//! and made again under the same name is never written through a stale descriptor.

use crate::beneath::{self, BeneathError};
use crate::config::AttachedDisksGrant;
use crate::state::HostState;
use crate::worlds::{GenError, gen_target};
use gen_target::lifeboat::plugins::host_disks::{self, BlockWrite, DiskRef};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

/// Bytes per chunk of `zero` and `copy`.
const CHUNK: usize = 1 << 20;

/// Where the host looks for devices; the real system's paths except in tests.
#[derive(Debug, Clone)]
pub(crate) struct SystemPaths {
    /// `/sys`
    pub(crate) sys: PathBuf,
    /// `/dev`
    pub(crate) dev: PathBuf,
    /// `/proc/self/mountinfo`
    pub(crate) mountinfo: PathBuf,
    /// `/proc/swaps`
    pub(crate) swaps: PathBuf,
}

impl Default for SystemPaths {
    fn default() -> Self {
        SystemPaths {
            sys: "/sys".into(),
            dev: "/dev".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            swaps: "/proc/swaps".into(),
        }
    }
}

/// An opened disk: its file (flat extent or block device), size and description.
struct Opened {
    file: File,
    size: u64,
    what: String,
    device: Option<String>,
}

fn io_error(what: &str, e: std::io::Error) -> GenError {
    match e.raw_os_error() {
        Some(libc_enospc) if libc_enospc == rustix::io::Errno::NOSPC.raw_os_error() => {
            GenError::Retryable(format!(
                "{what}: no space left (the datastore is full; free space or grow it, and the \
                 write is retried)"
            ))
        }
        Some(e2) if e2 == rustix::io::Errno::DQUOT.raw_os_error() => {
            GenError::Retryable(format!("{what}: quota exceeded on the datastore"))
        }
        _ => GenError::Internal(format!("{what}: {e}")),
    }
}

/// The flat extent's path, relative to its datastore, of descriptor `path`
/// (`dir/x.vmdk` -> `dir/x-flat.vmdk`); `None` for anything but a plain relative
/// `.vmdk` path.
pub(crate) fn flat_extent(path: &str) -> Option<PathBuf> {
    let stem = path.strip_suffix(".vmdk")?;
    let p = Path::new(path);
    let plain = !stem.is_empty()
        && !stem.ends_with('/')
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    plain.then(|| PathBuf::from(format!("{stem}-flat.vmdk")))
}

/// The WWN a disk with `uuid` shows (`naa.` and its 32 hex digits, lower case); `None`
/// for anything that is not a UUID.
pub(crate) fn wwid_of(uuid: &str) -> Option<String> {
    let hex: String = uuid.chars().filter(|c| !matches!(c, '-' | ' ')).collect();
    (hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| format!("naa.{}", hex.to_ascii_lowercase()))
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

/// The block device (its name in `/sys/block`) whose WWN is `uuid`'s, refusing one that is
/// in use by this machine. Errors are the plugin's words.
pub(crate) fn find_device(paths: &SystemPaths, uuid: &str) -> Result<String, GenError> {
    let wwid = wwid_of(uuid)
        .ok_or_else(|| GenError::Invalid(format!("{uuid:?} is not a virtual disk UUID")))?;
    let block = paths.sys.join("block");
    let entries = std::fs::read_dir(&block)
        .map_err(|e| GenError::Internal(format!("cannot list {}: {e}", block.display())))?;
    let mut names: Vec<String> =
        entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    let name = names
        .into_iter()
        .find(|n| {
            read_trim(&block.join(n).join("device/wwid"))
                .is_some_and(|w| w.eq_ignore_ascii_case(&wwid))
        })
        .ok_or_else(|| {
            GenError::NotFound(format!(
                "no block device with WWN {wwid} on this appliance: is the disk attached to the \
                 appliance VM, with disk.EnableUUID = TRUE in its configuration?"
            ))
        })?;
    if let Some(why) = in_use(paths, &name) {
        tracing::warn!(device = %name, %why, "refused a host-disks device in use");
        return Err(GenError::Denied(format!("device {name} (WWN {wwid}) is in use here: {why}")));
    }
    Ok(name)
}

/// Why block device `name` (or one of its partitions) is in use by this machine, if it is.
fn in_use(paths: &SystemPaths, name: &str) -> Option<String> {
    let dir = paths.sys.join("block").join(name);
    // The device and its partitions: (name, "major:minor").
    let mut parts = vec![(name.to_owned(), read_trim(&dir.join("dev")).unwrap_or_default())];
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                let n = e.file_name().to_string_lossy().into_owned();
                parts.push((n, read_trim(&p.join("dev")).unwrap_or_default()));
            }
        }
    }
    for (n, _) in &parts {
        let holders = if n == name { dir.join("holders") } else { dir.join(n).join("holders") };
        if std::fs::read_dir(&holders).is_ok_and(|mut h| h.next().is_some()) {
            return Some(format!("{n} is held by another driver (LVM, RAID, dm-crypt)"));
        }
    }
    let mountinfo = std::fs::read_to_string(&paths.mountinfo).unwrap_or_default();
    for line in mountinfo.lines() {
        let mut f = line.split(' ');
        let (Some(dev), Some(point)) = (f.nth(2), f.nth(1)) else { continue };
        if let Some((n, _)) = parts.iter().find(|(_, d)| !d.is_empty() && d == dev) {
            return Some(format!("{n} is mounted on {point}"));
        }
    }
    let swaps = std::fs::read_to_string(&paths.swaps).unwrap_or_default();
    for line in swaps.lines().skip(1) {
        let dev = line.split_whitespace().next().unwrap_or_default();
        if let Some((n, _)) = parts.iter().find(|(n, _)| dev == paths.dev.join(n).to_string_lossy())
        {
            return Some(format!("{n} is used as swap"));
        }
    }
    None
}

fn grant(state: &HostState) -> Result<&AttachedDisksGrant, GenError> {
    state.attached.as_deref().ok_or_else(|| {
        GenError::Denied(
            "attached disks are not granted to this plugin (plugins.grants.<name>.attached_disks)"
                .into(),
        )
    })
}

/// Opens `disk` read-write as the grant allows.
fn open(state: &HostState, disk: &DiskRef) -> Result<Opened, GenError> {
    let g = grant(state)?;
    if let Some(root) = g.datastores.get(&disk.datastore) {
        let o = open_flat(root, disk);
        if let Err(GenError::Denied(why)) = &o {
            tracing::warn!(plugin = %state.plugin, %why, "refused a host-disks path");
        }
        return o;
    }
    if !g.devices {
        return Err(GenError::Denied(format!(
            "datastore {:?} is not granted to this plugin (plugins.grants.<name>.attached_disks \
             grants no devices and no folder for it)",
            disk.datastore
        )));
    }
    let paths = SystemPaths::default();
    let name = find_device(&paths, &disk.uuid)?;
    let path = paths.dev.join(&name);
    let what = format!("{} ([{}] {})", path.display(), disk.datastore, disk.path);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_error(&what, e))?;
    use std::os::unix::fs::FileTypeExt;
    let m = file.metadata().map_err(|e| io_error(&what, e))?;
    if !m.file_type().is_block_device() {
        return Err(GenError::Denied(format!("{what} is not a block device")));
    }
    let size = file.seek(SeekFrom::End(0)).map_err(|e| io_error(&what, e))?;
    Ok(Opened { file, size, what, device: Some(name) })
}

/// Opens the flat extent of `disk` beneath datastore folder `root`, read-write, refusing
/// any path that is not a plain `.vmdk` path, any symbolic link on the way and anything
/// but a regular file.
fn open_flat(root: &Path, disk: &DiskRef) -> Result<Opened, GenError> {
    let rel = flat_extent(&disk.path).ok_or_else(|| {
        GenError::Denied(format!(
            "[{}] {}: not a plain .vmdk path inside the datastore",
            disk.datastore, disk.path
        ))
    })?;
    let what = format!("[{}] {}", disk.datastore, rel.display());
    let fd = beneath::open_root(root)
        .and_then(|r| {
            beneath::open(
                &r,
                &rel,
                rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NONBLOCK,
                rustix::fs::Mode::empty(),
            )
        })
        .map_err(|e| match e {
            BeneathError::NotFound(_) => GenError::NotFound(format!("{what} does not exist")),
            e @ (BeneathError::Escapes(_) | BeneathError::NotRegular(_)) => {
                GenError::Denied(format!("{what}: {e}"))
            }
            e => GenError::Internal(format!("{what}: {e}")),
        })?;
    let file = File::from(fd);
    let m = file.metadata().map_err(|e| io_error(&what, e))?;
    if !m.file_type().is_file() {
        return Err(GenError::Denied(format!("{what} is not a regular file")));
    }
    Ok(Opened { size: m.len(), file, what, device: None })
}

fn check_range(o: &Opened, offset: u64, len: u64) -> Result<(), GenError> {
    if offset.checked_add(len).is_none_or(|end| end > o.size) {
        return Err(GenError::Invalid(format!(
            "{}: {offset}+{len} runs past its end ({} bytes)",
            o.what, o.size
        )));
    }
    Ok(())
}

/// Zeros `[offset, offset+length)` of `o`, writing only chunks that hold data.
fn zero_range(o: &Opened, offset: u64, length: u64) -> Result<(), GenError> {
    check_range(o, offset, length)?;
    let zeros = vec![0u8; CHUNK];
    let mut held = vec![0u8; CHUNK];
    let (mut off, end) = (offset, offset + length);
    while off < end {
        let n = usize::try_from(end - off).map_or(CHUNK, |left| left.min(CHUNK));
        o.file.read_exact_at(&mut held[..n], off).map_err(|e| io_error(&o.what, e))?;
        if held[..n].iter().any(|b| *b != 0) {
            o.file.write_all_at(&zeros[..n], off).map_err(|e| io_error(&o.what, e))?;
        }
        off += n as u64;
    }
    Ok(())
}

/// The data ranges of `f` within `[0, len)`: where the filesystem reports holes, only the
/// data between them; for a device, everything.
fn data_ranges(f: &File, len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let start = match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return vec![(pos, len)],
        };
        if start >= len {
            break;
        }
        let end = match rustix::fs::seek(f, rustix::fs::SeekFrom::Hole(start)) {
            Ok(e) => e.min(len),
            Err(_) => len,
        };
        out.push((start, end));
        pos = end;
    }
    out
}

impl host_disks::Host for HostState {
    fn open(&mut self, disk: DiskRef, size: u64) -> Result<String, GenError> {
        let o = open(self, &disk)?;
        if o.size >= size {
            return Ok(o.what);
        }
        match &o.device {
            None => {
                o.file.set_len(size).map_err(|e| io_error(&o.what, e))?;
                o.file.sync_all().map_err(|e| io_error(&o.what, e))?;
                Ok(o.what)
            }
            Some(name) => {
                // The disk grew in vSphere: the guest sees it after a rescan.
                let rescan =
                    SystemPaths::default().sys.join("block").join(name).join("device/rescan");
                let _ = std::fs::write(rescan, b"1");
                let again = open(self, &disk)?;
                if again.size >= size {
                    Ok(again.what)
                } else {
                    Err(GenError::Invalid(format!(
                        "{} has {} bytes, fewer than the disk's {size} even after a rescan",
                        again.what, again.size
                    )))
                }
            }
        }
    }

    fn write(&mut self, disk: DiskRef, writes: Vec<BlockWrite>) -> Result<(), GenError> {
        let o = open(self, &disk)?;
        for w in &writes {
            check_range(&o, w.offset, w.data.len() as u64)?;
        }
        for w in &writes {
            o.file.write_all_at(&w.data, w.offset).map_err(|e| io_error(&o.what, e))?;
        }
        Ok(())
    }

    fn zero(&mut self, disk: DiskRef, offset: u64, length: u64) -> Result<(), GenError> {
        zero_range(&open(self, &disk)?, offset, length)
    }

    fn read(&mut self, disk: DiskRef, offset: u64, length: u32) -> Result<Vec<u8>, GenError> {
        let o = open(self, &disk)?;
        check_range(&o, offset, u64::from(length))?;
        let mut buf = vec![0u8; length as usize];
        o.file.read_exact_at(&mut buf, offset).map_err(|e| io_error(&o.what, e))?;
        Ok(buf)
    }

    fn flush(&mut self, disk: DiskRef) -> Result<(), GenError> {
        let o = open(self, &disk)?;
        o.file.sync_all().map_err(|e| io_error(&o.what, e))
    }

    fn copy(&mut self, src: DiskRef, dst: DiskRef, length: u64) -> Result<u64, GenError> {
        let s = open(self, &src)?;
        let d = open(self, &dst)?;
        check_range(&s, 0, length)?;
        check_range(&d, 0, length)?;
        let mut buf = vec![0u8; CHUNK];
        let mut written = 0u64;
        for (start, end) in data_ranges(&s.file, length) {
            let mut off = start;
            while off < end {
                let n = usize::try_from(end - off).map_or(CHUNK, |left| left.min(CHUNK));
                s.file.read_exact_at(&mut buf[..n], off).map_err(|e| io_error(&s.what, e))?;
                if buf[..n].iter().any(|b| *b != 0) {
                    d.file.write_all_at(&buf[..n], off).map_err(|e| io_error(&d.what, e))?;
                    written += n as u64;
                }
                off += n as u64;
            }
        }
        d.file.sync_all().map_err(|e| io_error(&d.what, e))?;
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_extents_are_plain_vmdk_paths_only() {
        assert_eq!(
            flat_extent("lifeboat/disks/m-d0.vmdk").unwrap(),
            Path::new("lifeboat/disks/m-d0-flat.vmdk")
        );
        assert_eq!(flat_extent("x.vmdk").unwrap(), Path::new("x-flat.vmdk"));
        for bad in ["", ".vmdk", "/etc/x.vmdk", "a/../b.vmdk", "./a.vmdk", "a/.vmdk", "a/b.img"] {
            assert!(flat_extent(bad).is_none(), "{bad:?} accepted");
        }
    }

    /// Whoever can write the datastore (or a plugin) cannot lead host-disks out of it:
    /// a flat extent that is a link, a folder that is a link, `..`, absolute paths and
    /// devices are refused; a plain flat extent opens.
    #[test]
    fn flat_extents_never_lead_out_of_the_datastore_folder() {
        let d = tempfile::tempdir().unwrap();
        let ds = d.path().join("ds");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(ds.join("lifeboat/disks")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret-flat.vmdk"), b"secret").unwrap();
        std::fs::write(ds.join("lifeboat/disks/ok-flat.vmdk"), vec![0u8; 4096]).unwrap();
        std::os::unix::fs::symlink(
            outside.join("secret-flat.vmdk"),
            ds.join("lifeboat/disks/evil-flat.vmdk"),
        )
        .unwrap();
        std::os::unix::fs::symlink(&outside, ds.join("lifeboat/linked")).unwrap();
        std::os::unix::fs::symlink("/dev/null", ds.join("lifeboat/disks/null-flat.vmdk")).unwrap();
        let r =
            |path: &str| DiskRef { datastore: "ds".into(), path: path.into(), uuid: String::new() };
        let o = open_flat(&ds, &r("lifeboat/disks/ok.vmdk")).unwrap();
        assert_eq!(o.size, 4096);
        for bad in [
            "lifeboat/disks/evil.vmdk",
            "lifeboat/linked/secret.vmdk",
            "lifeboat/disks/null.vmdk",
            "../outside/secret.vmdk",
            "/etc/passwd.vmdk",
            "lifeboat/disks/ok.img",
        ] {
            let e = open_flat(&ds, &r(bad)).err().unwrap_or_else(|| panic!("{bad} opened"));
            assert!(matches!(e, GenError::Denied(_)), "{bad}: {e:?}");
        }
        let e = open_flat(&ds, &r("lifeboat/disks/missing.vmdk")).err().unwrap();
        assert!(matches!(e, GenError::NotFound(_)), "{e:?}");
        assert_eq!(std::fs::read(outside.join("secret-flat.vmdk")).unwrap(), b"secret");
    }

    #[test]
    fn uuids_become_wwns() {
        assert_eq!(
            wwid_of("6000C291-8b6d-7c2e-1f2a-3b4c5d6e7f80").unwrap(),
            "naa.6000c2918b6d7c2e1f2a3b4c5d6e7f80"
        );
        assert_eq!(
            wwid_of("60 00 c2 91 8b 6d 7c 2e-1f 2a 3b 4c 5d 6e 7f 80").unwrap(),
            "naa.6000c2918b6d7c2e1f2a3b4c5d6e7f80"
        );
        for bad in ["", "6000c291", "zz00c2918b6d7c2e1f2a3b4c5d6e7f80", "../../sda"] {
            assert!(wwid_of(bad).is_none(), "{bad:?}");
        }
    }

    /// A fake /sys, /proc and /dev: sdb is the attached replica disk, sda holds the
    /// appliance's root (its partition is mounted), sdc has an LVM holder, sdd is swap.
    fn fake_system() -> (tempfile::TempDir, SystemPaths) {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("sys");
        let disk = |name: &str, wwid: &str, dev: &str| {
            let b = sys.join("block").join(name);
            std::fs::create_dir_all(b.join("device")).unwrap();
            std::fs::create_dir_all(b.join("holders")).unwrap();
            std::fs::write(b.join("device/wwid"), format!("{wwid}\n")).unwrap();
            std::fs::write(b.join("dev"), format!("{dev}\n")).unwrap();
            b
        };
        let sda = disk("sda", "naa.6000c29aaaaaaaaaaaaaaaaaaaaaaaaa", "8:0");
        std::fs::create_dir_all(sda.join("sda1/holders")).unwrap();
        std::fs::write(sda.join("sda1/partition"), "1\n").unwrap();
        std::fs::write(sda.join("sda1/dev"), "8:1\n").unwrap();
        let sdb = disk("sdb", "naa.6000c29bbbbbbbbbbbbbbbbbbbbbbbbb", "8:16");
        // The replica's own partition table shows up as sdb1: present, not in use.
        std::fs::create_dir_all(sdb.join("sdb1/holders")).unwrap();
        std::fs::write(sdb.join("sdb1/partition"), "1\n").unwrap();
        std::fs::write(sdb.join("sdb1/dev"), "8:17\n").unwrap();
        let sdc = disk("sdc", "naa.6000c29ccccccccccccccccccccccccc", "8:32");
        std::fs::write(sdc.join("holders/dm-0"), "").unwrap();
        disk("sdd", "naa.6000c29ddddddddddddddddddddddddd", "8:48");
        let proc_ = d.path().join("proc");
        std::fs::create_dir_all(&proc_).unwrap();
        std::fs::write(
            proc_.join("mountinfo"),
            "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
             23 22 0:5 / /dev rw - devtmpfs udev rw\n",
        )
        .unwrap();
        std::fs::write(
            proc_.join("swaps"),
            "Filename Type Size Used Priority\n/tmp/x/dev/sdd partition 1024 0 -2\n",
        )
        .unwrap();
        let paths = SystemPaths {
            sys,
            dev: "/tmp/x/dev".into(),
            mountinfo: proc_.join("mountinfo"),
            swaps: proc_.join("swaps"),
        };
        (d, paths)
    }

    #[test]
    fn devices_are_found_by_wwn_and_refused_when_in_use() {
        let (_d, paths) = fake_system();
        assert_eq!(find_device(&paths, "6000C29b-bbbb-bbbb-bbbb-bbbbbbbbbbbb").unwrap(), "sdb");
        let err = |uuid: &str| format!("{:?}", find_device(&paths, uuid).unwrap_err());
        let e = err("6000c29aaaaaaaaaaaaaaaaaaaaaaaaa");
        assert!(e.contains("Denied") && e.contains("sda1 is mounted on /"), "{e}");
        let e = err("6000c29ccccccccccccccccccccccccc");
        assert!(e.contains("Denied") && e.contains("held by another driver"), "{e}");
        let e = err("6000c29ddddddddddddddddddddddddd");
        assert!(e.contains("Denied") && e.contains("swap"), "{e}");
        let e = err("6000c29eeeeeeeeeeeeeeeeeeeeeeeee");
        assert!(e.contains("NotFound") && e.contains("disk.EnableUUID"), "{e}");
        let e = err("../../../dev/sda");
        assert!(e.contains("Invalid"), "{e}");
    }
}
