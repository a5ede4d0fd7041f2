//! Encode and decode throughput on full-size batches, printed as GB/s so runs on different
//! machines compare. `cargo bench -p lifeboat-wire` (release profile).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use lifeboat_wire::{Batch, BatchHeader, MAX_BATCH_BYTES, MachineId, decode, encode_into};

/// Runs `f` for at least half a second and returns bytes per second.
fn rate(bytes: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut runs = 0u32;
    while start.elapsed() < Duration::from_millis(500) {
        f();
        runs += 1;
    }
    bytes as f64 * f64::from(runs) / start.elapsed().as_secs_f64()
}

fn main() {
    let header = BatchHeader { machine: MachineId([1; 16]), disk_index: 0, sequence: 1, tag: None };
    // Pseudo-random data, so nothing compresses or short-cuts.
    let mut x = 0x1234_5678_9abc_def0u64;
    let disk: Vec<u8> = (0..MAX_BATCH_BYTES - (1 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();

    for extent_len in [4096usize, 64 * 1024, 1 << 20] {
        let mut builder = Batch::builder(header);
        for (i, chunk) in disk.chunks_exact(extent_len).enumerate() {
            // Leave a gap after each extent, as scattered writes do.
            let offset = (i * 2 * extent_len) as u64;
            if !builder.has_room_for(&lifeboat_wire::Extent::Zero { offset, length: 512 }) {
                break;
            }
            builder.push_data(offset, chunk).expect("valid extent");
        }
        let batch = builder.build();
        let data = batch.data_len() as usize;
        let mut buf = Vec::with_capacity(batch.encoded_len());
        let enc = rate(data, || {
            buf.clear();
            encode_into(black_box(&batch), &mut buf);
        });
        let dec = rate(data, || {
            black_box(decode(black_box(&buf)).expect("valid batch"));
        });
        println!(
            "{:>4} extents of {:>7} B ({:>5.1} MiB): encode {:>5.2} GB/s, decode+verify {:>5.2} GB/s",
            batch.extents().len(),
            extent_len,
            data as f64 / (1 << 20) as f64,
            enc / 1e9,
            dec / 1e9,
        );
    }
}
