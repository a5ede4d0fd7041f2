//! The state directory's layout: where the journal and each disk's tracker state live, and
//! forgetting them when the machine registers again.
//!
//! ```text
//! journal/                 the journal (see crate::journal)
//! hashscan-d<index>.map    the hash-scan tracker's baseline map of each disk (+ .intent, .lock)
//! ```
//!
//! The registration files live there too, see [`crate::registration`].

use std::path::{Path, PathBuf};

/// Name of the journal's directory in the state directory.
pub const JOURNAL_DIR: &str = "journal";

/// The hash-scan map of disk `index`.
pub fn map_path(state_dir: &Path, index: u32) -> PathBuf {
    state_dir.join(format!("hashscan-d{index}.map"))
}

/// Removes the journal and the trackers' maps: what belongs to a previous registration.
pub fn forget_replication_state(state_dir: &Path) -> Result<(), (PathBuf, std::io::Error)> {
    let journal = state_dir.join(JOURNAL_DIR);
    match std::fs::remove_dir_all(&journal) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err((journal, e)),
    }
    let entries = match std::fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err((state_dir.to_path_buf(), e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("hashscan-d") {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| (p, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_removes_journal_and_maps_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        std::fs::create_dir_all(s.join("journal/d0")).unwrap();
        std::fs::write(s.join("journal/d0/x.batch"), b"x").unwrap();
        std::fs::write(s.join("hashscan-d0.map"), b"m").unwrap();
        std::fs::write(s.join("hashscan-d0.map.intent"), b"i").unwrap();
        std::fs::write(s.join("agent.key"), b"k").unwrap();
        forget_replication_state(s).unwrap();
        assert!(!s.join("journal").exists());
        assert!(!s.join("hashscan-d0.map").exists());
        assert!(!s.join("hashscan-d0.map.intent").exists());
        assert!(s.join("agent.key").exists());
        forget_replication_state(&s.join("nonexistent")).unwrap();
    }
}
