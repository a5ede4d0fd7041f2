//! The action world: a recovery plan's pre or post action, run on the appliance.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/lifeboat-plugins@0.1.0",
        world: "action-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_action_world",
        default_bindings_module: "lifeboat_sdk::action::bindings",
        runtime_path: "lifeboat_sdk::__wit_bindgen::rt",
    });
}

use crate::{PluginError, Settings};
use bindings::exports::lifeboat::plugins::action as gen_;

pub use gen_::{PlanContext, PlanMachine};

error_conversions!(bindings::lifeboat::plugins::types::PluginError);

/// A recovery-plan action.
pub trait Action: Sized + 'static {
    /// Builds the action from its settings.
    fn init(settings: Settings) -> Result<Self, PluginError>;
    /// Runs it for the plan's `context`; on success, a line for the plan's log.
    fn run(&mut self, context: PlanContext) -> Result<String, PluginError>;
}

thread_local! {
    static SLOT: crate::slot::Slot = const { crate::slot::Slot::new() };
}

/// Adapts an [`Action`] to the generated bindings; used by [`export_action!`](crate::export_action).
#[doc(hidden)]
pub struct Exported<T>(std::marker::PhantomData<T>);

type GenError = bindings::lifeboat::plugins::types::PluginError;

impl<T: Action> gen_::Guest for Exported<T> {
    fn init(settings: Settings) -> Result<(), GenError> {
        let a = T::init(settings)?;
        SLOT.with(|s| s.set(a));
        Ok(())
    }
    fn run(context: PlanContext) -> Result<String, GenError> {
        Ok(SLOT.with(|s| s.with(|a: &mut T| a.run(context)))?)
    }
}

/// Exports an [`Action`] implementation as the plugin's action world.
#[macro_export]
macro_rules! export_action {
    ($t:ty) => {
        // Component exports exist only in the wasm build; a native build (tests, clippy)
        // compiles the plugin as an ordinary library.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __LifeboatActionExport = $crate::action::Exported<$t>;
            $crate::action::bindings::__export_action_world!(
                __LifeboatActionExport with_types_in $crate::action::bindings
            );
        };
    };
}
