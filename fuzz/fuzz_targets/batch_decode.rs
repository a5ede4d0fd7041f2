//! Arbitrary bytes into the batch decoder: it must never panic, and whatever it accepts must
//! survive a round trip unchanged, byte for byte (the encoding is canonical).
//!
//! Run with `cargo +nightly fuzz run batch_decode` from the repository root; seed the corpus
//! with a few encoded batches to get past the checksums faster.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The streaming entry point sees the same bytes first, as a socket reader would.
    let _ = lifeboat_wire::read_header(data);
    if let Ok(batch) = lifeboat_wire::decode(data) {
        let bytes = lifeboat_wire::encode(&batch);
        assert_eq!(bytes, data, "encode(decode(x)) != x");
        let again = lifeboat_wire::decode(&bytes).expect("re-encoded batch decodes");
        assert_eq!(again, batch, "decode(encode(batch)) != batch");
    }
});
