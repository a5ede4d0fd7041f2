//! The target world: where replica disks, recovery points, replication logs and VMs live.
//!
//! Implement [`Target`]; the optional operations (resizing, VMs, health) have defaults
//! that say the target does not support them.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/lifeboat-plugins@0.1.0",
        world: "target-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_target_world",
        default_bindings_module: "lifeboat_sdk::target::bindings",
        runtime_path: "lifeboat_sdk::__wit_bindgen::rt",
    });
}

use crate::{PluginError, Settings};
use bindings::exports::lifeboat::plugins::target as gen_;

pub use gen_::{
    DiskInfo, Extent, Firmware, MaterializedDisk, NicSpec, PointInfo, PowerState,
    TargetCapabilities, VmSpec, ZeroRange,
};

error_conversions!(bindings::lifeboat::plugins::types::PluginError);

/// Byte-addressable (alignment 1), 16 MiB per write, no instant points or materialise,
/// encryption not required.
impl Default for TargetCapabilities {
    fn default() -> Self {
        TargetCapabilities {
            alignment: 1,
            max_write_bytes: 16 << 20,
            instant_points: false,
            instant_materialize: false,
            requires_encryption: false,
        }
    }
}

/// File operations the host offers beyond WASI, inside granted directories only.
pub mod host_fs {
    pub use super::bindings::lifeboat::plugins::host_fs::CloneMethod;
    use crate::PluginError;

    /// Makes `dst` a copy of `src`: a reflink where the filesystem can, a sparse copy
    /// otherwise. Returns which one it did.
    pub fn clone_file(src: &str, dst: &str) -> Result<CloneMethod, PluginError> {
        super::bindings::lifeboat::plugins::host_fs::clone_file(src, dst).map_err(Into::into)
    }
}

/// Virtual disks attached to the appliance (the WIT `host-disks`): the host resolves each
/// to its block device or flat extent file, as the grant's `attached_disks` allows, and does
/// the I/O. For targets whose replicas are a hypervisor's disks (VMware).
pub mod host_disks {
    use super::bindings::lifeboat::plugins::host_disks as h;
    use crate::PluginError;
    pub use h::{BlockWrite, DiskRef};

    /// Makes the disk ready for `size` bytes of I/O; returns what it resolved to.
    pub fn open(disk: &DiskRef, size: u64) -> Result<String, PluginError> {
        h::open(disk, size).map_err(Into::into)
    }
    /// Writes data (durable after [`flush`]).
    pub fn write(disk: &DiskRef, writes: &[BlockWrite]) -> Result<(), PluginError> {
        h::write(disk, writes).map_err(Into::into)
    }
    /// Makes a range read as zeros.
    pub fn zero(disk: &DiskRef, offset: u64, length: u64) -> Result<(), PluginError> {
        h::zero(disk, offset, length).map_err(Into::into)
    }
    /// Reads `length` bytes at `offset`.
    pub fn read(disk: &DiskRef, offset: u64, length: u32) -> Result<Vec<u8>, PluginError> {
        h::read(disk, offset, length).map_err(Into::into)
    }
    /// Makes every write so far durable.
    pub fn flush(disk: &DiskRef) -> Result<(), PluginError> {
        h::flush(disk).map_err(Into::into)
    }
    /// Copies the first `length` bytes of `src` into `dst` (which reads as zeros), in the
    /// host; returns the bytes written.
    pub fn copy(src: &DiskRef, dst: &DiskRef, length: u64) -> Result<u64, PluginError> {
        h::copy(src, dst, length).map_err(Into::into)
    }
}

/// File helpers for targets that keep their objects as files in a granted directory
/// (paths are the plugin's own, under its preopens).
pub mod files {
    use crate::PluginError;
    use std::fs::{self, File, OpenOptions};
    use std::io::{Read, Seek, SeekFrom, Write};

    fn open_rw(path: &str) -> Result<File, PluginError> {
        OpenOptions::new().read(true).write(true).open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PluginError::NotFound(format!("{path} does not exist")),
            _ => e.into(),
        })
    }

    /// Makes the entries of directory `dir` durable (new names, renames, removals):
    /// without it a power cut can lose a file whose data was synced.
    pub fn sync_dir(dir: &str) -> Result<(), PluginError> {
        Ok(File::open(dir)?.sync_all()?)
    }

    /// [`sync_dir`] of the directory holding `path`.
    fn sync_parent(path: &str) -> Result<(), PluginError> {
        match std::path::Path::new(path).parent().and_then(|p| p.to_str()) {
            Some(p) if !p.is_empty() => sync_dir(p),
            _ => sync_dir("."),
        }
    }

    /// Creates a sparse file of `size` bytes (idempotent when it exists with that size);
    /// the file and its directory entry are durable when it returns.
    pub fn create_sparse(path: &str, size: u64) -> Result<(), PluginError> {
        if let Ok(m) = fs::metadata(path) {
            if m.len() == size {
                return Ok(());
            }
            return Err(PluginError::Invalid(format!("{path} exists with size {}", m.len())));
        }
        let f = File::create(path)?;
        f.set_len(size)?;
        f.sync_all()?;
        sync_parent(path)
    }

    /// Writes extents and zero ranges into the file at `path`, refusing writes past its end.
    ///
    /// A zero range never allocates space: it is read first (holes read as zeros without
    /// touching the disk) and zeros are written only over the parts that hold something,
    /// so zeroing a whole sparse disk costs reads, not the disk's size in storage.
    pub fn write_extents(
        path: &str,
        extents: &[super::Extent],
        zeros: &[super::ZeroRange],
    ) -> Result<(), PluginError> {
        let mut f = open_rw(path)?;
        let size = f.metadata()?.len();
        let past = |off: u64, len: u64| {
            PluginError::Invalid(format!(
                "write at {off}+{len} runs past the end of {path} ({size} bytes)"
            ))
        };
        for e in extents {
            let len = e.data.len() as u64;
            if e.offset.checked_add(len).is_none_or(|end| end > size) {
                return Err(past(e.offset, len));
            }
            f.seek(SeekFrom::Start(e.offset))?;
            f.write_all(&e.data)?;
        }
        let zero = vec![0u8; 1 << 20];
        let mut held = vec![0u8; 1 << 20];
        for z in zeros {
            if z.offset.checked_add(z.length).is_none_or(|end| end > size) {
                return Err(past(z.offset, z.length));
            }
            let mut off = z.offset;
            let end = z.offset + z.length;
            while off < end {
                let n = usize::try_from(end - off).map_or(zero.len(), |left| left.min(zero.len()));
                f.seek(SeekFrom::Start(off))?;
                f.read_exact(&mut held[..n])?;
                if held[..n].iter().any(|b| *b != 0) {
                    f.seek(SeekFrom::Start(off))?;
                    f.write_all(&zero[..n])?;
                }
                off += n as u64;
            }
        }
        Ok(())
    }

    /// Reads `length` bytes at `offset` of the file at `path`.
    pub fn read_at(path: &str, offset: u64, length: u32) -> Result<Vec<u8>, PluginError> {
        let mut f = open_rw(path)?;
        let mut buf = vec![0u8; length as usize];
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Makes the file's content durable.
    pub fn sync(path: &str) -> Result<(), PluginError> {
        Ok(open_rw(path)?.sync_all()?)
    }

    /// Writes `data` to `path` through a temporary file, synced then renamed, and the
    /// directory synced: a crash leaves the old content or the new, never a mix, and once
    /// it returns the new content survives a power cut (callers delete what it replaces,
    /// such as a cached batch, on the strength of that).
    pub fn write_atomic(path: &str, data: &[u8]) -> Result<(), PluginError> {
        let tmp = format!("{path}.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_parent(path)
    }

    /// Names of the entries of `dir` that start with `prefix` (the prefix stripped),
    /// sorted, skipping temporary files.
    pub fn list(dir: &str, prefix: &str) -> Result<Vec<String>, PluginError> {
        let mut v: Vec<String> = fs::read_dir(dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix) && !n.ends_with(".tmp"))
            .map(|n| n[prefix.len()..].to_owned())
            .collect();
        v.sort();
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::files;
    use std::os::unix::fs::MetadataExt;

    /// Issue 11, finding 3: zero ranges were written as literal zeros, so a disk zeroed
    /// whole filled the target with its size. A hole stays a hole; data is zeroed.
    #[test]
    fn zero_ranges_never_allocate_space() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk.img");
        let path = p.to_str().unwrap();
        let size = 256u64 << 20;
        files::create_sparse(path, size).unwrap();
        let data = super::Extent { offset: 1 << 20, data: vec![7u8; 8192] };
        files::write_extents(path, &[data], &[]).unwrap();
        let zeros = [super::ZeroRange { offset: 0, length: size }];
        files::write_extents(path, &[], &zeros).unwrap();
        files::sync(path).unwrap();
        let allocated = std::fs::metadata(&p).unwrap().blocks() * 512;
        assert!(allocated <= 1 << 20, "{allocated} bytes allocated for a zeroed sparse disk");
        assert_eq!(files::read_at(path, 1 << 20, 8192).unwrap(), vec![0u8; 8192]);
        let past = [super::ZeroRange { offset: size - 512, length: 1024 }];
        assert!(files::write_extents(path, &[], &past).is_err());
    }
}

/// Checks a host-chosen identifier (disk, point, log, VM) again: ASCII letters, digits,
/// `-`, `_`, `.`, at most 200 bytes, not starting with `.` (the WIT's promise), so no id
/// can name a path, blob or datastore file outside the target's own.
pub fn check_id(id: &str) -> Result<&str, PluginError> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok { Ok(id) } else { Err(PluginError::Invalid(format!("bad identifier {id:?}"))) }
}

/// Milliseconds since the Unix epoch (0 without the `clock` grant: the clock reads zero).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn unsupported<T>(what: &str) -> Result<T, PluginError> {
    Err(PluginError::Invalid(format!("{what} is not supported by this target plugin")))
}

/// A target plugin. See the WIT `target` interface for the contract of each call.
pub trait Target: Sized + 'static {
    /// Builds the target from its settings and says what it can do.
    fn init(settings: Settings) -> Result<(Self, TargetCapabilities), PluginError>;
    /// Checks the target is reachable and writable.
    fn health(&mut self) -> Result<String, PluginError> {
        Ok("no health check implemented".into())
    }
    /// Creates a zero-filled replica disk (idempotent for the same size).
    fn create_disk(&mut self, disk: &str, size: u64) -> Result<(), PluginError>;
    /// Grows or shrinks a replica disk.
    fn resize_disk(&mut self, _disk: &str, _size: u64) -> Result<(), PluginError> {
        unsupported("resizing a disk")
    }
    /// Deletes a replica disk.
    fn delete_disk(&mut self, disk: &str) -> Result<(), PluginError>;
    /// Lists replica disks.
    fn list_disks(&mut self) -> Result<Vec<DiskInfo>, PluginError>;
    /// Writes data extents and zero ranges (durable after `flush_disk`).
    fn write_extents(
        &mut self,
        disk: &str,
        extents: Vec<Extent>,
        zeros: Vec<ZeroRange>,
    ) -> Result<(), PluginError>;
    /// Reads `length` bytes at `offset`.
    fn read_extent(&mut self, disk: &str, offset: u64, length: u32)
    -> Result<Vec<u8>, PluginError>;
    /// Makes every write so far durable.
    fn flush_disk(&mut self, disk: &str) -> Result<(), PluginError>;
    /// Records the flushed content of `disks` as a recovery point (idempotent).
    fn create_point(
        &mut self,
        point: &str,
        tag: &str,
        disks: Vec<String>,
    ) -> Result<PointInfo, PluginError>;
    /// Points whose id starts with `prefix`, oldest first.
    fn list_points(&mut self, prefix: &str) -> Result<Vec<PointInfo>, PluginError>;
    /// Deletes a recovery point.
    fn delete_point(&mut self, point: &str) -> Result<(), PluginError>;
    /// Makes `new_disk` with the content `disk` had at `point`.
    fn materialize(
        &mut self,
        point: &str,
        disk: &str,
        new_disk: &str,
    ) -> Result<MaterializedDisk, PluginError>;
    /// Stores a replication log object durably.
    fn put_log(&mut self, name: &str, data: Vec<u8>) -> Result<(), PluginError>;
    /// Reads a replication log object.
    fn get_log(&mut self, name: &str) -> Result<Vec<u8>, PluginError>;
    /// Log names starting with `prefix`, ascending.
    fn list_logs(&mut self, prefix: &str) -> Result<Vec<String>, PluginError>;
    /// Deletes a replication log object.
    fn delete_log(&mut self, name: &str) -> Result<(), PluginError>;
    /// Creates (does not start) a VM; returns its id.
    fn create_vm(&mut self, _spec: VmSpec) -> Result<String, PluginError> {
        unsupported("creating a VM")
    }
    /// Deletes a VM.
    fn delete_vm(&mut self, _vm: &str) -> Result<(), PluginError> {
        unsupported("deleting a VM")
    }
    /// Reports a VM's power state.
    fn vm_state(&mut self, _vm: &str) -> Result<PowerState, PluginError> {
        unsupported("querying a VM")
    }
    /// Takes the disks of an existing, stopped VM as this target's disks (see the WIT).
    fn adopt_vm_disks(&mut self, _vm: &str, _disks: &[String]) -> Result<Vec<u64>, PluginError> {
        unsupported("writing an existing VM's disks")
    }
}

thread_local! {
    static SLOT: crate::slot::Slot = const { crate::slot::Slot::new() };
}

/// Adapts a [`Target`] to the generated bindings; used by [`export_target!`](crate::export_target).
#[doc(hidden)]
pub struct Exported<T>(std::marker::PhantomData<T>);

type GenError = bindings::lifeboat::plugins::types::PluginError;

fn with<T: Target, R>(f: impl FnOnce(&mut T) -> Result<R, PluginError>) -> Result<R, GenError> {
    Ok(SLOT.with(|s| s.with(f))?)
}

impl<T: Target> gen_::Guest for Exported<T> {
    fn init(settings: Settings) -> Result<TargetCapabilities, GenError> {
        let (target, caps) = T::init(settings)?;
        SLOT.with(|s| s.set(target));
        Ok(caps)
    }
    fn health() -> Result<String, GenError> {
        with(|t: &mut T| t.health())
    }
    fn create_disk(disk: String, size: u64) -> Result<(), GenError> {
        with(|t: &mut T| t.create_disk(&disk, size))
    }
    fn resize_disk(disk: String, size: u64) -> Result<(), GenError> {
        with(|t: &mut T| t.resize_disk(&disk, size))
    }
    fn delete_disk(disk: String) -> Result<(), GenError> {
        with(|t: &mut T| t.delete_disk(&disk))
    }
    fn list_disks() -> Result<Vec<DiskInfo>, GenError> {
        with(|t: &mut T| t.list_disks())
    }
    fn write_extents(
        disk: String,
        extents: Vec<Extent>,
        zeros: Vec<ZeroRange>,
    ) -> Result<(), GenError> {
        with(|t: &mut T| t.write_extents(&disk, extents, zeros))
    }
    fn read_extent(disk: String, offset: u64, length: u32) -> Result<Vec<u8>, GenError> {
        with(|t: &mut T| t.read_extent(&disk, offset, length))
    }
    fn flush_disk(disk: String) -> Result<(), GenError> {
        with(|t: &mut T| t.flush_disk(&disk))
    }
    fn create_point(point: String, tag: String, disks: Vec<String>) -> Result<PointInfo, GenError> {
        with(|t: &mut T| t.create_point(&point, &tag, disks))
    }
    fn list_points(prefix: String) -> Result<Vec<PointInfo>, GenError> {
        with(|t: &mut T| t.list_points(&prefix))
    }
    fn delete_point(point: String) -> Result<(), GenError> {
        with(|t: &mut T| t.delete_point(&point))
    }
    fn materialize(
        point: String,
        disk: String,
        new_disk: String,
    ) -> Result<MaterializedDisk, GenError> {
        with(|t: &mut T| t.materialize(&point, &disk, &new_disk))
    }
    fn put_log(name: String, data: Vec<u8>) -> Result<(), GenError> {
        with(|t: &mut T| t.put_log(&name, data))
    }
    fn get_log(name: String) -> Result<Vec<u8>, GenError> {
        with(|t: &mut T| t.get_log(&name))
    }
    fn list_logs(prefix: String) -> Result<Vec<String>, GenError> {
        with(|t: &mut T| t.list_logs(&prefix))
    }
    fn delete_log(name: String) -> Result<(), GenError> {
        with(|t: &mut T| t.delete_log(&name))
    }
    fn create_vm(spec: VmSpec) -> Result<String, GenError> {
        with(|t: &mut T| t.create_vm(spec))
    }
    fn delete_vm(vm: String) -> Result<(), GenError> {
        with(|t: &mut T| t.delete_vm(&vm))
    }
    fn vm_state(vm: String) -> Result<PowerState, GenError> {
        with(|t: &mut T| t.vm_state(&vm))
    }
    fn adopt_vm_disks(vm: String, disks: Vec<String>) -> Result<Vec<u64>, GenError> {
        with(|t: &mut T| t.adopt_vm_disks(&vm, &disks))
    }
}

/// Exports a [`Target`] implementation as the plugin's target world.
#[macro_export]
macro_rules! export_target {
    ($t:ty) => {
        // Component exports exist only in the wasm build; a native build (tests, clippy)
        // compiles the plugin as an ordinary library.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __LifeboatTargetExport = $crate::target::Exported<$t>;
            $crate::target::bindings::__export_target_world!(
                __LifeboatTargetExport with_types_in $crate::target::bindings
            );
        };
    };
}
