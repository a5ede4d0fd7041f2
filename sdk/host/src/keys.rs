//! Keys the host holds for cipher plugins. Plugins name keys by id; the bytes stay here.

//! The AEADs are ring's (already in the tree through rustls): its AES-256-GCM uses VAES/AVX2
//! and interleaved GHASH, measured at several times the speed of the RustCrypto `aes-gcm`
//! crate's on our machines (see `docs/plugins.md`, "Host AEAD").

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use std::sync::Arc;

/// AEAD algorithm of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// AES-256-GCM (AES-NI when the CPU has it).
    Aes256Gcm,
    /// ChaCha20-Poly1305.
    ChaCha20Poly1305,
}

/// One key: id, algorithm, and its ready-to-use cipher (key schedule computed once).
pub struct Key {
    id: String,
    algorithm: Algorithm,
    active: bool,
    cipher: LessSafeKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm)
            .field("active", &self.active)
            .finish()
    }
}

impl Key {
    /// Builds a key from 32 bytes of material.
    #[expect(
        clippy::expect_used,
        reason = "AES-256-GCM and ChaCha20-Poly1305 both take a 32-byte key, and `material` is [u8; 32]"
    )]
    pub fn new(
        id: impl Into<String>,
        algorithm: Algorithm,
        material: &[u8; 32],
        active: bool,
    ) -> Key {
        let alg = match algorithm {
            Algorithm::Aes256Gcm => &aead::AES_256_GCM,
            Algorithm::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        };
        let cipher = LessSafeKey::new(
            UnboundKey::new(alg, material).expect("both algorithms take 32 bytes"),
        );
        Key { id: id.into(), algorithm, active, cipher }
    }
    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    /// Whether new data is sealed with this key.
    pub fn active(&self) -> bool {
        self.active
    }

    /// Encrypts `buf` in place and appends the 16-byte tag.
    pub fn seal_in_place(&self, nonce: &[u8], aad: &[u8], buf: &mut Vec<u8>) -> Result<(), String> {
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| format!("nonce must be 12 bytes, got {}", nonce.len()))?;
        self.cipher
            .seal_in_place_append_tag(nonce, Aad::from(aad), buf)
            .map_err(|_| "encryption failed".to_owned())
    }

    /// Authenticates and decrypts `buf` (ciphertext || tag) in place.
    pub fn open_in_place(&self, nonce: &[u8], aad: &[u8], buf: &mut Vec<u8>) -> Result<(), String> {
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| format!("nonce must be 12 bytes, got {}", nonce.len()))?;
        let plain = self.cipher.open_in_place(nonce, Aad::from(aad), buf).map_err(|_| {
            "authentication failed: wrong key, wrong associated data, or the data was altered"
                .to_owned()
        })?;
        let n = plain.len();
        buf.truncate(n);
        Ok(())
    }
}

/// The keys available to cipher plugins.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: Arc<Vec<Key>>,
}

impl KeyRing {
    /// A key ring holding `keys`.
    pub fn new(keys: Vec<Key>) -> KeyRing {
        KeyRing { keys: Arc::new(keys) }
    }
    /// Looks a key up by id.
    pub fn get(&self, id: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }
    /// All keys.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        for alg in [Algorithm::Aes256Gcm, Algorithm::ChaCha20Poly1305] {
            let k = Key::new("k1", alg, &[7; 32], true);
            let mut buf = b"replica bytes".to_vec();
            k.seal_in_place(&[1; 12], b"disk0:5", &mut buf).unwrap();
            assert_eq!(buf.len(), 13 + 16);
            let mut t = buf.clone();
            k.open_in_place(&[1; 12], b"disk0:5", &mut t).unwrap();
            assert_eq!(t, b"replica bytes");
            let mut wrong_aad = buf.clone();
            assert!(k.open_in_place(&[1; 12], b"disk0:6", &mut wrong_aad).is_err());
            let mut flipped = buf.clone();
            flipped[0] ^= 1;
            assert!(k.open_in_place(&[1; 12], b"disk0:5", &mut flipped).is_err());
            assert!(k.seal_in_place(&[1; 8], b"", &mut buf).is_err());
        }
    }

    #[test]
    fn debug_never_shows_material() {
        let k = Key::new("k1", Algorithm::Aes256Gcm, &[0xAB; 32], true);
        assert!(!format!("{k:?}").to_lowercase().contains("ab, ab"));
    }
}
