//! Exclusive advisory locks on state files.

use std::time::{Duration, Instant};

/// How long to wait for a lock before deciding another process holds it.
const PATIENCE: Duration = Duration::from_secs(3);

/// Takes an exclusive `flock` on `file`, retrying for a few seconds: a lock can look
/// held for a moment by a process that is exiting, or by a child forked elsewhere in
/// this process that has not reached `exec` yet (the open file description, and with
/// it the lock, is shared until then). Fails with the last error if it stays held.
pub fn lock_exclusive(file: &std::fs::File) -> Result<(), rustix::io::Errno> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR)
                if started.elapsed() < PATIENCE =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
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
        let a = std::fs::File::create(&p).unwrap();
        let b = std::fs::File::create(&p).unwrap();
        lock_exclusive(&a).unwrap();
        let t = Instant::now();
        assert!(lock_exclusive(&b).is_err());
        assert!(t.elapsed() >= PATIENCE);
        drop(a);
        lock_exclusive(&b).unwrap();
    }
}
