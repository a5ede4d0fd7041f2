//! Exclusive advisory locks on state directories and files.

use std::fs::{File, TryLockError};
use std::time::{Duration, Instant};

/// How long to wait for a lock before deciding another process holds it.
pub const PATIENCE: Duration = Duration::from_secs(3);

/// Takes an exclusive lock on `file` (`flock` on Linux), retrying for [`PATIENCE`]: a
/// lock can look held for a moment by a process that is exiting, or by a child that
/// another thread of this process forked and that has not reached `exec` yet (the open
/// file description, and with it the lock, is shared until then). Returns
/// `TryLockError::WouldBlock` if it stays held.
pub fn lock_exclusive(file: &File) -> Result<(), TryLockError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match file.try_lock() {
            Err(TryLockError::WouldBlock) if started.elapsed() < PATIENCE => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_refused_and_a_released_one_taken() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let a = File::create(&p).unwrap();
        let b = File::create(&p).unwrap();
        lock_exclusive(&a).unwrap();
        let t = Instant::now();
        assert!(matches!(lock_exclusive(&b), Err(TryLockError::WouldBlock)));
        assert!(t.elapsed() >= PATIENCE);
        drop(a);
        lock_exclusive(&b).unwrap();
    }
}
