//! The wasmtime engine, its linkers and the epoch ticker.

use crate::keys::KeyRing;
use crate::manifest::PluginKind;
use crate::state::HostState;
use crate::worlds;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::Component;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the engine's epoch advances; per-call deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Largest linear memory any plugin can have, whatever it is granted (pool slot size).
const MAX_MEMORY_BYTES: usize = 1 << 30;

/// Stops the ticker thread when the last [`Host`] clone is dropped.
struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

pub(crate) struct Inner {
    pub(crate) engine: Engine,
    pub(crate) codec_linker: Linker<HostState>,
    pub(crate) cipher_linker: Linker<HostState>,
    pub(crate) target_linker: Linker<HostState>,
    pub(crate) quiescer_linker: Linker<HostState>,
    pub(crate) action_linker: Linker<HostState>,
    pub(crate) keys: KeyRing,
    _ticker: Ticker,
}

/// The plugin runtime of one process: engine, linkers, keys. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

impl Host {
    /// Builds the engine (pooling allocator, epoch interruption) and the linkers of every
    /// world. `keys` are the AEAD keys cipher plugins may name.
    pub fn new(keys: KeyRing) -> wasmtime::Result<Host> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(256)
            .total_core_instances(1024)
            .total_memories(256)
            .total_tables(1024)
            .max_memory_size(MAX_MEMORY_BYTES)
            .max_core_instances_per_component(32)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            // Keep the first MiB of a reused slot's memory resident: a new instance then
            // starts without page faults for its stack and small heap.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;

        let stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.weak();
            let stop = stop.clone();
            std::thread::Builder::new().name("plugin-epoch".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match engine.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })?;
        }

        Ok(Host {
            inner: Arc::new(Inner {
                codec_linker: worlds::codec_linker(&engine)?,
                cipher_linker: worlds::cipher_linker(&engine)?,
                target_linker: worlds::target_linker(&engine)?,
                quiescer_linker: worlds::quiescer_linker(&engine)?,
                action_linker: worlds::action_linker(&engine)?,
                engine,
                keys,
                _ticker: Ticker(stop),
            }),
        })
    }

    /// The engine (for tests and benchmarks).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }
}

/// A plugin pre-linked against its world's linker. One per loaded plugin, so the size
/// difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Pre {
    Codec(worlds::gen_codec::CodecPluginPre<HostState>),
    Cipher(worlds::gen_cipher::CipherPluginPre<HostState>),
    Target(worlds::gen_target::TargetPluginPre<HostState>),
    Quiescer(worlds::gen_quiescer::QuiescerPluginPre<HostState>),
    Action(worlds::gen_action::ActionPluginPre<HostState>),
}

impl Pre {
    pub(crate) fn new(host: &Host, kind: PluginKind, c: &Component) -> wasmtime::Result<Pre> {
        let i = &host.inner;
        Ok(match kind {
            PluginKind::Codec => Pre::Codec(worlds::gen_codec::CodecPluginPre::new(
                i.codec_linker.instantiate_pre(c)?,
            )?),
            PluginKind::Cipher => Pre::Cipher(worlds::gen_cipher::CipherPluginPre::new(
                i.cipher_linker.instantiate_pre(c)?,
            )?),
            PluginKind::Target => Pre::Target(worlds::gen_target::TargetPluginPre::new(
                i.target_linker.instantiate_pre(c)?,
            )?),
            PluginKind::Quiescer => Pre::Quiescer(worlds::gen_quiescer::QuiescerPluginPre::new(
                i.quiescer_linker.instantiate_pre(c)?,
            )?),
            PluginKind::Action => Pre::Action(worlds::gen_action::ActionPluginPre::new(
                i.action_linker.instantiate_pre(c)?,
            )?),
        })
    }
}
