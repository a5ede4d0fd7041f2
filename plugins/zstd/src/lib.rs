//! zstd compression as a Lifeboat codec plugin.
//!
//! The C zstd library is compiled into the component (for wasm32-wasip2 against
//! wasi-libc's headers). One compression and one decompression context live for the
//! whole instance, so no per-chunk context setup or window allocation happens.

use lifeboat_sdk::codec::Codec;
use lifeboat_sdk::{PluginError, Settings, setting};

/// The codec: reusable zstd contexts plus the default level from the settings.
pub struct Zstd {
    compressor: zstd::bulk::Compressor<'static>,
    decompressor: zstd::bulk::Decompressor<'static>,
    level: i32,
}

fn internal(what: &str, e: std::io::Error) -> PluginError {
    PluginError::Internal(format!("zstd {what}: {e}"))
}

impl Codec for Zstd {
    fn init(settings: Settings) -> Result<Self, PluginError> {
        let level = match setting(&settings, "level") {
            None => 1,
            Some(v) => v.parse::<i32>().map_err(|_| {
                PluginError::Invalid(format!("setting `level` = {v:?}: expected an integer 1..=22"))
            })?,
        };
        if !zstd::compression_level_range().contains(&level) {
            return Err(PluginError::Invalid(format!(
                "setting `level` = {level}: zstd levels are {:?}",
                zstd::compression_level_range()
            )));
        }
        Ok(Zstd {
            compressor: zstd::bulk::Compressor::new(level).map_err(|e| internal("init", e))?,
            decompressor: zstd::bulk::Decompressor::new().map_err(|e| internal("init", e))?,
            level,
        })
    }

    fn compress(&mut self, level: i32, data: &[u8]) -> Result<Vec<u8>, PluginError> {
        // Level 0 means "the configured level".
        let level = if level == 0 { self.level } else { level };
        self.compressor.set_compression_level(level).map_err(|e| internal("level", e))?;
        // Output never needs to exceed the input: bigger means "store raw", which the SDK
        // does when it sees output that is not smaller. A too-small buffer makes zstd fail,
        // which is the same verdict.
        let mut out = Vec::with_capacity(data.len());
        match self.compressor.compress_to_buffer(data, &mut out) {
            Ok(_) => Ok(out),
            Err(_) => Ok(data.to_vec()),
        }
    }

    fn decompress(&mut self, data: &[u8], expected_len: usize) -> Result<Vec<u8>, PluginError> {
        let mut out = Vec::with_capacity(expected_len);
        self.decompressor
            .decompress_to_buffer(data, &mut out)
            .map_err(|e| PluginError::Invalid(format!("zstd frame is corrupt: {e}")))?;
        Ok(out)
    }
}

lifeboat_sdk::export_codec!(Zstd);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_raw_rule() {
        let mut z = Zstd::init(vec![("level".into(), "3".into())]).unwrap();
        let text = b"lifeboat ".repeat(1000);
        let c = z.compress(0, &text).unwrap();
        assert!(c.len() < text.len());
        assert_eq!(z.decompress(&c, text.len()).unwrap(), text);
        // Incompressible input: the output is not smaller, which the SDK turns into "raw".
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let noise: Vec<u8> = (0..4096)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        assert!(z.compress(1, &noise).unwrap().len() >= noise.len());
    }

    #[test]
    fn bad_level_is_invalid() {
        assert!(matches!(
            Zstd::init(vec![("level".into(), "fast".into())]),
            Err(PluginError::Invalid(_))
        ));
    }

    #[test]
    fn corrupt_frame_is_invalid() {
        let mut z = Zstd::init(vec![]).unwrap();
        assert!(matches!(z.decompress(b"not zstd", 10), Err(PluginError::Invalid(_))));
    }
}
