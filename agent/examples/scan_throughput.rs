//! Throughput of the hash-scan tracker: hashing, plain reads, and full collects.
//!
//! ```text
//! cargo run --release -p lifeboat-agent --example scan_throughput [-- SIZE_MIB]
//! ```
//!
//! Prints comparable figures in GiB/s (the table in docs/tracker.md comes from it). The image
//! (default 1024 MiB) is written to a temporary directory and removed afterwards. This was an
//! ignored test; a measurement is not a check, so it lives here.
//!
//! The "block hashing" figure reproduces the tracker's per-block work from the map format
//! (docs/tracker.md): a byte compare for zeros, sixteen seeded xxh3-64 over the 4 KiB
//! sub-blocks, and one xxh3-64 over those sixteen hashes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::Instant;

use lifeboat_agent::disk::Disk;
use lifeboat_agent::tracker::hashscan::{BLOCK_SIZE, SUB_BLOCK_SIZE};
use lifeboat_agent::tracker::{Change, HashScan, HashScanConfig, Tracker};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xxhash_rust::xxh3::xxh3_64_with_seed;

const GIB: f64 = (1u64 << 30) as f64;
const BLOCK_HASH_TAG: u64 = 0x9e37_79b9_7f4a_7c15;

fn gib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / GIB
}

/// The tracker's work for one 64 KiB block: zero check, sub-block hashes, block hash.
fn hash_block(block: &[u8], seed: u64) -> (u64, u16) {
    let mut subs = [0u64; 16];
    let mut zero = 0u16;
    for (i, sub) in block.chunks(SUB_BLOCK_SIZE as usize).enumerate() {
        if sub.iter().all(|&b| b == 0) {
            zero |= 1 << i;
        }
        subs[i] = xxh3_64_with_seed(sub, seed);
    }
    let mut bytes = [0u8; 128];
    for (i, h) in subs.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&h.to_le_bytes());
    }
    (xxh3_64_with_seed(&bytes, seed ^ BLOCK_HASH_TAG), zero)
}

fn main() -> anyhow::Result<()> {
    let size_mib: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let size = size_mib << 20;
    let mut rng = StdRng::seed_from_u64(13);
    let mut buf = vec![0u8; 64 << 20];
    rng.fill(&mut buf[..]);

    let t0 = Instant::now();
    let mut acc = 0u64;
    for _ in 0..8 {
        for b in buf.chunks(BLOCK_SIZE as usize) {
            acc = acc.wrapping_add(hash_block(b, 42).0);
        }
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "block hashing as the tracker does it (zero check, 16 sub-hashes, block hash): {:.2} GiB/s [{acc:x}]",
        gib_per_s(8 * buf.len() as u64, s)
    );

    let t0 = Instant::now();
    let mut acc = 0u64;
    for _ in 0..8 {
        for b in buf.chunks(SUB_BLOCK_SIZE as usize) {
            acc = acc.wrapping_add(xxh3_64_with_seed(b, 1));
        }
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "raw xxh3-64 over 4 KiB pieces: {:.2} GiB/s [{acc:x}]",
        gib_per_s(8 * buf.len() as u64, s)
    );

    let zeros = vec![0u8; 64 << 20];
    let t0 = Instant::now();
    let mut n = 0;
    for _ in 0..8 {
        for b in zeros.chunks(BLOCK_SIZE as usize) {
            n += u32::from(b.iter().all(|&x| x == 0));
        }
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "all-zero blocks (byte compare only): {:.2} GiB/s [{n}]",
        gib_per_s(8 * zeros.len() as u64, s)
    );

    let dir = tempfile::tempdir()?;
    let img = dir.path().join("disk.img");
    {
        let f = File::create(&img)?;
        f.set_len(size)?;
        let mut off = 0;
        while off < size {
            rng.fill(&mut buf[..]);
            let n = (size - off).min(buf.len() as u64) as usize;
            f.write_all_at(&buf[..n], off)?;
            off += n as u64;
        }
        f.sync_all()?;
    }
    let disk = Disk::open(&img)?;
    let mut rbuf = vec![0u8; 4 << 20];
    let plain_read = |label: &str, rbuf: &mut [u8]| -> anyhow::Result<()> {
        let t0 = Instant::now();
        let mut off = 0;
        while off < size {
            let n = (size - off).min(rbuf.len() as u64) as usize;
            disk.read_at(off, &mut rbuf[..n])?;
            off += n as u64;
        }
        println!(
            "plain 4 MiB reads of a {size_mib} MiB image, {label}: {:.2} GiB/s",
            gib_per_s(size, t0.elapsed().as_secs_f64())
        );
        Ok(())
    };
    disk.drop_cache(0, size);
    plain_read("page cache dropped", &mut rbuf)?;
    plain_read("from the page cache", &mut rbuf)?;

    let mut cfg = HashScanConfig::new(dir.path().join("disk.map"));
    cfg.drop_cache = false;
    let mut t = HashScan::new(cfg)?;
    let mut sent = 0u64;
    let st = t.collect(&disk, &mut |c: Change<'_>| {
        sent += c.len();
        Ok(())
    })?;
    t.commit()?;
    assert_eq!(sent, size);
    println!(
        "initial collect of {size_mib} MiB to a no-op sink, from the page cache: {:.2} GiB/s ({} extents)",
        gib_per_s(size, st.duration.as_secs_f64()),
        st.extents
    );
    let st = t.collect(&disk, &mut |_c: Change<'_>| Ok(()))?;
    t.commit()?;
    println!(
        "collect, nothing changed, from the page cache: {:.2} GiB/s",
        gib_per_s(size, st.duration.as_secs_f64())
    );
    disk.drop_cache(0, size);
    let st = t.collect(&disk, &mut |_c: Change<'_>| Ok(()))?;
    t.commit()?;
    println!(
        "collect, nothing changed, page cache dropped: {:.2} GiB/s",
        gib_per_s(size, st.duration.as_secs_f64())
    );
    let f = OpenOptions::new().write(true).open(&img)?;
    for _ in 0..1000 {
        let mut b = [0u8; 4096];
        rng.fill(&mut b[..]);
        f.write_all_at(&b, rng.random_range(0..size / 4096) * 4096)?;
    }
    let st = t.collect(&disk, &mut |_c: Change<'_>| Ok(()))?;
    t.commit()?;
    println!(
        "collect with 1000 scattered 4 KiB writes, from the page cache: {:.2} GiB/s, {} extents, {} KiB",
        gib_per_s(size, st.duration.as_secs_f64()),
        st.extents,
        st.data_bytes / 1024
    );
    Ok(())
}
