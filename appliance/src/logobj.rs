//! Replication log objects: what the process server puts at the target and the master
//! target gets back. Frozen format v1 (docs/formats/log-object.md).
//!
//! ```text
//! offset size  field
//!  0      8    magic: sha256("Lifeboat log object v1")[..8] — do not modify
//!  8      2    version = 1 (LE)
//! 10      1    flags: bit 0 = the payload is codec output (else the raw batch);
//!                     bit 1 = the payload is not sealed (the machine's policy turned
//!                     encryption off; else a cipher envelope)
//! 11      1    reserved, 0
//! 12      4    length of the encoded batch (LE), at most MAX_BATCH_BYTES
//! 16     16    machine id
//! 32      4    disk index (LE)
//! 36      8    sequence (LE)
//! 44      4    crc32c of bytes 0..44 (LE)
//! 48      …    cipher envelope of the payload (its associated data is bytes 0..48), or
//!              the payload itself when bit 1 is set
//! ```
//!
//! The header travels in the clear so a master target can route and order objects
//! without keys, and is bound to the ciphertext as associated data, so an object cannot
//! be renamed, reordered or moved to another disk without the cipher refusing it.

use lifeboat_wire::{MAX_BATCH_BYTES, MachineId};

/// Frozen magic of log objects v1: the first 8 bytes of sha256("Lifeboat log object v1").
/// Do not modify.
pub const MAGIC_LOG_V1: [u8; 8] = [0x15, 0x75, 0xcf, 0xba, 0x3b, 0xdf, 0xbb, 0x72];
/// Header length.
pub const HEADER_LEN: usize = 48;
const FLAG_COMPRESSED: u8 = 1;
const FLAG_UNSEALED: u8 = 2;

/// The clear header of a log object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHeader {
    /// Payload is codec output (else the raw batch).
    pub compressed: bool,
    /// Payload is a cipher envelope (else in the clear: encryption off by policy).
    pub sealed: bool,
    /// Length of the encoded batch.
    pub batch_len: u32,
    /// Machine.
    pub machine: MachineId,
    /// Disk index.
    pub disk: u32,
    /// Sequence.
    pub sequence: u64,
}

/// A log object that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    /// Shorter than a header.
    #[error("log object is truncated ({0} bytes)")]
    Truncated(usize),
    /// Not a log object.
    #[error("not a Lifeboat log object (bad magic)")]
    BadMagic,
    /// A version this build does not read.
    #[error("log object version {0} is not supported; upgrade the master target")]
    Version(u16),
    /// Header checksum mismatch.
    #[error("log object header is corrupt (checksum mismatch)")]
    Checksum,
    /// Unknown flags or reserved bits set.
    #[error("log object header has unknown flags {0:#x}")]
    Flags(u8),
    /// Declared batch length out of range.
    #[error("log object declares a {0}-byte batch, over the {MAX_BATCH_BYTES}-byte limit")]
    TooLarge(u32),
    /// Header does not match the object's name.
    #[error("log object is for {found}, but its name says {expected}")]
    Misplaced {
        /// What the name says.
        expected: String,
        /// What the header says.
        found: String,
    },
}

impl LogHeader {
    /// Serialises the header (with its checksum).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&MAGIC_LOG_V1);
        h[8..10].copy_from_slice(&1u16.to_le_bytes());
        h[10] = if self.compressed { FLAG_COMPRESSED } else { 0 }
            | if self.sealed { 0 } else { FLAG_UNSEALED };
        h[12..16].copy_from_slice(&self.batch_len.to_le_bytes());
        h[16..32].copy_from_slice(&self.machine.0);
        h[32..36].copy_from_slice(&self.disk.to_le_bytes());
        h[36..44].copy_from_slice(&self.sequence.to_le_bytes());
        let crc = crc32c::crc32c(&h[..44]);
        h[44..48].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Parses and checks the header at the start of `obj`; returns it and the envelope.
    pub fn decode(obj: &[u8]) -> Result<(LogHeader, &[u8]), LogError> {
        if obj.len() < HEADER_LEN {
            return Err(LogError::Truncated(obj.len()));
        }
        let h = &obj[..HEADER_LEN];
        if h[..8] != MAGIC_LOG_V1 {
            return Err(LogError::BadMagic);
        }
        let version = u16::from_le_bytes([h[8], h[9]]);
        if version != 1 {
            return Err(LogError::Version(version));
        }
        let crc = u32::from_le_bytes(bytes(h, 44));
        if crc32c::crc32c(&h[..44]) != crc {
            return Err(LogError::Checksum);
        }
        if h[10] & !(FLAG_COMPRESSED | FLAG_UNSEALED) != 0 || h[11] != 0 {
            return Err(LogError::Flags(h[10] | h[11]));
        }
        let batch_len = u32::from_le_bytes(bytes(h, 12));
        if batch_len as usize > MAX_BATCH_BYTES {
            return Err(LogError::TooLarge(batch_len));
        }
        let mut machine = [0u8; 16];
        machine.copy_from_slice(&h[16..32]);
        Ok((
            LogHeader {
                compressed: h[10] & FLAG_COMPRESSED != 0,
                sealed: h[10] & FLAG_UNSEALED == 0,
                batch_len,
                machine: MachineId(machine),
                disk: u32::from_le_bytes(bytes(h, 32)),
                sequence: u64::from_le_bytes(bytes(h, 36)),
            },
            &obj[HEADER_LEN..],
        ))
    }

    /// Checks the header names the object it was stored as.
    pub fn expect(&self, machine: MachineId, disk: u32, sequence: u64) -> Result<(), LogError> {
        if (self.machine, self.disk, self.sequence) != (machine, disk, sequence) {
            return Err(LogError::Misplaced {
                expected: log_name(machine, disk, sequence),
                found: log_name(self.machine, self.disk, self.sequence),
            });
        }
        Ok(())
    }
}

/// The target id of a machine's replica disk.
pub fn disk_id(machine: MachineId, disk: u32) -> String {
    format!("{machine}-d{disk}")
}

/// The log-name prefix of one disk: every log of the disk starts with it.
pub fn log_prefix(machine: MachineId, disk: u32) -> String {
    format!("{machine}-d{disk}.")
}

/// The name of a log object; zero-padded so names sort in sequence order.
pub fn log_name(machine: MachineId, disk: u32, sequence: u64) -> String {
    format!("{}{sequence:020}", log_prefix(machine, disk))
}

/// Parses a log name back into its sequence, given the disk's prefix.
pub fn log_sequence(name: &str, prefix: &str) -> Option<u64> {
    let rest = name.strip_prefix(prefix)?;
    (rest.len() == 20 && rest.bytes().all(|b| b.is_ascii_digit()))
        .then(|| rest.parse().ok())
        .flatten()
}

/// The target id of a machine's recovery point.
pub fn point_id(machine: MachineId, point: u64) -> String {
    format!("{machine}-p{point:020}")
}

/// Parses a replica disk id (`<machine>-d<index>`).
pub fn parse_disk_id(id: &str) -> Option<(MachineId, u32)> {
    let (m, d) = id.rsplit_once("-d")?;
    Some((m.parse().ok()?, d.parse().ok()?))
}

/// The `N` bytes of the header `h` from `at` (`h` is [`HEADER_LEN`] bytes long).
fn bytes<const N: usize>(h: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&h[at..at + N]);
    out
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn magic_is_derived_from_the_versioned_string() {
        let d = Sha256::digest(b"Lifeboat log object v1");
        assert_eq!(&d[..8], &MAGIC_LOG_V1, "{:02x?}", &d[..8]);
    }

    fn header() -> LogHeader {
        LogHeader {
            sealed: true,
            compressed: true,
            batch_len: 4096,
            machine: MachineId([7; 16]),
            disk: 2,
            sequence: 99,
        }
    }

    #[test]
    fn round_trip_and_every_corruption_is_refused() {
        let mut obj = header().encode().to_vec();
        obj.extend_from_slice(b"envelope");
        let (h, env) = LogHeader::decode(&obj).unwrap();
        assert_eq!(h, header());
        assert_eq!(env, b"envelope");
        for i in 0..HEADER_LEN {
            let mut bad = obj.clone();
            bad[i] ^= 0x40;
            assert!(LogHeader::decode(&bad).is_err(), "byte {i} flip accepted");
        }
        for cut in 0..HEADER_LEN {
            assert_eq!(LogHeader::decode(&obj[..cut]), Err(LogError::Truncated(cut)));
        }
    }

    #[test]
    fn unsealed_objects_say_so() {
        let h = LogHeader { sealed: false, ..header() };
        let obj = h.encode();
        assert_eq!(obj[10], 1 | 2);
        assert_eq!(LogHeader::decode(&obj).unwrap().0, h);
    }

    #[test]
    fn misplaced_and_oversized_objects_are_refused() {
        let h = header();
        assert!(h.expect(MachineId([7; 16]), 2, 99).is_ok());
        let e = h.expect(MachineId([7; 16]), 2, 100).unwrap_err();
        assert!(e.to_string().contains("00000000000000000100"), "{e}");
        let mut big = header();
        big.batch_len = (MAX_BATCH_BYTES + 1) as u32;
        assert_eq!(LogHeader::decode(&big.encode()), Err(LogError::TooLarge(big.batch_len)));
    }

    #[test]
    fn names_sort_by_sequence_and_parse_back() {
        let m = MachineId([1; 16]);
        let a = log_name(m, 0, 9);
        let b = log_name(m, 0, 10);
        assert!(a < b);
        assert_eq!(log_sequence(&b, &log_prefix(m, 0)), Some(10));
        assert_eq!(log_sequence("junk", &log_prefix(m, 0)), None);
        assert_eq!(parse_disk_id(&disk_id(m, 3)), Some((m, 3)));
        assert_eq!(parse_disk_id("nonsense"), None);
    }
}
