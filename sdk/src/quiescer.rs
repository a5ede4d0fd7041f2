//! The quiescer world: freezing an application for an app-consistent recovery point.
//! Runs inside the agent.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/lifeboat-plugins@0.1.0",
        world: "quiescer-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_quiescer_world",
        default_bindings_module: "lifeboat_sdk::quiescer::bindings",
        runtime_path: "lifeboat_sdk::__wit_bindgen::rt",
    });
}

use crate::{PluginError, Settings};
use bindings::exports::lifeboat::plugins::quiescer as gen_;

error_conversions!(bindings::lifeboat::plugins::types::PluginError);

/// Allow-listed commands the host runs for the plugin.
pub mod commands {
    pub use super::bindings::lifeboat::plugins::commands::CommandOutput;
    use crate::PluginError;

    /// Runs `program` (which must be granted) with `args`, without a shell.
    pub fn run(
        program: &str,
        args: &[String],
        timeout_ms: u32,
    ) -> Result<CommandOutput, PluginError> {
        super::bindings::lifeboat::plugins::commands::run(program, args, timeout_ms)
            .map_err(Into::into)
    }
}

/// An app-consistency plugin.
pub trait Quiescer: Sized + 'static {
    /// Builds the quiescer from its settings.
    fn init(settings: Settings) -> Result<Self, PluginError>;
    /// Gets ready (connect, check permissions) without freezing anything.
    fn prepare(&mut self) -> Result<(), PluginError> {
        Ok(())
    }
    /// Freezes the application; must finish within `deadline_ms`.
    fn freeze(&mut self, deadline_ms: u32) -> Result<(), PluginError>;
    /// Releases whatever `freeze` froze; called even after a failed freeze.
    fn thaw(&mut self) -> Result<(), PluginError>;
}

thread_local! {
    static SLOT: crate::slot::Slot = const { crate::slot::Slot::new() };
}

/// Adapts a [`Quiescer`] to the generated bindings; used by [`export_quiescer!`](crate::export_quiescer).
#[doc(hidden)]
pub struct Exported<T>(std::marker::PhantomData<T>);

type GenError = bindings::lifeboat::plugins::types::PluginError;

impl<T: Quiescer> gen_::Guest for Exported<T> {
    fn init(settings: Settings) -> Result<(), GenError> {
        let q = T::init(settings)?;
        SLOT.with(|s| s.set(q));
        Ok(())
    }
    fn prepare() -> Result<(), GenError> {
        Ok(SLOT.with(|s| s.with(|q: &mut T| q.prepare()))?)
    }
    fn freeze(deadline_ms: u32) -> Result<(), GenError> {
        Ok(SLOT.with(|s| s.with(|q: &mut T| q.freeze(deadline_ms)))?)
    }
    fn thaw() -> Result<(), GenError> {
        Ok(SLOT.with(|s| s.with(|q: &mut T| q.thaw()))?)
    }
}

/// Exports a [`Quiescer`] implementation as the plugin's quiescer world.
#[macro_export]
macro_rules! export_quiescer {
    ($t:ty) => {
        // Component exports exist only in the wasm build; a native build (tests, clippy)
        // compiles the plugin as an ordinary library.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __LifeboatQuiescerExport = $crate::quiescer::Exported<$t>;
            $crate::quiescer::bindings::__export_quiescer_world!(
                __LifeboatQuiescerExport with_types_in $crate::quiescer::bindings
            );
        };
    };
}
