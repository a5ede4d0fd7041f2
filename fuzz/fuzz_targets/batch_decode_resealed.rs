//! Like `batch_decode`, but the header crc32c and the trailer are recomputed before decoding.
//!
//! A fuzzer almost never guesses a checksum, so `batch_decode` mostly exercises the checks in
//! front of them; this target gets past them to the extent-table rules, the layout arithmetic
//! and the per-block checksums, where a slip would be an out-of-bounds slice or an overflow.
//! Block checksums are left alone: those are what the decoder must catch by itself here.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Header length and the position of its crc32c, from docs/formats/batch.md.
const HEADER_LEN: usize = 64;
const TRAILER_LEN: usize = 8;

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    if bytes.len() >= HEADER_LEN + TRAILER_LEN {
        let crc = crc32c::crc32c(&bytes[..HEADER_LEN - 4]);
        bytes[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        let n = bytes.len() - TRAILER_LEN;
        let body = xxhash_rust::xxh3::xxh3_64(&bytes[..n]);
        bytes[n..].copy_from_slice(&body.to_le_bytes());
    }
    if let Ok(batch) = lifeboat_wire::decode(&bytes) {
        assert_eq!(lifeboat_wire::encode(&batch), bytes, "encode(decode(x)) != x");
        let again = lifeboat_wire::decode(&bytes).expect("decodes twice");
        assert_eq!(again, batch);
    }
});
