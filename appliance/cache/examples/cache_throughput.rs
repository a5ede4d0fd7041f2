//! Rough append throughput of the cache: 1 GiB as 4 MiB batches, group-committed
//! (8 batches per fsync), then replayed and released. Not a benchmark harness and
//! not a test: run it in release and read the numbers.
//!
//! ```text
//! cargo run --release -p lifeboat-cache --example cache_throughput [DIR] [BATCHES_PER_FSYNC]
//! ```
//!
//! DIR defaults to a temporary directory under $TMPDIR; put it on the disk you
//! want to measure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use std::time::Instant;

use lifeboat_cache::{Cache, CacheConfig, RecordKey};

const TOTAL: u64 = 1 << 30;
const BATCH: usize = 4 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tmp;
    let dir = match args.next() {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().join("cache")
        }
    };
    let group: usize = args.next().map(|g| g.parse()).transpose()?.unwrap_or(8);
    let config = CacheConfig::with_max_bytes(4 << 30);
    let (mut cache, pending) = Cache::open(&dir, config)?;
    if !pending.is_empty() {
        return Err(format!("{} is not empty; give an empty directory", dir.display()).into());
    }

    // Incompressible-looking payloads, different per batch, made before timing.
    let mut payloads = Vec::with_capacity(group);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..group {
        let mut p = vec![0u8; BATCH];
        for chunk in p.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        payloads.push(p);
    }

    let count = TOTAL / BATCH as u64;
    let start = Instant::now();
    let mut refs = Vec::with_capacity(count as usize);
    let mut seq = 0u64;
    while seq < count {
        let n = (group as u64).min(count - seq) as usize;
        let batches: Vec<(RecordKey, &[u8])> = (0..n)
            .map(|i| {
                let key = RecordKey { machine: 1, disk: 0, sequence: seq + i as u64 };
                (key, payloads[i].as_slice())
            })
            .collect();
        refs.extend(cache.append_many(&batches)?);
        seq += n as u64;
    }
    let append = start.elapsed().as_secs_f64();
    let mb = TOTAL as f64 / 1e6;
    println!(
        "append: {count} x {} MiB in groups of {group} (one fsync each): {:.2} s, {:.0} MB/s",
        BATCH >> 20,
        append,
        mb / append
    );
    println!("usage {} bytes in {}", cache.usage(), dir.display());
    drop(cache);

    let start = Instant::now();
    let (mut cache, pending) = Cache::open(&dir, config)?;
    let replay = start.elapsed().as_secs_f64();
    println!(
        "replay: {} pending records verified in {:.2} s, {:.0} MB/s (page cache likely warm)",
        pending.len(),
        replay,
        mb / replay
    );

    let start = Instant::now();
    for chunk in refs.chunks(group) {
        cache.release_many(chunk)?;
    }
    println!(
        "release: {} records in {:.3} s; usage now {} bytes",
        refs.len(),
        start.elapsed().as_secs_f64(),
        cache.usage()
    );
    Ok(())
}
