//! The process server's cache replays whatever segment files it finds after a crash:
//! arbitrary bytes as the last segment must give an error or a (possibly truncated)
//! replay, never a panic, and every record it replays must read back.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_cache::{Cache, CacheConfig};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("00000000000000000001.segment"), data).expect("write");
    if let Ok((cache, pending)) = Cache::open(dir.path(), CacheConfig::with_max_bytes(1 << 30)) {
        for p in pending {
            cache.read(&p.record).expect("a replayed record reads back");
        }
    }
});
