//! Round trips and malformed input. Malformed batches are mostly made by editing a valid
//! encoding and then `reseal`ing it (fixing both checksums), so each test reaches the rule it
//! is about instead of stopping at a checksum.
#![allow(clippy::cast_possible_truncation)]

use std::borrow::Cow;

use crate::*;

/// SplitMix64: a few lines, seeded, good enough to spread test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

fn header(rng: &mut Rng) -> BatchHeader {
    let mut machine = [0u8; 16];
    machine.copy_from_slice(&rng.bytes(16));
    let tag = match rng.below(3) {
        0 => None,
        1 => Some(ConsistencyTag { kind: PointKind::Crash, point_id: rng.next() }),
        _ => Some(ConsistencyTag { kind: PointKind::App, point_id: rng.next() }),
    };
    BatchHeader {
        machine: MachineId(machine),
        disk_index: rng.next() as u32,
        sequence: rng.next(),
        tag,
    }
}

fn random_batch(rng: &mut Rng, max_extents: u64) -> Batch<'static> {
    let mut b = Batch::builder(header(rng));
    let mut offset = rng.below(1 << 20) * 512;
    for _ in 0..rng.below(max_extents + 1) {
        // Gaps of 0 make adjacent extents, which are allowed.
        offset += rng.below(4) * 512 * rng.below(100);
        let length = (1 + rng.below(24)) * 512;
        if rng.below(3) == 0 {
            let length = length * (1 + rng.below(1000));
            b.push_zero(offset, length).unwrap();
            offset += length;
        } else {
            b.push_data(offset, rng.bytes(length as usize)).unwrap();
            offset += length;
        }
    }
    b.build()
}

/// Recomputes the header crc32c and the trailer after a test edited the bytes.
fn reseal(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    let n = b.len();
    let body = xxhash_rust::xxh3::xxh3_64(&b[..n - 8]);
    b[n - 8..].copy_from_slice(&body.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Table entry `i` starts here.
fn entry(i: usize) -> usize {
    64 + 24 * i
}

fn hdr() -> BatchHeader {
    BatchHeader {
        machine: MachineId([7; 16]),
        disk_index: 2,
        sequence: 42,
        tag: Some(ConsistencyTag { kind: PointKind::Crash, point_id: 9 }),
    }
}

/// Data 0..4608 (two blocks, the second 512 bytes), zero 8192..16384, data 16384..16896.
fn small() -> Batch<'static> {
    let mut b = Batch::builder(hdr());
    b.push_data(0, (0..4608u32).map(|i| i as u8).collect::<Vec<_>>()).unwrap();
    b.push_zero(8192, 8192).unwrap();
    b.push_data(16384, vec![0xAB; 512]).unwrap();
    b.build()
}

/// Four zero extents, handy for table edits: no payload moves when entries change.
fn zeros() -> Vec<u8> {
    let mut b = Batch::builder(hdr());
    for i in 0..4 {
        b.push_zero(i * 16384, 4096).unwrap();
    }
    encode(&b.build())
}

#[test]
fn layout_sizes_are_frozen() {
    let bytes = encode(&small());
    // header + 3 entries + 4608 + 512 payload + 3 checksums + trailer
    assert_eq!(bytes.len(), 64 + 3 * 24 + 5120 + 3 * 8 + 8);
    assert_eq!(&bytes[..8], &MAGIC_BATCH_V1);
    assert_eq!(&bytes[8..10], &1u16.to_le_bytes());
    assert_eq!(bytes[10], 1, "crash tag");
    assert_eq!(&bytes[12..16], &2u32.to_le_bytes());
    assert_eq!(&bytes[16..32], &[7; 16]);
    assert_eq!(&bytes[32..40], &42u64.to_le_bytes());
    assert_eq!(&bytes[40..48], &9u64.to_le_bytes());
    assert_eq!(&bytes[48..56], &(bytes.len() as u64).to_le_bytes());
    assert_eq!(&bytes[56..60], &3u32.to_le_bytes());
    assert_eq!(bytes[entry(1) + 16], 1, "zero extent kind");
    let payload = entry(3);
    assert_eq!(bytes[payload + 4608], 0xAB, "second data extent follows the first");
    let sums = payload + 5120;
    assert_eq!(
        &bytes[sums + 8..sums + 16],
        &block_checksum(&bytes[payload + 4096..payload + 4608]).to_le_bytes(),
        "second block of the first extent is the 512-byte tail"
    );
    let n = bytes.len();
    assert_eq!(&bytes[n - 8..], &xxhash_rust::xxh3::xxh3_64(&bytes[..n - 8]).to_le_bytes());
}

#[test]
fn round_trip_random_batches() {
    let mut rng = Rng(0x5EED);
    for round in 0..300 {
        let batch = random_batch(&mut rng, if round % 10 == 0 { 200 } else { 12 });
        let bytes = encode(&batch);
        assert_eq!(bytes.len(), batch.encoded_len(), "round {round}");
        let decoded = decode(&bytes).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(decoded, batch, "round {round}");
        assert_eq!(
            decoded.block_checksums().collect::<Vec<_>>(),
            batch.block_checksums().collect::<Vec<_>>()
        );
        for e in decoded.extents() {
            if let Extent::Data { data, .. } = e {
                assert!(matches!(data, Cow::Borrowed(_)), "data is not copied");
                assert!(bytes.as_ptr_range().contains(&data.as_ptr()));
            }
        }
        assert_eq!(encode(&decoded), bytes, "encoding is canonical");
        assert_eq!(decoded.into_owned(), batch);
    }
}

#[test]
fn round_trip_empty_and_tag_only() {
    for tag in [None, Some(ConsistencyTag { kind: PointKind::App, point_id: u64::MAX })] {
        let batch = Batch::builder(BatchHeader { tag, ..hdr() }).build();
        let bytes = encode(&batch);
        assert_eq!(bytes.len(), 72);
        assert_eq!(decode(&bytes).unwrap(), batch);
    }
}

#[test]
fn round_trip_max_extents() {
    let mut b = Batch::builder(hdr());
    for i in 0..MAX_EXTENTS as u64 {
        b.push_zero(i * 1024, 512).unwrap();
    }
    assert!(!b.has_room_for(&Extent::Zero { offset: u64::MAX - 1023, length: 512 }));
    assert_eq!(
        b.push_zero(1 << 40, 512),
        Err(WireError::TooManyExtents { count: MAX_EXTENTS as u64 + 1 })
    );
    let batch = b.build();
    assert_eq!(decode(&encode(&batch)).unwrap(), batch);
}

#[test]
fn block_checksums_cover_short_last_block() {
    let batch = small();
    let data = batch.extents()[0].data().unwrap();
    let sums: Vec<u64> = batch.block_checksums().collect();
    assert_eq!(
        sums,
        vec![
            block_checksum(&data[..4096]),
            block_checksum(&data[4096..]),
            block_checksum(&[0xAB; 512]),
        ]
    );
}

#[test]
fn encode_into_appends_and_reuses_the_buffer() {
    let batch = small();
    let mut buf = b"prefix".to_vec();
    encode_into(&batch, &mut buf);
    assert_eq!(&buf[..6], b"prefix");
    assert_eq!(decode(&buf[6..]).unwrap(), batch);
    buf.clear();
    let cap = buf.capacity();
    encode_into(&batch, &mut buf);
    assert_eq!(buf.capacity(), cap, "no reallocation when the buffer is big enough");
    assert_eq!(buf, encode(&batch));
}

#[test]
fn read_header_needs_only_the_header() {
    let bytes = encode(&small());
    let frame = read_header(&bytes[..HEADER_LEN]).unwrap();
    assert_eq!(frame.header, hdr());
    assert_eq!(frame.encoded_len, bytes.len());
    assert_eq!(frame.extent_count, 3);
    assert_eq!(frame.format_version, 1);
    assert_eq!(
        read_header(&bytes[..HEADER_LEN - 1]),
        Err(WireError::Truncated { needed: 64, got: 63 })
    );
    let mut junk = bytes[..8].to_vec();
    junk[0] ^= 1;
    assert!(matches!(read_header(&junk), Err(WireError::BadMagic { .. })));
}

#[test]
fn truncated_at_every_position() {
    let bytes = encode(&small());
    for n in 0..bytes.len() {
        match decode(&bytes[..n]) {
            Err(WireError::Truncated { needed, got }) => {
                assert_eq!(got, n);
                assert!(needed > n as u64);
            }
            other => panic!("truncated to {n}: {other:?}"),
        }
    }
}

#[test]
fn trailing_garbage() {
    let mut bytes = encode(&small());
    let len = bytes.len() as u64;
    bytes.extend_from_slice(b"xyz");
    let err = decode(&bytes).unwrap_err();
    assert_eq!(err, WireError::TrailingBytes { declared: len, got: len + 3 });
    assert_eq!(
        err.to_string(),
        format!("3 trailing bytes after the batch's declared length of {len}")
    );
}

#[test]
fn corrupted_byte_anywhere_is_caught_by_the_right_checksum() {
    let good = encode(&small());
    for pos in 0..good.len() {
        for bit in [0, 7] {
            let mut bytes = good.clone();
            bytes[pos] ^= 1 << bit;
            let err = decode(&bytes).unwrap_err();
            let ok = match pos {
                0..8 => matches!(err, WireError::BadMagic { .. }),
                8..64 => matches!(err, WireError::HeaderChecksum { .. }),
                _ => matches!(err, WireError::BodyChecksum { .. }),
            };
            assert!(ok, "byte {pos} bit {bit}: {err}");
        }
    }
}

#[test]
fn damaged_block_is_named() {
    let good = encode(&small());
    let payload = entry(3);
    let sums = payload + 5120;
    let cases = [
        (payload + 5, 0, 0, 0),
        (payload + 4096 + 100, 0, 1, 4096),
        (payload + 4608 + 511, 2, 0, 16384),
        (sums + 3, 0, 0, 0),
        (sums + 16, 2, 0, 16384),
    ];
    for (pos, extent, block, disk_offset) in cases {
        let mut bytes = good.clone();
        bytes[pos] ^= 0x40;
        reseal(&mut bytes);
        match decode(&bytes) {
            Err(WireError::BlockChecksum { extent: e, block: b, disk_offset: d, .. }) => {
                assert_eq!((e, b, d), (extent, block, disk_offset), "byte {pos}")
            }
            other => panic!("byte {pos}: {other:?}"),
        }
    }
    let mut bytes = good.clone();
    bytes[payload + 4096] ^= 1;
    reseal(&mut bytes);
    let msg = decode(&bytes).unwrap_err().to_string();
    assert!(msg.starts_with("checksum mismatch in extent 0, block 1 (disk offset 4096)"), "{msg}");
}

#[test]
fn wrong_magic() {
    let mut bytes = encode(&small());
    bytes[..8].copy_from_slice(b"NOTABTCH");
    let err = decode(&bytes).unwrap_err();
    assert_eq!(err, WireError::BadMagic { found: *b"NOTABTCH" });
    assert!(
        err.to_string()
            .starts_with("not a Lifeboat batch: magic 4e4f544142544348 is not the v1 batch magic 7701201aba282feb"),
        "{err}"
    );
    assert!(decode(b"").is_err());
    assert!(matches!(decode(b"GET / HTTP/1.1\r\n"), Err(WireError::BadMagic { .. })));
}

#[test]
fn wrong_version() {
    // A batch from a future Lifeboat: the magic says which version.
    let mut bytes = encode(&small());
    bytes[..8].copy_from_slice(&version::FUTURE_MAGICS[0].1);
    let err = decode(&bytes).unwrap_err();
    assert_eq!(err, WireError::UnsupportedVersion { found: 2, supported: &[1] });
    assert!(err.to_string().starts_with("batch format version 2 is not supported"));

    // A v1 magic with another version number, from a buggy writer.
    let mut bytes = encode(&small());
    bytes[8..10].copy_from_slice(&3u16.to_le_bytes());
    assert!(matches!(decode(&bytes), Err(WireError::HeaderChecksum { .. })));
    reseal(&mut bytes);
    assert!(matches!(decode(&bytes), Err(WireError::UnsupportedVersion { found: 3, .. })));
}

#[test]
fn oversized_length_fields_are_refused_before_allocating() {
    let good = encode(&small());

    let mut bytes = good.clone();
    put_u64(&mut bytes, 48, MAX_BATCH_BYTES as u64 + 1);
    reseal(&mut bytes);
    assert_eq!(decode(&bytes), Err(WireError::TooLarge { len: MAX_BATCH_BYTES as u64 + 1 }));
    put_u64(&mut bytes, 48, u64::MAX);
    reseal(&mut bytes);
    assert!(matches!(decode(&bytes), Err(WireError::TooLarge { .. })));

    let mut bytes = good.clone();
    put_u32(&mut bytes, 56, u32::MAX);
    reseal(&mut bytes);
    assert_eq!(decode(&bytes), Err(WireError::TooManyExtents { count: u32::MAX.into() }));

    // A count within the limit whose table cannot fit in the declared length.
    let mut bytes = good.clone();
    put_u32(&mut bytes, 56, MAX_EXTENTS as u32);
    reseal(&mut bytes);
    assert!(matches!(decode(&bytes), Err(WireError::LayoutMismatch { .. })));

    // A declared length larger than the input: truncated, not an allocation.
    let mut bytes = good.clone();
    put_u64(&mut bytes, 48, MAX_BATCH_BYTES as u64);
    reseal(&mut bytes);
    assert_eq!(
        decode(&bytes),
        Err(WireError::Truncated { needed: MAX_BATCH_BYTES as u64, got: good.len() })
    );

    // A data extent claiming far more payload than the batch holds.
    let mut bytes = good.clone();
    put_u64(&mut bytes, entry(2) + 8, 1 << 40);
    reseal(&mut bytes);
    let err = decode(&bytes).unwrap_err();
    assert!(matches!(err, WireError::LayoutMismatch { .. }), "{err}");

    // A data extent one sector longer than its payload.
    let mut bytes = good.clone();
    put_u64(&mut bytes, entry(2) + 8, 1024);
    reseal(&mut bytes);
    assert_eq!(
        decode(&bytes),
        Err(WireError::LayoutMismatch {
            declared: good.len() as u64,
            needed: good.len() as u64 + 512
        })
    );
}

#[test]
fn reordered_extents() {
    let mut bytes = zeros();
    let (a, b) = (entry(1), entry(2));
    let e1: Vec<u8> = bytes[a..a + 24].to_vec();
    let e2: Vec<u8> = bytes[b..b + 24].to_vec();
    bytes[a..a + 24].copy_from_slice(&e2);
    bytes[b..b + 24].copy_from_slice(&e1);
    reseal(&mut bytes);
    let err = decode(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "extent 2 at offset 16384 comes after extent 1 at offset 32768: \
         extents must be sorted by offset"
    );

    // Without resealing, the same edit reads as corruption.
    let mut bytes = zeros();
    bytes[a..a + 24].copy_from_slice(&e2);
    bytes[b..b + 24].copy_from_slice(&e1);
    assert!(matches!(decode(&bytes), Err(WireError::BodyChecksum { .. })));
}

#[test]
fn overlapping_extents() {
    // 0..512, 1024..1536, 2048..8192, then extent 3 at 4096.
    let mut bytes = zeros();
    for (i, offset, length) in [(0, 0, 512), (1, 1024, 512), (2, 2048, 6144), (3, 4096, 4096)] {
        put_u64(&mut bytes, entry(i), offset);
        put_u64(&mut bytes, entry(i) + 8, length);
    }
    reseal(&mut bytes);
    let err = decode(&bytes).unwrap_err();
    assert_eq!(err, WireError::Overlap { index: 3, offset: 4096, prev: 2, prev_end: 8192 });
    assert_eq!(err.to_string(), "extent 3 at offset 4096 overlaps extent 2 ending at 8192");
}

#[test]
fn table_rules() {
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = zeros();
        f(&mut bytes);
        reseal(&mut bytes);
        decode(&bytes).unwrap_err()
    };
    assert_eq!(
        edit(&|b| put_u64(b, entry(1) + 8, 1000)),
        WireError::BadLength { index: 1, offset: 16384, length: 1000 }
    );
    assert_eq!(
        edit(&|b| put_u64(b, entry(0) + 8, 0)),
        WireError::BadLength { index: 0, offset: 0, length: 0 }
    );
    assert_eq!(
        edit(&|b| put_u64(b, entry(1), 16385)),
        WireError::UnalignedOffset { index: 1, offset: 16385 }
    );
    assert_eq!(
        edit(&|b| {
            put_u64(b, entry(3), u64::MAX - 511);
            put_u64(b, entry(3) + 8, 1024);
        }),
        WireError::ExtentOverflow { index: 3, offset: u64::MAX - 511, length: 1024 }
    );
    assert_eq!(
        edit(&|b| b[entry(2) + 16] = 7),
        WireError::UnknownExtentKind { index: 2, offset: 32768, kind: 7 }
    );
    assert_eq!(
        edit(&|b| b[entry(2) + 23] = 1),
        WireError::ReservedNotZero { field: "extent entry bytes 17..24", value: 1 << 48 }
    );
    // Turning a zero extent into a data extent without payload breaks the layout.
    assert!(matches!(edit(&|b| b[entry(0) + 16] = 0), WireError::LayoutMismatch { .. }));
}

#[test]
fn header_rules() {
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = encode(&small());
        f(&mut bytes);
        reseal(&mut bytes);
        decode(&bytes).unwrap_err()
    };
    assert_eq!(edit(&|b| b[10] = 3), WireError::UnknownTagKind { kind: 3 });
    assert_eq!(edit(&|b| b[10] = 0), WireError::PointIdWithoutTag { point_id: 9 });
    assert_eq!(
        edit(&|b| b[11] = 0x80),
        WireError::ReservedNotZero { field: "header flags (byte 11)", value: 0x80 }
    );
    assert!(matches!(
        edit(&|b| put_u64(b, 48, 71)),
        WireError::LayoutMismatch { declared: 71, needed: 144 }
    ));
}

#[test]
fn builder_refuses_what_decode_refuses_and_keeps_its_state() {
    let mut b = Batch::builder(hdr());
    b.push_data(4096, vec![1; 4096]).unwrap();
    let before = b.clone().build();
    assert_eq!(
        b.push_zero(0, 512),
        Err(WireError::Unsorted { index: 1, offset: 0, prev: 0, prev_offset: 4096 })
    );
    assert_eq!(
        b.push_zero(4096 + 3584, 512),
        Err(WireError::Overlap { index: 1, offset: 7680, prev: 0, prev_end: 8192 })
    );
    assert!(matches!(
        b.push_data(8192, vec![0; 100]),
        Err(WireError::BadLength { length: 100, .. })
    ));
    assert!(matches!(b.push_data(8192, Vec::new()), Err(WireError::BadLength { length: 0, .. })));
    assert!(matches!(b.push_zero(8193, 512), Err(WireError::UnalignedOffset { offset: 8193, .. })));
    assert!(matches!(b.push_zero(u64::MAX - 511, 1024), Err(WireError::ExtentOverflow { .. })));
    let huge = Extent::Data { offset: 1 << 30, data: Cow::Owned(vec![0; MAX_BATCH_BYTES]) };
    assert!(!b.has_room_for(&huge));
    assert!(matches!(b.push(huge), Err(WireError::TooLarge { .. })));
    assert_eq!(b.clone().build(), before, "failed pushes change nothing");
    b.push_zero(8192, 512).unwrap();
    assert_eq!(b.extent_count(), 2);
    assert_eq!(b.encoded_len(), 72 + 24 + 4096 + 8 + 24);
}

#[test]
fn borrowed_data_is_not_copied_by_the_builder() {
    let disk = vec![5u8; 8192];
    let mut b = Batch::builder(hdr());
    b.push_data(0, &disk[..4096]).unwrap();
    let batch = b.build();
    assert!(matches!(batch.extents()[0], Extent::Data { data: Cow::Borrowed(_), .. }));
    assert_eq!(batch.data_len(), 4096);
    assert_eq!(decode(&encode(&batch)).unwrap(), batch);
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = Rng(1);
    for _ in 0..2000 {
        let len = rng.below(300) as usize;
        let mut bytes = rng.bytes(len);
        if rng.below(2) == 0 && len >= 8 {
            bytes[..8].copy_from_slice(&MAGIC_BATCH_V1);
        }
        assert!(decode(&bytes).is_err());
    }
}

/// Random edits of valid batches, resealed so they get past the checksums: the decoder must
/// not panic, and whatever it accepts must encode back to the same bytes.
#[test]
fn resealed_mutations_never_panic_and_accepted_ones_round_trip() {
    let mut rng = Rng(2);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..3000 {
        let mut bytes = encode(&random_batch(&mut rng, 6));
        for _ in 0..1 + rng.below(3) {
            let pos = rng.below(bytes.len() as u64 - 8) as usize;
            if rng.below(2) == 0 {
                bytes[pos] ^= 1 << rng.below(8);
            } else {
                bytes[pos] = rng.next() as u8;
            }
        }
        if rng.below(4) != 0 {
            reseal(&mut bytes);
        }
        match decode(&bytes) {
            Ok(batch) => {
                assert_eq!(encode(&batch), bytes);
                accepted += 1;
            }
            Err(_) => refused += 1,
        }
    }
    // Both paths ran: edits of ids and sequence numbers are valid batches, the rest are not.
    assert!(accepted > 50 && refused > 1000, "{accepted} accepted, {refused} refused");
}

#[test]
fn machine_id_prints_as_uuid() {
    let id = MachineId([
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ]);
    assert_eq!(id.to_string(), "12345678-9abc-def0-0123-456789abcdef");
}

#[test]
fn error_messages_name_the_problem() {
    let e = WireError::TooLarge { len: 1 << 30 };
    assert_eq!(
        e.to_string(),
        "batch of 1073741824 bytes exceeds the limit of 67108864 bytes (MAX_BATCH_BYTES)"
    );
    let e = WireError::TooManyExtents { count: 70000 };
    assert_eq!(e.to_string(), "batch has 70000 extents, over the limit of 65536 (MAX_EXTENTS)");
    let e = WireError::BadLength { index: 4, offset: 512, length: 100 };
    assert_eq!(
        e.to_string(),
        "extent 4 at offset 512 has length 100, not a non-zero multiple of 512"
    );
}
