//! Envelope encryption for replication chunks, as a Lifeboat cipher plugin.
//!
//! The plugin owns the envelope, the nonces and the key choice; the AEAD itself runs in
//! the host (`aead` import), natively with AES-NI, under keys the plugin only names.
//!
//! # Envelope v1 (frozen)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `LBS1` (0x4C 0x42 0x53 0x31) — do not modify |
//! | 4 | 1 | algorithm: 1 = AES-256-GCM, 2 = ChaCha20-Poly1305 |
//! | 5 | 1 | key id length `L`, 1..=255 |
//! | 6 | L | key id, UTF-8 |
//! | 6+L | 12 | nonce |
//! | 18+L | n | ciphertext |
//! | 18+L+n | 16 | tag |
//!
//! The AEAD's associated data is the host's `aad` (disk and sequence) followed by the
//! header bytes 0..18+L, so neither the chunk's place nor its header can be changed.
//!
//! # Nonces
//!
//! nonce = 8-byte random prefix ‖ 4-byte big-endian counter. The prefix is drawn from
//! the host's random source when the instance starts and again whenever the counter
//! wraps, so nonces are unique across restarts and across process servers without
//! shared state: two instances collide only if they draw the same 64-bit prefix
//! (birthday bound: 2^32 instances per key) and counters overlap. Rotate keys well
//! before 2^32 chunks per key (the host adds a new active key; the next `seal` uses it).

use lifeboat_sdk::cipher::{Cipher, aead};
use lifeboat_sdk::{PluginError, Settings};

/// Frozen envelope magic, version 1. Do not modify.
pub const MAGIC_V1: [u8; 4] = *b"LBS1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// The cipher: current nonce prefix and counter.
pub struct AesGcm {
    prefix: [u8; 8],
    counter: u32,
}

fn random_prefix() -> Result<[u8; 8], PluginError> {
    let mut p = [0u8; 8];
    getrandom::fill(&mut p)
        .map_err(|e| PluginError::Internal(format!("no random source for nonces: {e}")))?;
    Ok(p)
}

fn alg_code(a: aead::Algorithm) -> u8 {
    match a {
        aead::Algorithm::Aes256Gcm => 1,
        aead::Algorithm::Chacha20Poly1305 => 2,
    }
}

/// Parses an envelope header: (algorithm code, key id, nonce, header length).
pub fn parse_header(env: &[u8]) -> Result<(u8, &str, &[u8], usize), PluginError> {
    let bad = |m: &str| PluginError::Invalid(format!("not a Lifeboat envelope: {m}"));
    if env.len() < 6 || env[..4] != MAGIC_V1 {
        return Err(bad("bad magic or too short"));
    }
    let alg = env[4];
    if alg != 1 && alg != 2 {
        return Err(bad("unknown algorithm"));
    }
    let l = env[5] as usize;
    let header = 6 + l + NONCE_LEN;
    if l == 0 || env.len() < header + TAG_LEN {
        return Err(bad("truncated"));
    }
    let id = std::str::from_utf8(&env[6..6 + l]).map_err(|_| bad("key id is not UTF-8"))?;
    Ok((alg, id, &env[6 + l..header], header))
}

impl AesGcm {
    fn next_nonce(&mut self) -> Result<[u8; NONCE_LEN], PluginError> {
        if self.counter == u32::MAX {
            self.prefix = random_prefix()?;
            self.counter = 0;
        }
        self.counter += 1;
        let mut n = [0u8; NONCE_LEN];
        n[..8].copy_from_slice(&self.prefix);
        n[8..].copy_from_slice(&self.counter.to_be_bytes());
        Ok(n)
    }
}

impl Cipher for AesGcm {
    fn init(_settings: Settings) -> Result<Self, PluginError> {
        Ok(AesGcm { prefix: random_prefix()?, counter: 0 })
    }

    fn seal(&mut self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, PluginError> {
        let key = aead::keys().into_iter().find(|k| k.active).ok_or_else(|| {
            PluginError::Invalid("the host holds no active key for this plugin".into())
        })?;
        let id_len = match u8::try_from(key.id.len()) {
            Ok(n) if n > 0 => n,
            _ => return Err(PluginError::Invalid("key id must be 1..=255 bytes".into())),
        };
        let nonce = self.next_nonce()?;
        let mut header = Vec::with_capacity(6 + key.id.len() + NONCE_LEN);
        header.extend_from_slice(&MAGIC_V1);
        header.push(alg_code(key.algorithm));
        header.push(id_len);
        header.extend_from_slice(key.id.as_bytes());
        header.extend_from_slice(&nonce);
        let full_aad = [aad, &header].concat();
        let sealed = aead::seal(&key.id, &nonce, &full_aad, plaintext)?;
        let mut out = header;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn open(&mut self, aad: &[u8], envelope: &[u8]) -> Result<Vec<u8>, PluginError> {
        let (_alg, key_id, nonce, header_len) = parse_header(envelope)?;
        let full_aad = [aad, &envelope[..header_len]].concat();
        aead::open(key_id, nonce, &full_aad, &envelope[header_len..])
    }
}

lifeboat_sdk::export_cipher!(AesGcm);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parser_rejects_malformed_envelopes() {
        let mut good = MAGIC_V1.to_vec();
        good.extend_from_slice(&[1, 2]);
        good.extend_from_slice(b"k1");
        good.extend_from_slice(&[0; NONCE_LEN + TAG_LEN]);
        let (alg, id, nonce, h) = parse_header(&good).unwrap();
        assert_eq!((alg, id, nonce.len(), h), (1, "k1", 12, 20));
        for cut in 0..good.len() {
            assert!(parse_header(&good[..cut]).is_err(), "accepted {cut} bytes");
        }
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(parse_header(&bad).is_err());
        let mut bad = good.clone();
        bad[4] = 9;
        assert!(parse_header(&bad).is_err());
        let mut bad = good.clone();
        bad[5] = 0;
        assert!(parse_header(&bad).is_err());
    }

    #[test]
    fn nonces_never_repeat_across_counter_wrap() {
        let mut c = AesGcm { prefix: [1; 8], counter: u32::MAX - 1 };
        let a = c.next_nonce().unwrap();
        let b = c.next_nonce().unwrap();
        assert_ne!(a, b);
        assert_ne!(&b[..8], &[1; 8], "prefix redrawn after wrap");
    }
}
