//! The typed instances the appliance and agent call: lazy (re)instantiation, the
//! per-call deadline and memory limit, and results mapped to [`CallError`].

use crate::engine::{EPOCH_TICK, Pre};
use crate::load::LoadedPlugin;
use crate::state::HostState;
use crate::worlds::{
    CallError, Encoded, FailReason, PluginError, action, gen_action, gen_cipher, gen_codec,
    gen_quiescer, gen_target, target,
};
use std::sync::Arc;
use wasmtime::{Store, Trap};

/// A live store plus the world's bindings.
struct Live<B> {
    store: Store<HostState>,
    bindings: B,
}

fn new_store(plugin: &LoadedPlugin) -> Result<Store<HostState>, wasmtime::Error> {
    let state = HostState::new(plugin.name(), &plugin.caps, plugin.host.inner.keys.clone())?;
    let mut store = Store::new(&plugin.host.inner.engine, state);
    store.limiter(|s| &mut s.limits);
    // Instantiation runs the component's start code: it is bounded like a call.
    store.set_epoch_deadline(deadline_ticks(plugin));
    store.epoch_deadline_trap();
    Ok(store)
}

fn deadline_ticks(plugin: &LoadedPlugin) -> u64 {
    let ticks = (plugin.caps.deadline.as_micros() / EPOCH_TICK.as_micros()).max(1);
    u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
}

/// Turns a wasmtime error from a call into the reason the plugin was stopped.
fn classify(
    plugin: &LoadedPlugin,
    store: Option<&Store<HostState>>,
    e: wasmtime::Error,
) -> FailReason {
    if store.is_some_and(|s| s.data().limits.exceeded) {
        return FailReason::Memory((plugin.caps.memory_bytes >> 20) as u64);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => FailReason::Deadline(
            u64::try_from(plugin.caps.deadline.as_millis()).unwrap_or(u64::MAX),
        ),
        Some(t) => FailReason::Trap(format!("{t}: {e:#}")),
        None => FailReason::Host(format!("{e:#}")),
    }
}

/// Generates a typed instance for one world: lazy (re)instantiation with `init`, the
/// per-call deadline, and the mapping of results to [`CallError`].
macro_rules! instance_type {
    ($name:ident, $bindings:ty, $pre:ident, $init_out:ty, $doc:literal) => {
        #[doc = $doc]
        pub struct $name {
            plugin: Arc<LoadedPlugin>,
            live: Option<Live<$bindings>>,
            init_out: Option<$init_out>,
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("plugin", &self.plugin.name())
                    .field("live", &self.live.is_some())
                    .finish()
            }
        }

        impl $name {
            /// Instantiates `plugin` (which must be of this world) and calls its `init`.
            pub async fn new(plugin: Arc<LoadedPlugin>) -> Result<Self, CallError> {
                if !matches!(plugin.pre, Pre::$pre(_)) {
                    return Err(CallError::Failed {
                        plugin: plugin.name().to_owned(),
                        call: "instantiate",
                        reason: FailReason::Host(format!(
                            "it is a {} plugin, not the kind this role needs",
                            plugin.kind()
                        )),
                    });
                }
                if let Some(why) = plugin.unconfigured() {
                    return Err(CallError::Failed {
                        plugin: plugin.name().to_owned(),
                        call: "init",
                        reason: FailReason::Host(why.to_owned()),
                    });
                }
                let mut me = $name {
                    plugin,
                    live: None,
                    init_out: None,
                };
                me.ensure_live().await?;
                Ok(me)
            }

            /// The plugin this instance runs.
            pub fn plugin(&self) -> &Arc<LoadedPlugin> {
                &self.plugin
            }

            async fn ensure_live(&mut self) -> Result<(), CallError> {
                if self.live.is_some() {
                    return Ok(());
                }
                let Pre::$pre(pre) = &self.plugin.pre else {
                    unreachable!("checked in new")
                };
                let fail = |reason| CallError::Failed {
                    plugin: self.plugin.name().to_owned(),
                    call: "instantiate",
                    reason,
                };
                let mut store =
                    new_store(&self.plugin).map_err(|e| fail(FailReason::Host(format!("{e:#}"))))?;
                let bindings = pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(|e| fail(classify(&self.plugin, Some(&store), e)))?;
                self.live = Some(Live { store, bindings });
                let settings = self.plugin.caps.settings.clone();
                let out = instance_type!(@call self, "init", |b, s| instance_type!(@iface b, $pre).call_init(s, &settings))?;
                self.init_out = Some(out);
                Ok(())
            }
        }
    };
    (@iface $b:ident, Codec) => { $b.lifeboat_plugins_codec() };
    (@iface $b:ident, Cipher) => { $b.lifeboat_plugins_cipher() };
    (@iface $b:ident, Target) => { $b.lifeboat_plugins_target() };
    (@iface $b:ident, Quiescer) => { $b.lifeboat_plugins_quiescer() };
    (@iface $b:ident, Action) => { $b.lifeboat_plugins_action() };
    (@call $self:ident, $what:literal, |$b:ident, $s:ident| $body:expr) => {{
        let ticks = deadline_ticks(&$self.plugin);
        let live = $self.live.as_mut().expect("instance is live");
        live.store.set_epoch_deadline(ticks);
        live.store.epoch_deadline_trap();
        let $s = &mut live.store;
        let $b = &live.bindings;
        let r = $body.await;
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CallError::Plugin {
                plugin: $self.plugin.name().to_owned(),
                call: $what,
                error: PluginError::from(e),
            }),
            Err(e) => {
                let reason = classify(&$self.plugin, Some(&live.store), e);
                // The instance may be in any state after a trap: never call it again.
                $self.live = None;
                tracing::error!(plugin = %$self.plugin.name(), call = $what, %reason, "plugin stopped");
                Err(CallError::Failed {
                    plugin: $self.plugin.name().to_owned(),
                    call: $what,
                    reason,
                })
            }
        }
    }};
}

/// Runs one export call with the deadline and error mapping; (re)instantiates first.
macro_rules! call {
    ($self:ident, $pre:ident, $what:literal, |$i:ident, $s:ident| $body:expr) => {{
        $self.ensure_live().await?;
        instance_type!(@call $self, $what, |b, $s| {
            let $i = instance_type!(@iface b, $pre);
            $body
        })
    }};
}

instance_type!(CodecInstance, gen_codec::CodecPlugin, Codec, (), "A live codec plugin instance.");
instance_type!(
    CipherInstance,
    gen_cipher::CipherPlugin,
    Cipher,
    (),
    "A live cipher plugin instance."
);
instance_type!(
    TargetInstance,
    gen_target::TargetPlugin,
    Target,
    target::TargetCapabilities,
    "A live target plugin instance."
);
instance_type!(
    QuiescerInstance,
    gen_quiescer::QuiescerPlugin,
    Quiescer,
    (),
    "A live quiescer plugin instance."
);

instance_type!(
    ActionInstance,
    gen_action::ActionPlugin,
    Action,
    (),
    "A live action plugin instance."
);

impl ActionInstance {
    /// Runs the action with the plan's context; its line for the plan's log.
    pub async fn run(&mut self, context: &action::PlanContext) -> Result<String, CallError> {
        call!(self, Action, "run", |i, s| i.call_run(s, context))
    }
}

impl CodecInstance {
    /// Compresses `data`; `level` 0 means the plugin's configured level.
    pub async fn compress(&mut self, level: i32, data: &[u8]) -> Result<Encoded, CallError> {
        call!(self, Codec, "compress", |i, s| i.call_compress(s, level, data))
    }
    /// Decompresses a chunk that `compress` returned with `raw == false`.
    pub async fn decompress(
        &mut self,
        data: &[u8],
        expected_len: u32,
    ) -> Result<Vec<u8>, CallError> {
        call!(self, Codec, "decompress", |i, s| i.call_decompress(s, data, expected_len))
    }
}

impl CipherInstance {
    /// Seals `plaintext` bound to `aad`.
    pub async fn seal(&mut self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CallError> {
        call!(self, Cipher, "seal", |i, s| i.call_seal(s, aad, plaintext))
    }
    /// Opens an envelope made by `seal`.
    pub async fn open(&mut self, aad: &[u8], envelope: &[u8]) -> Result<Vec<u8>, CallError> {
        call!(self, Cipher, "open", |i, s| i.call_open(s, aad, envelope))
    }
}

impl QuiescerInstance {
    /// Gets the application ready to freeze.
    pub async fn prepare(&mut self) -> Result<(), CallError> {
        call!(self, Quiescer, "prepare", |i, s| i.call_prepare(s))
    }
    /// Freezes the application within `deadline_ms`.
    pub async fn freeze(&mut self, deadline_ms: u32) -> Result<(), CallError> {
        call!(self, Quiescer, "freeze", |i, s| i.call_freeze(s, deadline_ms))
    }
    /// Thaws the application.
    pub async fn thaw(&mut self) -> Result<(), CallError> {
        call!(self, Quiescer, "thaw", |i, s| i.call_thaw(s))
    }
}

impl TargetInstance {
    /// What the target said it can do in `init`.
    pub fn capabilities(&self) -> Option<&target::TargetCapabilities> {
        self.init_out.as_ref()
    }
    /// Health check.
    pub async fn health(&mut self) -> Result<String, CallError> {
        call!(self, Target, "health", |i, s| i.call_health(s))
    }
    /// Creates a zero-filled replica disk.
    pub async fn create_disk(&mut self, disk: &str, size: u64) -> Result<(), CallError> {
        call!(self, Target, "create-disk", |i, s| i.call_create_disk(s, disk, size))
    }
    /// Resizes a replica disk.
    pub async fn resize_disk(&mut self, disk: &str, size: u64) -> Result<(), CallError> {
        call!(self, Target, "resize-disk", |i, s| i.call_resize_disk(s, disk, size))
    }
    /// Deletes a replica disk.
    pub async fn delete_disk(&mut self, disk: &str) -> Result<(), CallError> {
        call!(self, Target, "delete-disk", |i, s| i.call_delete_disk(s, disk))
    }
    /// Lists replica disks.
    pub async fn list_disks(&mut self) -> Result<Vec<target::DiskInfo>, CallError> {
        call!(self, Target, "list-disks", |i, s| i.call_list_disks(s))
    }
    /// Writes extents and zero ranges.
    pub async fn write_extents(
        &mut self,
        disk: &str,
        extents: &[target::Extent],
        zeros: &[target::ZeroRange],
    ) -> Result<(), CallError> {
        call!(self, Target, "write-extents", |i, s| i.call_write_extents(s, disk, extents, zeros))
    }
    /// Reads `length` bytes at `offset`.
    pub async fn read_extent(
        &mut self,
        disk: &str,
        offset: u64,
        length: u32,
    ) -> Result<Vec<u8>, CallError> {
        call!(self, Target, "read-extent", |i, s| i.call_read_extent(s, disk, offset, length))
    }
    /// Makes the disk's writes durable.
    pub async fn flush_disk(&mut self, disk: &str) -> Result<(), CallError> {
        call!(self, Target, "flush-disk", |i, s| i.call_flush_disk(s, disk))
    }
    /// Creates a recovery point over `disks`.
    pub async fn create_point(
        &mut self,
        point: &str,
        tag: &str,
        disks: &[String],
    ) -> Result<target::PointInfo, CallError> {
        call!(self, Target, "create-point", |i, s| i.call_create_point(s, point, tag, disks))
    }
    /// Lists points by id prefix.
    pub async fn list_points(&mut self, prefix: &str) -> Result<Vec<target::PointInfo>, CallError> {
        call!(self, Target, "list-points", |i, s| i.call_list_points(s, prefix))
    }
    /// Deletes a point.
    pub async fn delete_point(&mut self, point: &str) -> Result<(), CallError> {
        call!(self, Target, "delete-point", |i, s| i.call_delete_point(s, point))
    }
    /// Materialises `disk` at `point` as `new_disk`.
    pub async fn materialize(
        &mut self,
        point: &str,
        disk: &str,
        new_disk: &str,
    ) -> Result<target::MaterializedDisk, CallError> {
        call!(self, Target, "materialize", |i, s| i.call_materialize(s, point, disk, new_disk))
    }
    /// Stores a log object.
    pub async fn put_log(&mut self, name: &str, data: &[u8]) -> Result<(), CallError> {
        call!(self, Target, "put-log", |i, s| i.call_put_log(s, name, data))
    }
    /// Reads a log object.
    pub async fn get_log(&mut self, name: &str) -> Result<Vec<u8>, CallError> {
        call!(self, Target, "get-log", |i, s| i.call_get_log(s, name))
    }
    /// Lists log names by prefix.
    pub async fn list_logs(&mut self, prefix: &str) -> Result<Vec<String>, CallError> {
        call!(self, Target, "list-logs", |i, s| i.call_list_logs(s, prefix))
    }
    /// Deletes a log object.
    pub async fn delete_log(&mut self, name: &str) -> Result<(), CallError> {
        call!(self, Target, "delete-log", |i, s| i.call_delete_log(s, name))
    }
    /// Creates a VM.
    pub async fn create_vm(&mut self, spec: &target::VmSpec) -> Result<String, CallError> {
        call!(self, Target, "create-vm", |i, s| i.call_create_vm(s, spec))
    }
    /// Deletes a VM.
    pub async fn delete_vm(&mut self, vm: &str) -> Result<(), CallError> {
        call!(self, Target, "delete-vm", |i, s| i.call_delete_vm(s, vm))
    }
    /// A VM's power state.
    pub async fn vm_state(&mut self, vm: &str) -> Result<target::PowerState, CallError> {
        call!(self, Target, "vm-state", |i, s| i.call_vm_state(s, vm))
    }
    /// Takes the disks of existing, stopped VM `vm` as disks `disks`; their sizes.
    pub async fn adopt_vm_disks(
        &mut self,
        vm: &str,
        disks: &[String],
    ) -> Result<Vec<u64>, CallError> {
        call!(self, Target, "adopt-vm-disks", |i, s| i.call_adopt_vm_disks(s, vm, disks))
    }
}
