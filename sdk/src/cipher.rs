//! The cipher world: sealing replication chunks through the host's native AEAD.
//!
//! The plugin decides the envelope, the nonce scheme and which key seals; the bulk
//! encryption runs natively in the host ([`aead::seal`], [`aead::open`]), so key bytes
//! never enter plugin memory and AES-GCM runs at AES-NI speed.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/lifeboat-plugins@0.1.0",
        world: "cipher-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_cipher_world",
        default_bindings_module: "lifeboat_sdk::cipher::bindings",
        runtime_path: "lifeboat_sdk::__wit_bindgen::rt",
    });
}

use crate::{PluginError, Settings};
use bindings::exports::lifeboat::plugins::cipher as gen_;

error_conversions!(bindings::lifeboat::plugins::types::PluginError);

/// The host's AEAD: keys by id, seal and open natively.
pub mod aead {
    pub use super::bindings::lifeboat::plugins::aead::{Algorithm, KeyInfo, keys};
    use crate::PluginError;

    /// Encrypts `plaintext` under the host-held key `key_id`; returns ciphertext || tag.
    pub fn seal(
        key_id: &str,
        nonce: &[u8],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, PluginError> {
        super::bindings::lifeboat::plugins::aead::seal(key_id, nonce, aad, plaintext)
            .map_err(Into::into)
    }

    /// Decrypts and authenticates `ciphertext` (tag at the end) under `key_id`.
    pub fn open(
        key_id: &str,
        nonce: &[u8],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, PluginError> {
        super::bindings::lifeboat::plugins::aead::open(key_id, nonce, aad, ciphertext)
            .map_err(Into::into)
    }
}

/// An encryption plugin.
pub trait Cipher: Sized + 'static {
    /// Builds the cipher from its settings.
    fn init(settings: Settings) -> Result<Self, PluginError>;
    /// Seals `plaintext` bound to `aad`, returning a self-describing envelope.
    fn seal(&mut self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, PluginError>;
    /// Opens an envelope made by `seal` with the same `aad`.
    fn open(&mut self, aad: &[u8], envelope: &[u8]) -> Result<Vec<u8>, PluginError>;
}

thread_local! {
    static SLOT: crate::slot::Slot = const { crate::slot::Slot::new() };
}

/// Adapts a [`Cipher`] to the generated bindings; used by [`export_cipher!`](crate::export_cipher).
#[doc(hidden)]
pub struct Exported<T>(std::marker::PhantomData<T>);

type GenError = bindings::lifeboat::plugins::types::PluginError;

impl<T: Cipher> gen_::Guest for Exported<T> {
    fn init(settings: Settings) -> Result<(), GenError> {
        let cipher = T::init(settings)?;
        SLOT.with(|s| s.set(cipher));
        Ok(())
    }
    fn seal(aad: Vec<u8>, plaintext: Vec<u8>) -> Result<Vec<u8>, GenError> {
        Ok(SLOT.with(|s| s.with(|c: &mut T| c.seal(&aad, &plaintext)))?)
    }
    fn open(aad: Vec<u8>, envelope: Vec<u8>) -> Result<Vec<u8>, GenError> {
        Ok(SLOT.with(|s| s.with(|c: &mut T| c.open(&aad, &envelope)))?)
    }
}

/// Exports a [`Cipher`] implementation as the plugin's cipher world.
#[macro_export]
macro_rules! export_cipher {
    ($t:ty) => {
        // Component exports exist only in the wasm build; a native build (tests, clippy)
        // compiles the plugin as an ordinary library.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __LifeboatCipherExport = $crate::cipher::Exported<$t>;
            $crate::cipher::bindings::__export_cipher_world!(
                __LifeboatCipherExport with_types_in $crate::cipher::bindings
            );
        };
    };
}
