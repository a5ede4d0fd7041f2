//! The footer that makes a raw page blob a fixed VHD, the format Azure imports as a
//! managed disk (virtual size a whole number of MiB, 512-byte footer after the data).

use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
/// 2000-01-01T00:00:00Z, the VHD timestamp epoch, in Unix seconds.
const VHD_EPOCH: u64 = 946_684_800;

/// The VHD virtual size for a disk of `size` bytes: rounded up to a whole MiB.
pub fn virtual_size(size: u64) -> u64 {
    size.div_ceil(MIB).max(1) * MIB
}

/// CHS geometry as the VHD specification computes it.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the specification's algorithm bounds them: total is capped at 65535 * 16 * 255 sectors, so cylinders <= 65535, heads <= 16 and sectors per track <= 255"
)]
pub fn geometry(size: u64) -> (u16, u8, u8) {
    let mut total = size / 512;
    if total > 65535 * 16 * 255 {
        total = 65535 * 16 * 255;
    }
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

/// A fixed-disk VHD footer for a disk of `size` bytes (a multiple of 1 MiB).
pub fn footer(size: u64, now_unix: u64, id: &str) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // format version 1.0
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed)
    // Seconds since 2000 in 32 bits: saturates in 2136.
    let stamp = u32::try_from(now_unix.saturating_sub(VHD_EPOCH)).unwrap_or(u32::MAX);
    f[24..28].copy_from_slice(&stamp.to_be_bytes());
    f[28..32].copy_from_slice(b"lbt ");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = geometry(size);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // disk type: fixed
    let uid = Sha256::digest(format!("{id}:{now_unix}").as_bytes());
    f[68..84].copy_from_slice(&uid[..16]);
    let sum: u32 = f.iter().map(|b| u32::from(*b)).sum();
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_has_the_fixed_vhd_layout_and_a_valid_checksum() {
        let size = virtual_size(4 << 20);
        assert_eq!(size, 4 << 20);
        assert_eq!(virtual_size(1), MIB);
        assert_eq!(virtual_size((4 << 20) + 1), 5 << 20);
        let f = footer(size, VHD_EPOCH + 10, "d");
        assert_eq!(&f[0..8], b"conectix");
        assert_eq!(u64::from_be_bytes(f[48..56].try_into().unwrap()), size);
        assert_eq!(u32::from_be_bytes(f[60..64].try_into().unwrap()), 2);
        assert_eq!(u32::from_be_bytes(f[24..28].try_into().unwrap()), 10);
        let stored = u32::from_be_bytes(f[64..68].try_into().unwrap());
        let mut g = f;
        g[64..68].fill(0);
        let sum: u32 = g.iter().map(|b| u32::from(*b)).sum();
        assert_eq!(stored, !sum);
    }

    #[test]
    fn geometry_follows_the_vhd_specification() {
        // 4 MiB: 8192 sectors -> 17 sectors/track, 4 heads, 120 cylinders.
        assert_eq!(geometry(4 << 20), (120, 4, 17));
        // 127 GiB and more: capped at 65535 cylinders, 16 heads, 255 sectors.
        assert_eq!(geometry(2 << 40), (65535, 16, 255));
    }
}
