//! On-disk byte layouts: segment header, record header, release-log header and
//! release-log entry. `docs/formats/cache.md` is the prose version of this file;
//! change both together, and only by adding a new version.
//!
//! All integers are little-endian. Every header carries its own crc32c
//! (Castagnoli) over the bytes before the crc field.

use crate::RecordKey;

/// Magic of a record header: the first 8 bytes of
/// `sha256("Lifeboat cache record v1")`.
///
/// FROZEN: do not modify. Existing caches on appliances in the field start every
/// record with these bytes; the test `magics_match_their_sha256_definition`
/// recomputes them.
pub(crate) const RECORD_MAGIC: [u8; 8] = [0x50, 0x5c, 0x0f, 0x4f, 0xaf, 0xeb, 0x35, 0x33];

/// Magic of a segment file header: the first 8 bytes of
/// `sha256("Lifeboat cache segment v1")`.
///
/// FROZEN: do not modify (see [`RECORD_MAGIC`]).
pub(crate) const SEGMENT_MAGIC: [u8; 8] = [0xb0, 0x9e, 0x4f, 0x6b, 0xca, 0xf3, 0xa2, 0xb4];

/// Magic of a release-log file header: the first 8 bytes of
/// `sha256("Lifeboat cache release log v1")`.
///
/// FROZEN: do not modify (see [`RECORD_MAGIC`]).
pub(crate) const RELEASE_MAGIC: [u8; 8] = [0x1c, 0x9b, 0x53, 0x1f, 0xd3, 0xa2, 0x97, 0x24];

/// Version of the segment file header this code writes and reads.
pub(crate) const SEGMENT_VERSION: u16 = 1;
/// Version of the record header this code writes and reads.
pub(crate) const RECORD_VERSION: u16 = 1;
/// Version of the release log this code writes and reads.
pub(crate) const RELEASE_VERSION: u16 = 1;

// Each size is defined once, in the type of the 2-byte header field that records it (or as a
// buffer length), and widened for file offsets and buffers.
const SEGMENT_HEADER_LEN_U16: u16 = 32;
const RECORD_HEADER_LEN_U16: u16 = 64;
const RELEASE_ENTRY_LEN_U16: u16 = 32;

/// Size of the segment file header.
pub(crate) const SEGMENT_HEADER_LEN: u64 = SEGMENT_HEADER_LEN_U16 as u64;
/// [`SEGMENT_HEADER_LEN`] as a buffer length.
pub(crate) const SEGMENT_HEADER_LEN_USIZE: usize = SEGMENT_HEADER_LEN_U16 as usize;
/// Size of a record header (the payload follows it directly).
pub(crate) const RECORD_HEADER_LEN: u64 = RECORD_HEADER_LEN_U16 as u64;
/// [`RECORD_HEADER_LEN`] as a buffer length.
pub(crate) const RECORD_HEADER_LEN_USIZE: usize = RECORD_HEADER_LEN_U16 as usize;
/// Size of the release-log file header, as a buffer length.
pub(crate) const RELEASE_HEADER_LEN_USIZE: usize = 32;
/// Size of the release-log file header.
pub(crate) const RELEASE_HEADER_LEN: u64 = RELEASE_HEADER_LEN_USIZE as u64;
/// Size of one release-log entry.
pub(crate) const RELEASE_ENTRY_LEN: u64 = RELEASE_ENTRY_LEN_U16 as u64;
/// [`RELEASE_ENTRY_LEN`] as a buffer length.
pub(crate) const RELEASE_ENTRY_LEN_USIZE: usize = RELEASE_ENTRY_LEN_U16 as usize;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Segment file header (32 bytes):
///
/// | off | len | field |
/// | --- | --- | --- |
/// | 0 | 8 | [`SEGMENT_MAGIC`] |
/// | 8 | 2 | version (1) |
/// | 10 | 2 | header length (32) |
/// | 12 | 4 | reserved, zero |
/// | 16 | 8 | segment number (equals the number in the file name) |
/// | 24 | 4 | reserved, zero |
/// | 28 | 4 | crc32c of bytes 0..28 |
pub(crate) fn encode_segment_header(segment: u64) -> [u8; SEGMENT_HEADER_LEN_USIZE] {
    let mut b = [0u8; SEGMENT_HEADER_LEN_USIZE];
    b[0..8].copy_from_slice(&SEGMENT_MAGIC);
    b[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    b[10..12].copy_from_slice(&SEGMENT_HEADER_LEN_U16.to_le_bytes());
    b[16..24].copy_from_slice(&segment.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Checks a segment header; returns the segment number it names, or a reason.
pub(crate) fn decode_segment_header(b: &[u8]) -> Result<u64, String> {
    if b.len() < SEGMENT_HEADER_LEN_USIZE {
        return Err(format!(
            "file is {} bytes, shorter than the {SEGMENT_HEADER_LEN}-byte segment header",
            b.len()
        ));
    }
    if b[0..8] != SEGMENT_MAGIC {
        return Err("wrong magic: not a Lifeboat cache segment".into());
    }
    let stored = u32_at(b, 28);
    let computed = crc32c::crc32c(&b[0..28]);
    if stored != computed {
        return Err(format!(
            "header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    let version = u16_at(b, 8);
    if version != SEGMENT_VERSION {
        return Err(format!(
            "segment format version {version}, this build reads only version {SEGMENT_VERSION}"
        ));
    }
    let header_len = u16_at(b, 10);
    if u64::from(header_len) != SEGMENT_HEADER_LEN {
        return Err(format!("header length {header_len}, expected {SEGMENT_HEADER_LEN}"));
    }
    Ok(u64_at(b, 16))
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub key: RecordKey,
    pub payload_len: u64,
    pub segment: u64,
    /// Offset in the segment up to which the segment was known durable (fsynced)
    /// when this record was written. Records of one group commit share it.
    pub sync_floor: u64,
    pub payload_crc: u32,
}

/// Record header (64 bytes), followed directly by `payload_len` payload bytes:
///
/// | off | len | field |
/// | --- | --- | --- |
/// | 0 | 8 | [`RECORD_MAGIC`] |
/// | 8 | 2 | version (1) |
/// | 10 | 2 | header length (64) |
/// | 12 | 4 | disk index |
/// | 16 | 8 | machine id |
/// | 24 | 8 | sequence |
/// | 32 | 8 | payload length |
/// | 40 | 8 | segment number |
/// | 48 | 8 | sync floor |
/// | 56 | 4 | crc32c of the payload |
/// | 60 | 4 | crc32c of bytes 0..60 |
pub(crate) fn encode_record_header(h: &RecordHeader) -> [u8; RECORD_HEADER_LEN_USIZE] {
    let mut b = [0u8; RECORD_HEADER_LEN_USIZE];
    b[0..8].copy_from_slice(&RECORD_MAGIC);
    b[8..10].copy_from_slice(&RECORD_VERSION.to_le_bytes());
    b[10..12].copy_from_slice(&RECORD_HEADER_LEN_U16.to_le_bytes());
    b[12..16].copy_from_slice(&h.key.disk.to_le_bytes());
    b[16..24].copy_from_slice(&h.key.machine.to_le_bytes());
    b[24..32].copy_from_slice(&h.key.sequence.to_le_bytes());
    b[32..40].copy_from_slice(&h.payload_len.to_le_bytes());
    b[40..48].copy_from_slice(&h.segment.to_le_bytes());
    b[48..56].copy_from_slice(&h.sync_floor.to_le_bytes());
    b[56..60].copy_from_slice(&h.payload_crc.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Why a record header was rejected.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderProblem {
    /// Bytes that are not an intact record header: wrong magic or checksum. At
    /// the tail of the last segment this is what a torn write looks like.
    Damaged(String),
    /// An intact header (checksum good) of a version this build cannot read.
    /// Never a torn write: always an error.
    Unsupported(String),
}

/// Checks and decodes a record header (exactly [`RECORD_HEADER_LEN`] bytes).
pub(crate) fn decode_record_header(b: &[u8]) -> Result<RecordHeader, HeaderProblem> {
    debug_assert_eq!(b.len(), RECORD_HEADER_LEN_USIZE);
    if b[0..8] != RECORD_MAGIC {
        return Err(HeaderProblem::Damaged("wrong record magic".into()));
    }
    let stored = u32_at(b, 60);
    let computed = crc32c::crc32c(&b[0..60]);
    if stored != computed {
        return Err(HeaderProblem::Damaged(format!(
            "record header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    let version = u16_at(b, 8);
    if version != RECORD_VERSION {
        return Err(HeaderProblem::Unsupported(format!(
            "record format version {version}, this build reads only version {RECORD_VERSION}"
        )));
    }
    let header_len = u16_at(b, 10);
    if u64::from(header_len) != RECORD_HEADER_LEN {
        return Err(HeaderProblem::Unsupported(format!(
            "record header length {header_len}, expected {RECORD_HEADER_LEN}"
        )));
    }
    Ok(RecordHeader {
        key: RecordKey { machine: u64_at(b, 16), disk: u32_at(b, 12), sequence: u64_at(b, 24) },
        payload_len: u64_at(b, 32),
        segment: u64_at(b, 40),
        sync_floor: u64_at(b, 48),
        payload_crc: u32_at(b, 56),
    })
}

/// Release-log file header (32 bytes):
///
/// | off | len | field |
/// | --- | --- | --- |
/// | 0 | 8 | [`RELEASE_MAGIC`] |
/// | 8 | 2 | version (1) |
/// | 10 | 2 | entry length (32) |
/// | 12 | 4 | reserved, zero |
/// | 16 | 8 | segment number this log belongs to |
/// | 24 | 4 | reserved, zero |
/// | 28 | 4 | crc32c of bytes 0..28 |
pub(crate) fn encode_release_header(segment: u64) -> [u8; RELEASE_HEADER_LEN_USIZE] {
    let mut b = [0u8; RELEASE_HEADER_LEN_USIZE];
    b[0..8].copy_from_slice(&RELEASE_MAGIC);
    b[8..10].copy_from_slice(&RELEASE_VERSION.to_le_bytes());
    b[10..12].copy_from_slice(&RELEASE_ENTRY_LEN_U16.to_le_bytes());
    b[16..24].copy_from_slice(&segment.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Checks a release-log header; returns the segment number it names.
pub(crate) fn decode_release_header(b: &[u8]) -> Result<u64, String> {
    if b.len() < RELEASE_HEADER_LEN_USIZE {
        return Err(format!(
            "file is {} bytes, shorter than the {RELEASE_HEADER_LEN}-byte release log header",
            b.len()
        ));
    }
    if b[0..8] != RELEASE_MAGIC {
        return Err("wrong magic: not a Lifeboat cache release log".into());
    }
    let stored = u32_at(b, 28);
    let computed = crc32c::crc32c(&b[0..28]);
    if stored != computed {
        return Err(format!(
            "header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    let version = u16_at(b, 8);
    if version != RELEASE_VERSION {
        return Err(format!(
            "release log format version {version}, this build reads only version {RELEASE_VERSION}"
        ));
    }
    let entry_len = u16_at(b, 10);
    if u64::from(entry_len) != RELEASE_ENTRY_LEN {
        return Err(format!("entry length {entry_len}, expected {RELEASE_ENTRY_LEN}"));
    }
    Ok(u64_at(b, 16))
}

/// Release-log entry (32 bytes): "the record at `offset` in this segment, whose
/// key is `key`, is durable at the target and must not be replayed".
///
/// | off | len | field |
/// | --- | --- | --- |
/// | 0 | 8 | record offset in the segment |
/// | 8 | 8 | machine id |
/// | 16 | 8 | sequence |
/// | 24 | 4 | disk index |
/// | 28 | 4 | crc32c of bytes 0..28 |
pub(crate) fn encode_release_entry(offset: u64, key: RecordKey) -> [u8; RELEASE_ENTRY_LEN_USIZE] {
    let mut b = [0u8; RELEASE_ENTRY_LEN_USIZE];
    b[0..8].copy_from_slice(&offset.to_le_bytes());
    b[8..16].copy_from_slice(&key.machine.to_le_bytes());
    b[16..24].copy_from_slice(&key.sequence.to_le_bytes());
    b[24..28].copy_from_slice(&key.disk.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a release-log entry; `None` if its checksum is wrong.
pub(crate) fn decode_release_entry(b: &[u8]) -> Option<(u64, RecordKey)> {
    debug_assert_eq!(b.len(), RELEASE_ENTRY_LEN_USIZE);
    if u32_at(b, 28) != crc32c::crc32c(&b[0..28]) {
        return None;
    }
    Some((
        u64_at(b, 0),
        RecordKey { machine: u64_at(b, 8), disk: u32_at(b, 24), sequence: u64_at(b, 16) },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn first8(s: &str) -> [u8; 8] {
        let d = Sha256::digest(s.as_bytes());
        let mut m = [0u8; 8];
        m.copy_from_slice(&d[..8]);
        m
    }

    #[test]
    fn magics_match_their_sha256_definition() {
        assert_eq!(RECORD_MAGIC, first8("Lifeboat cache record v1"));
        assert_eq!(SEGMENT_MAGIC, first8("Lifeboat cache segment v1"));
        assert_eq!(RELEASE_MAGIC, first8("Lifeboat cache release log v1"));
        // The checksum is crc32c (Castagnoli), as docs/formats/cache.md says.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn record_header_round_trips_and_detects_flips() {
        let h = RecordHeader {
            key: RecordKey { machine: 0x0102_0304_0506_0708, disk: 7, sequence: 99 },
            payload_len: 4 << 20,
            segment: 12,
            sync_floor: 32,
            payload_crc: 0xdead_beef,
        };
        let b = encode_record_header(&h);
        assert_eq!(decode_record_header(&b), Ok(h));
        for i in 0..b.len() {
            let mut c = b;
            c[i] ^= 0x10;
            assert!(decode_record_header(&c).is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn segment_and_release_headers_round_trip() {
        assert_eq!(decode_segment_header(&encode_segment_header(42)), Ok(42));
        assert_eq!(decode_release_header(&encode_release_header(42)), Ok(42));
        assert!(decode_segment_header(&encode_release_header(42)).is_err());
        assert!(decode_release_header(&encode_segment_header(42)).is_err());
        let key = RecordKey { machine: 1, disk: 2, sequence: 3 };
        let e = encode_release_entry(96, key);
        assert_eq!(decode_release_entry(&e), Some((96, key)));
        let mut bad = e;
        bad[3] ^= 1;
        assert_eq!(decode_release_entry(&bad), None);
    }

    #[test]
    fn layout_is_little_endian_at_documented_offsets() {
        // Pins the byte positions documented in docs/formats/cache.md.
        let h = RecordHeader {
            key: RecordKey {
                machine: 0x1111_1111_1111_1111,
                disk: 0x2222_2222,
                sequence: 0x3333_3333_3333_3333,
            },
            payload_len: 0x4444,
            segment: 0x55,
            sync_floor: 0x66,
            payload_crc: 0x7777_7777,
        };
        let b = encode_record_header(&h);
        assert_eq!(&b[8..10], &[1, 0]);
        assert_eq!(&b[10..12], &[64, 0]);
        assert_eq!(&b[12..16], &[0x22; 4]);
        assert_eq!(&b[16..24], &[0x11; 8]);
        assert_eq!(&b[24..32], &[0x33; 8]);
        assert_eq!(&b[32..40], &[0x44, 0x44, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[40..48], &[0x55, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[48..56], &[0x66, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[56..60], &[0x77; 4]);
        let s = encode_segment_header(0x0a);
        assert_eq!(&s[8..12], &[1, 0, 32, 0]);
        assert_eq!(&s[16..24], &[0x0a, 0, 0, 0, 0, 0, 0, 0]);
    }
}
