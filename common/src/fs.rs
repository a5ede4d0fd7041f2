//! Crash-safe small-file writes: what the agent's journal, its trackers and its registration
//! all need.
//!
//! [`write_file`] writes `<path>.tmp`, fsyncs it and renames it over `path`, so `path` holds
//! either the old bytes or the new ones after a crash; [`sync_dir`] makes the rename itself
//! durable; [`write_atomic`] is both. A `<path>.tmp` left by a crash was never renamed into
//! place and may be deleted.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// `<path>.tmp`, the temporary name [`write_file`] uses.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Writes `bytes` to `path` through `<path>.tmp` (created with `mode` when given, so a
/// secret is never readable by others), fsynced, renamed into place. The directory is not
/// synced: call [`sync_dir`] once after several files.
pub fn write_file(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let tmp = tmp_path(path);
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if let Some(mode) = mode {
        use std::os::unix::fs::OpenOptionsExt as _;
        // A leftover could carry looser permissions: start from a new file.
        let _ = std::fs::remove_file(&tmp);
        options.create_new(true).mode(mode);
    }
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Fsyncs the directory `dir` (makes renames and deletions in it durable).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// [`write_file`], then [`sync_dir`] of its directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    write_file(path, bytes, mode)?;
    sync_dir(match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn replaces_whole_files_and_keeps_modes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", None).unwrap();
        write_atomic(&p, b"two", None).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!tmp_path(&p).exists());
        let k = dir.path().join("key");
        std::fs::write(tmp_path(&k), b"leftover").unwrap();
        write_atomic(&k, b"secret", Some(0o600)).unwrap();
        assert_eq!(std::fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&k).unwrap(), b"secret");
        assert!(write_atomic(&dir.path().join("missing/f"), b"x", None).is_err());
    }
}
