//! Magic numbers, format versions and protocol-version negotiation.

/// Magic of batch format v1: the first 8 bytes of sha256("Lifeboat batch v1").
///
/// DO NOT MODIFY. Batches written with it sit in process-server caches and target log areas
/// for as long as retention keeps them; changing a byte makes every one unreadable. A new
/// format gets a new magic, derived the same way from its own version string.
// sha256("Lifeboat batch v1")[0..8], checked by `tests::magics_match_their_derivation`.
pub const MAGIC_BATCH_V1: [u8; 8] = [0x77, 0x01, 0x20, 0x1a, 0xba, 0x28, 0x2f, 0xeb];

/// Magics that future formats v2..=v8 will have: the first 8 bytes of
/// sha256("Lifeboat batch vN"). The rule fixes them already, and knowing them lets this build
/// say "written by a newer Lifeboat, format vN" instead of "not a batch".
///
/// DO NOT MODIFY (same reason as [`MAGIC_BATCH_V1`]).
pub(crate) const FUTURE_MAGICS: [(u16, [u8; 8]); 7] = [
    (2, [0x7f, 0x0f, 0xe3, 0x7e, 0xe3, 0x02, 0xe2, 0x5b]),
    (3, [0x3b, 0x11, 0x1f, 0xcd, 0xd2, 0x97, 0x55, 0xdb]),
    (4, [0x25, 0x4f, 0xab, 0xe7, 0x56, 0x9e, 0x49, 0x98]),
    (5, [0x0a, 0x5e, 0x07, 0xec, 0x11, 0x38, 0x78, 0xac]),
    (6, [0x91, 0x74, 0x84, 0x42, 0xde, 0x90, 0xd8, 0x48]),
    (7, [0xfc, 0x99, 0x79, 0xcb, 0xec, 0x5e, 0x38, 0xeb]),
    (8, [0xe1, 0xe2, 0xd1, 0x5a, 0xe5, 0xe5, 0x62, 0xff]),
];

/// The batch format version [`crate::encode`] writes.
pub const FORMAT_VERSION: u16 = 1;

/// The batch format versions [`crate::decode`] reads.
pub const FORMAT_VERSIONS: &[u16] = &[1];

/// Versions of the agent <-> process-server protocol this build speaks, oldest first.
///
/// Protocol v1 carries batches in format v1. The protocol version is negotiated per
/// connection (see [`negotiate`]) so agents and appliances can be upgraded one at a time; the
/// batch format version is then implied by the protocol version and also written in every
/// batch, because batches are stored and read long after the connection is gone.
pub const PROTOCOL_VERSIONS: &[u16] = &[1];

/// The highest version both sides support, `None` when they share none.
///
/// The lists need not be sorted or free of duplicates: they come from the other side of a
/// connection and are only searched.
pub fn negotiate(ours: &[u16], theirs: &[u16]) -> Option<u16> {
    ours.iter().filter(|v| theirs.contains(v)).max().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn derive(version: u16) -> [u8; 8] {
        let digest = Sha256::digest(format!("Lifeboat batch v{version}").as_bytes());
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&digest[..8]);
        magic
    }

    #[test]
    fn magics_match_their_derivation() {
        assert_eq!(MAGIC_BATCH_V1, derive(1));
        for (version, magic) in FUTURE_MAGICS {
            assert_eq!(magic, derive(version), "magic of v{version}");
        }
    }

    #[test]
    fn current_version_is_decodable_and_negotiable() {
        assert!(FORMAT_VERSIONS.contains(&FORMAT_VERSION));
        assert_eq!(negotiate(PROTOCOL_VERSIONS, PROTOCOL_VERSIONS), Some(1));
    }

    #[test]
    fn negotiate_picks_highest_common() {
        assert_eq!(negotiate(&[1, 2, 3], &[2, 3, 4]), Some(3));
        assert_eq!(negotiate(&[3, 1, 2], &[2, 1]), Some(2));
        assert_eq!(negotiate(&[1], &[1, 1, 1]), Some(1));
        assert_eq!(negotiate(&[5, 1], &[9, 5, 7, 1]), Some(5));
    }

    #[test]
    fn negotiate_none_when_disjoint_or_empty() {
        assert_eq!(negotiate(&[1, 2], &[3, 4]), None);
        assert_eq!(negotiate(&[], &[1]), None);
        assert_eq!(negotiate(&[1], &[]), None);
        assert_eq!(negotiate(&[], &[]), None);
    }

    #[test]
    fn negotiate_is_symmetric() {
        let cases: [(&[u16], &[u16]); 4] =
            [(&[1, 2, 3], &[2, 3, 4]), (&[1], &[2]), (&[7, 3, 9], &[9, 3]), (&[], &[1])];
        for (a, b) in cases {
            assert_eq!(negotiate(a, b), negotiate(b, a), "{a:?} vs {b:?}");
        }
    }
}
