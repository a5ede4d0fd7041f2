//! The codec world: compression of replication chunks.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/lifeboat-plugins@0.1.0",
        world: "codec-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_codec_world",
        default_bindings_module: "lifeboat_sdk::codec::bindings",
        runtime_path: "lifeboat_sdk::__wit_bindgen::rt",
    });
}

use crate::{PluginError, Settings};
use bindings::exports::lifeboat::plugins::codec as gen_;

error_conversions!(bindings::lifeboat::plugins::types::PluginError);

/// A compression codec.
pub trait Codec: Sized + 'static {
    /// Builds the codec from its settings.
    fn init(settings: Settings) -> Result<Self, PluginError>;
    /// Compresses `data` at `level`. Returning output that is not smaller than `data` is
    /// fine: the SDK then stores `data` raw, as the contract requires.
    fn compress(&mut self, level: i32, data: &[u8]) -> Result<Vec<u8>, PluginError>;
    /// Reverses `compress`; the SDK checks the output has `expected_len` bytes.
    fn decompress(&mut self, data: &[u8], expected_len: usize) -> Result<Vec<u8>, PluginError>;
}

thread_local! {
    static SLOT: crate::slot::Slot = const { crate::slot::Slot::new() };
}

/// Adapts a [`Codec`] to the generated bindings; used by [`export_codec!`](crate::export_codec).
#[doc(hidden)]
pub struct Exported<T>(std::marker::PhantomData<T>);

type GenError = bindings::lifeboat::plugins::types::PluginError;

impl<T: Codec> gen_::Guest for Exported<T> {
    fn init(settings: Settings) -> Result<(), GenError> {
        let codec = T::init(settings)?;
        SLOT.with(|s| s.set(codec));
        Ok(())
    }

    fn compress(level: i32, data: Vec<u8>) -> Result<gen_::Encoded, GenError> {
        let out = SLOT.with(|s| s.with(|c: &mut T| c.compress(level, &data)))?;
        Ok(if out.len() < data.len() {
            gen_::Encoded { raw: false, data: out }
        } else {
            gen_::Encoded { raw: true, data }
        })
    }

    fn decompress(data: Vec<u8>, expected_len: u32) -> Result<Vec<u8>, GenError> {
        let expected = expected_len as usize;
        let out = SLOT.with(|s| s.with(|c: &mut T| c.decompress(&data, expected)))?;
        if out.len() != expected {
            return Err(GenError::Invalid(format!(
                "decompressed {} bytes where {expected} were expected: the chunk is corrupt",
                out.len()
            )));
        }
        Ok(out)
    }
}

/// Exports a [`Codec`] implementation as the plugin's codec world.
#[macro_export]
macro_rules! export_codec {
    ($t:ty) => {
        // Component exports exist only in the wasm build; a native build (tests, clippy)
        // compiles the plugin as an ordinary library.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __LifeboatCodecExport = $crate::codec::Exported<$t>;
            $crate::codec::bindings::__export_codec_world!(
                __LifeboatCodecExport with_types_in $crate::codec::bindings
            );
        };
    };
}
