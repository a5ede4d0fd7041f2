//! The kernel side of the eBPF tracker: loading `src/bpf/tracker.bpf.c`, pinning it in
//! bpffs so tracking outlives the agent, registering disks, flipping epochs and harvesting
//! the bitmaps. See the parent module for the protocol.

use std::collections::HashMap;
use std::fs;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};
use libbpf_rs::{MapCore as _, MapFlags, MapHandle, RingBufferBuilder};

#[allow(
    clippy::all,
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::unwrap_used,
    clippy::expect_used,
    unused_qualifications
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/tracker.skel.rs"));
}

/// Version of the layout shared with the BPF program (maps, structs). Pins of another
/// version are never reused: the pin directory carries it.
pub const LAYOUT_VERSION: u32 = 3;
/// Most disks one loaded tracker follows.
pub const MAX_SLOTS: u32 = 64;
/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

const SLOT_STATE_LEN: usize = 128;
const OFF_EPOCH: usize = 0;
const OFF_OVERFLOW: usize = 8;
/// `inflight[0]`, `inflight[1]`: programs using each epoch.
const OFF_INFLIGHT: usize = 16;
const OFF_WRITES: usize = 32;
const OFF_DISCARDS: usize = 40;
const OFF_WRITE_ZEROES: usize = 48;
const OFF_SECURE: usize = 56;
const OFF_BYTES: usize = 64;
const OFF_TOKEN: usize = 72;
const OFF_RING: usize = 80;
const OFF_SIZES: usize = 88;
const DISK_INFO_LEN: usize = 32;
/// Longest wait for programs still using an old epoch (they run for nanoseconds).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of the kernel side. Any of them makes the agent use the hash scan instead.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// libbpf refused something (load, attach, pin, map access).
    #[error("{what}: {source}")]
    Libbpf {
        /// What was being done.
        what: String,
        /// libbpf's error.
        source: libbpf_rs::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The loaded tracker cannot follow one more disk.
    #[error("the eBPF tracker follows at most {MAX_SLOTS} disks")]
    TooManyDisks,
    /// Programs kept using an old epoch for too long.
    #[error("the tracker's programs did not leave the old epoch within {DRAIN_TIMEOUT:?}")]
    Drain,
}

fn lb(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> BpfError {
    let what = what.into();
    move |source| BpfError::Libbpf { what, source }
}

fn os(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BpfError {
    let what = what.into();
    move |source| BpfError::Os { what, source }
}

/// A shared memory mapping of an mmapable BPF array map.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(map: &MapHandle, len: usize) -> Result<Mapping, BpfError> {
        let page = rustix::param::page_size();
        let len = len.div_ceil(page) * page;
        // SAFETY: mapping a BPF map fd shared and read-write, as the kernel allows for
        // BPF_F_MMAPABLE arrays; the pointer is only used through atomics below.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                map.as_fd(),
                0,
            )
        }
        .map_err(|e| BpfError::Os { what: "map the tracker's memory".into(), source: e.into() })?;
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| {
            os("map the tracker's memory")(std::io::Error::other("mmap returned a null pointer"))
        })?;
        Ok(Mapping { ptr, len })
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off.is_multiple_of(8) && off + 8 <= self.len, "offset {off} outside the mapping");
        // SAFETY: in bounds, 8-aligned (page-aligned base), and shared with the kernel only
        // through atomic operations.
        unsafe { &*(self.ptr.as_ptr().add(off) as *const AtomicU64) }
    }

    /// The `w`th 8-byte word.
    fn word(&self, w: u64) -> &AtomicU64 {
        match usize::try_from(w).ok().and_then(|w| w.checked_mul(8)) {
            Some(off) => self.u64_at(off),
            None => panic!("word {w} outside the mapping"),
        }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= self.len, "offset {off} outside the mapping");
        // SAFETY: as in `u64_at`.
        unsafe { &*(self.ptr.as_ptr().add(off) as *const AtomicU32) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped; no reference outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Counters of one disk, as the BPF program keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotCounters {
    /// Write bios queued.
    pub writes: u64,
    /// Discard bios queued.
    pub discards: u64,
    /// Write-zeroes bios queued.
    pub write_zeroes: u64,
    /// Secure-erase bios queued.
    pub secure_erases: u64,
    /// Bytes of all of those.
    pub bytes: u64,
    /// Ranges sent through the ring buffer.
    pub ring_events: u64,
    /// Write-like requests by size: ≤ 4 KiB, ≤ 16 KiB, ≤ 64 KiB, ≤ 256 KiB, larger.
    pub sizes: [u64; 5],
}

/// What one harvest of a disk's old epoch found. The old epoch's bits stay in the kernel
/// until [`Bpf::release`], so a crash before the caller made them durable loses nothing.
#[derive(Debug, Default, Clone)]
pub struct Harvest {
    /// Dirty 4 KiB blocks, as sorted, merged `[first, end)` ranges.
    pub ranges: Vec<(u64, u64)>,
    /// Records the program could not make (the disk must be compared whole when not 0).
    pub overflow: u64,
    /// The epoch harvested.
    pub epoch: u32,
}

/// A registered disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotInfo {
    /// Slot index.
    pub slot: u32,
    /// Bitmap words per epoch.
    pub words: u64,
    /// First bitmap word of epoch 0.
    pub base: u64,
    /// 4 KiB blocks of the disk.
    pub blocks: u64,
    /// Random identity of this registration: a different token means tracking was not
    /// continuous (reload, reboot, disk re-registered).
    pub token: u64,
}

/// Block ranges from the ring buffer, per slot.
type Queued = HashMap<u32, Vec<(u64, u64)>>;

/// The loaded (or re-opened) tracker; one per agent, shared by its disks.
pub struct Bpf {
    dir: PathBuf,
    disks: MapHandle,
    slots_map: MapHandle,
    slots: Mapping,
    bitmap: Mapping,
    bitmap_words: u64,
    events: MapHandle,
    /// Ranges received from the ring buffer, per slot, not harvested yet.
    queued: Arc<Mutex<Queued>>,
    lock: Mutex<()>,
    /// The programs' links, held open: tracking goes on while this agent runs even if
    /// someone removes the pins (the kernel detaches a link once nothing holds it).
    _links: Vec<libbpf_rs::Link>,
}

impl std::fmt::Debug for Bpf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bpf").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// Makes sure bpffs is mounted at [`BPFFS`].
fn ensure_bpffs() -> Result<(), BpfError> {
    let st = rustix::fs::statfs(BPFFS).map_err(|e| os(format!("inspect {BPFFS}"))(e.into()))?;
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    if st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    rustix::mount::mount("bpf", BPFFS, "bpf", rustix::mount::MountFlags::empty(), None)
        .map_err(|e| os(format!("mount bpffs at {BPFFS}"))(e.into()))?;
    tracing::info!(path = BPFFS, "mounted bpffs (it was not mounted) to pin the write tracker");
    Ok(())
}

/// Kernel `dev_t` of a block device (`(major << 20) | minor`).
pub fn kernel_dev(rdev: u64) -> u32 {
    let major = rustix::fs::major(rdev);
    let minor = rustix::fs::minor(rdev);
    (major << 20) | minor
}

impl Bpf {
    /// Re-opens the tracker pinned under `name` (tracking went on while no agent ran), or
    /// loads and pins a new one with room for `words_needed` bitmap words. A pinned tracker
    /// with less room than `words_needed` is replaced (its disks see a gap).
    pub fn open_or_load(name: &str, words_needed: u64) -> Result<(Bpf, bool), BpfError> {
        ensure_bpffs()?;
        let root = Path::new(BPFFS).join("lifeboat");
        // Pins of an older layout keep their programs running for nobody: remove them.
        for v in 1..LAYOUT_VERSION {
            let old = root.join(format!("v{v}-{name}"));
            if old.exists() {
                tracing::info!(dir = %old.display(), "removing the write tracker of an older agent version");
                fs::remove_dir_all(&old).map_err(os(format!("remove {}", old.display())))?;
            }
        }
        let dir = root.join(format!("v{LAYOUT_VERSION}-{name}"));
        if dir.join("bitmap").exists() {
            match Self::open_pinned(&dir) {
                Ok(b) if b.bitmap_words >= words_needed => return Ok((b, true)),
                Ok(b) => {
                    tracing::warn!(
                        have = b.bitmap_words,
                        need = words_needed,
                        "the pinned write tracker has too little room for these disks: reloading it (each disk is compared once)"
                    );
                }
                Err(e) => tracing::warn!(
                    dir = %dir.display(),
                    "the pinned write tracker cannot be reused ({e}): reloading it (each disk is compared once)"
                ),
            }
            fs::remove_dir_all(&dir).map_err(os(format!("remove {}", dir.display())))?;
        }
        Self::load(&dir, words_needed.max(1))?;
        Ok((Self::open_pinned(&dir)?, false))
    }

    fn load(dir: &Path, words: u64) -> Result<(), BpfError> {
        let words = u32::try_from(words).map_err(|_| BpfError::TooManyDisks)?;
        fs::create_dir_all(dir).map_err(os(format!("create {}", dir.display())))?;
        let mut storage = MaybeUninit::uninit();
        let mut open = skel::TrackerSkelBuilder::default()
            .open(&mut storage)
            .map_err(lb("open the write tracker's BPF object"))?;
        open.maps.bitmap.set_max_entries(words).map_err(lb("size the write tracker's bitmap"))?;
        let mut skel = open.load().map_err(lb(
            "load the write tracker into the kernel (needs root, BTF and tracing programs)",
        ))?;
        for (name, prog) in [
            ("link-queue", &skel.progs.lifeboat_bio_queue),
            ("link-complete", &skel.progs.lifeboat_rq_complete),
        ] {
            let mut link = prog.attach().map_err(lb(format!("attach {name}")))?;
            link.pin(dir.join(name)).map_err(lb(format!("pin {name}")))?;
        }
        for (name, map) in [
            ("disks", &mut skel.maps.disks),
            ("slots", &mut skel.maps.slots),
            ("bitmap", &mut skel.maps.bitmap),
            ("events", &mut skel.maps.events),
        ] {
            map.pin(dir.join(name)).map_err(lb(format!("pin map {name}")))?;
        }
        tracing::info!(dir = %dir.display(), bitmap_words = words, "loaded and pinned the eBPF write tracker");
        Ok(())
    }

    fn open_pinned(dir: &Path) -> Result<Bpf, BpfError> {
        let get = |n: &str| {
            MapHandle::from_pinned_path(dir.join(n)).map_err(lb(format!("open pinned map {n}")))
        };
        let disks = get("disks")?;
        let slots_map = get("slots")?;
        let bitmap_map = get("bitmap")?;
        let events = get("events")?;
        if slots_map.value_size() as usize != SLOT_STATE_LEN
            || disks.value_size() as usize != DISK_INFO_LEN
            || bitmap_map.value_size() != 8
        {
            return Err(BpfError::Os {
                what: "check the pinned tracker's layout".into(),
                source: std::io::Error::other("map layout differs from this agent's"),
            });
        }
        let bitmap_words = bitmap_map.max_entries() as u64;
        let mut links = Vec::new();
        for name in ["link-queue", "link-complete"] {
            links.push(
                libbpf_rs::Link::open(dir.join(name))
                    .map_err(lb(format!("open the pinned {name}")))?,
            );
        }
        let slots = Mapping::new(&slots_map, SLOT_STATE_LEN * MAX_SLOTS as usize)?;
        let bitmap_len = usize::try_from(bitmap_words * 8).map_err(|_| {
            os("map the tracker's memory")(std::io::Error::other(
                "the bitmap does not fit in memory",
            ))
        })?;
        let bitmap = Mapping::new(&bitmap_map, bitmap_len)?;
        Ok(Bpf {
            dir: dir.to_path_buf(),
            disks,
            slots_map,
            slots,
            bitmap,
            bitmap_words,
            events,
            queued: Arc::default(),
            lock: Mutex::new(()),
            _links: links,
        })
    }

    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unpins this tracker: once the last user closes it, the kernel unloads it.
    pub fn unpin(self) -> Result<(), BpfError> {
        fs::remove_dir_all(&self.dir).map_err(os(format!("remove {}", self.dir.display())))
    }

    /// The disk's counters, by device (`None` when the disk is not followed).
    pub fn counters_of(&self, dev: u32) -> Result<Option<SlotCounters>, BpfError> {
        let _g = self.guard();
        Ok(self.entries()?.into_iter().find(|(d, _)| *d == dev).map(|(_, i)| self.counters(i.slot)))
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entries(&self) -> Result<Vec<(u32, SlotInfo)>, BpfError> {
        let mut out = Vec::new();
        for key in self.disks.keys() {
            let Some(v) =
                self.disks.lookup(&key, MapFlags::ANY).map_err(lb("read the disks map"))?
            else {
                continue;
            };
            let (Some(dev), Some(v)) = (key.first_chunk::<4>(), v.first_chunk::<32>()) else {
                return Err(os("read the disks map")(std::io::Error::other(format!(
                    "an entry has a {}-byte key and a {}-byte value, not 4 and 32",
                    key.len(),
                    v.len()
                ))));
            };
            let dev = u32::from_ne_bytes(*dev);
            let slot = u32::from_ne_bytes(crate::tracker::field(v, 0));
            let base = u64::from_ne_bytes(crate::tracker::field(v, 8));
            let words = u64::from_ne_bytes(crate::tracker::field(v, 16));
            let blocks = u64::from_ne_bytes(crate::tracker::field(v, 24));
            let token = self.slot_u64(slot, OFF_TOKEN).load(Ordering::SeqCst);
            out.push((dev, SlotInfo { slot, words, base, blocks, token }));
        }
        Ok(out)
    }

    fn slot_u64(&self, slot: u32, off: usize) -> &AtomicU64 {
        self.slots.u64_at(slot as usize * SLOT_STATE_LEN + off)
    }

    /// Follows the whole disk `dev` of `blocks` 4 KiB blocks: returns its registration,
    /// the existing one when the disk was already followed with the same size (tracking
    /// continued), else a new one with a new token.
    pub fn register(&self, dev: u32, blocks: u64) -> Result<SlotInfo, BpfError> {
        let _g = self.guard();
        let entries = self.entries()?;
        if let Some((_, info)) = entries.iter().find(|(d, _)| *d == dev)
            && info.blocks == blocks
        {
            return Ok(*info);
        }
        let others: Vec<SlotInfo> =
            entries.iter().filter(|(d, _)| *d != dev).map(|(_, i)| *i).collect();
        let slot = (0..MAX_SLOTS)
            .find(|s| !others.iter().any(|i| i.slot == *s))
            .ok_or(BpfError::TooManyDisks)?;
        let words = blocks.div_ceil(64).max(1);
        // First fit in the bitmap between the other disks' regions.
        let mut regions: Vec<(u64, u64)> =
            others.iter().map(|i| (i.base, i.base + 2 * i.words)).collect();
        regions.sort_unstable();
        let mut base = 0u64;
        for (start, end) in regions {
            if base + 2 * words <= start {
                break;
            }
            base = base.max(end);
        }
        if base + 2 * words > self.bitmap_words {
            return Err(BpfError::Os {
                what: "register the disk".into(),
                source: std::io::Error::other(format!(
                    "the bitmap has {} words, the disk needs {} more",
                    self.bitmap_words,
                    base + 2 * words - self.bitmap_words
                )),
            });
        }
        // The disk is not in `disks` yet (or is being replaced: remove it first), so no
        // program touches its slot or region while they are reset.
        self.disks.delete(&dev.to_ne_bytes()).ok();
        for w in base..base + 2 * words {
            self.bitmap.word(w).store(0, Ordering::SeqCst);
        }
        let mut token = [0u8; 8];
        rustix::rand::getrandom(&mut token, rustix::rand::GetRandomFlags::empty())
            .map_err(|e| os("draw a tracking token")(e.into()))?;
        let token = u64::from_ne_bytes(token) | 1;
        let zero = vec![0u8; SLOT_STATE_LEN];
        self.slots_map
            .update(&slot.to_ne_bytes(), &zero, MapFlags::ANY)
            .map_err(lb("reset the disk's tracker slot"))?;
        self.slot_u64(slot, OFF_TOKEN).store(token, Ordering::SeqCst);
        let mut value = Vec::with_capacity(DISK_INFO_LEN);
        value.extend_from_slice(&slot.to_ne_bytes());
        value.extend_from_slice(&0u32.to_ne_bytes());
        value.extend_from_slice(&base.to_ne_bytes());
        value.extend_from_slice(&words.to_ne_bytes());
        value.extend_from_slice(&blocks.to_ne_bytes());
        self.disks
            .update(&dev.to_ne_bytes(), &value, MapFlags::ANY)
            .map_err(lb("add the disk to the tracker"))?;
        self.queued.lock().unwrap_or_else(|e| e.into_inner()).remove(&slot);
        Ok(SlotInfo { slot, words, base, blocks, token })
    }

    /// The disk's current registration token, if it is followed.
    pub fn token(&self, dev: u32) -> Result<Option<u64>, BpfError> {
        let _g = self.guard();
        Ok(self.entries()?.into_iter().find(|(d, _)| *d == dev).map(|(_, i)| i.token))
    }

    /// The disk's counters.
    pub fn counters(&self, slot: u32) -> SlotCounters {
        let g = |off| self.slot_u64(slot, off).load(Ordering::Relaxed);
        SlotCounters {
            writes: g(OFF_WRITES),
            discards: g(OFF_DISCARDS),
            write_zeroes: g(OFF_WRITE_ZEROES),
            secure_erases: g(OFF_SECURE),
            bytes: g(OFF_BYTES),
            ring_events: g(OFF_RING),
            sizes: std::array::from_fn(|i| g(OFF_SIZES + 8 * i)),
        }
    }

    /// Marks `[first, end)` in the current epoch of the disk in `slot`, as the BPF program
    /// would: ranges taken from the ring buffer for another disk than the one being
    /// harvested go back to the kernel, where they survive an agent crash (pinned).
    fn mark_current(&self, info: &SlotInfo, first: u64, end: u64) {
        let end = end.min(info.blocks);
        if first >= end {
            return;
        }
        let epoch = self.slots.u32_at(info.slot as usize * SLOT_STATE_LEN + OFF_EPOCH);
        let base = info.base + if epoch.load(Ordering::SeqCst) & 1 == 1 { info.words } else { 0 };
        let (fw, lw) = (first / 64, (end - 1) / 64);
        for w in fw..=lw {
            let lo = if w == fw { first % 64 } else { 0 };
            let hi = if w == lw { (end - 1) % 64 } else { 63 };
            let mask =
                (if hi == 63 { u64::MAX } else { (1u64 << (hi + 1)) - 1 }) & !((1u64 << lo) - 1);
            self.bitmap.word(base + w).fetch_or(mask, Ordering::SeqCst);
        }
    }

    fn drain_ring(&self) -> Result<(), BpfError> {
        let queued = self.queued.clone();
        let mut b = RingBufferBuilder::new();
        b.add(&self.events, move |data: &[u8]| {
            if let Some(data) = data.first_chunk::<24>() {
                let slot = u32::from_ne_bytes(crate::tracker::field(data, 0));
                let first = u64::from_ne_bytes(crate::tracker::field(data, 8));
                let end = u64::from_ne_bytes(crate::tracker::field(data, 16));
                queued
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(slot)
                    .or_default()
                    .push((first, end));
            }
            0
        })
        .map_err(lb("open the tracker's ring buffer"))?;
        let rb = b.build().map_err(lb("open the tracker's ring buffer"))?;
        rb.consume().map_err(lb("read the tracker's ring buffer"))
    }

    /// Flips the disk's epoch, waits until no program still writes the old one, and reads
    /// what the old epoch recorded (bits and ring-buffer ranges). Writes nothing to any
    /// filesystem: it may run while the disk's filesystems are frozen. The bits stay until
    /// [`Bpf::release`]; ring-buffer ranges are consumed (the caller marks its state
    /// incomplete first).
    pub fn harvest(&self, info: &SlotInfo) -> Result<Harvest, BpfError> {
        let _g = self.guard();
        let epoch = self.slots.u32_at(info.slot as usize * SLOT_STATE_LEN + OFF_EPOCH);
        let old = epoch.load(Ordering::SeqCst) & 1;
        epoch.store(old ^ 1, Ordering::SeqCst);
        // See the BPF program: programs still counted in the old epoch saw it before the
        // flip; wait for them.
        let inflight = self.slot_u64(info.slot, OFF_INFLIGHT + 8 * old as usize);
        let started = Instant::now();
        while inflight.load(Ordering::SeqCst) != 0 {
            if started.elapsed() > DRAIN_TIMEOUT {
                return Err(BpfError::Drain);
            }
            std::hint::spin_loop();
        }
        let overflow = self.slot_u64(info.slot, OFF_OVERFLOW).load(Ordering::SeqCst);
        let base = info.base + if old == 1 { info.words } else { 0 };
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for w in 0..info.words {
            let bits = self.bitmap.word(base + w).load(Ordering::SeqCst);
            if bits == 0 {
                continue;
            }
            let mut b = bits;
            while b != 0 {
                let lo = b.trailing_zeros() as u64;
                let run = (!(b >> lo)).trailing_zeros() as u64;
                let first = w * 64 + lo;
                push_range(&mut ranges, first, first + run);
                b = if lo + run >= 64 { 0 } else { b & !(((1u64 << run) - 1) << lo) };
            }
        }
        self.drain_ring()?;
        let mut queued =
            std::mem::take(&mut *self.queued.lock().unwrap_or_else(|e| e.into_inner()));
        let mut extra = queued.remove(&info.slot).unwrap_or_default();
        if !queued.is_empty() {
            let others = self.entries()?;
            for (slot, ranges) in queued {
                if let Some((_, other)) = others.iter().find(|(_, i)| i.slot == slot) {
                    for (first, end) in ranges {
                        self.mark_current(other, first, end);
                    }
                }
            }
        }
        if !extra.is_empty() {
            ranges.append(&mut extra);
            ranges = merge(ranges);
        }
        for r in &mut ranges {
            r.1 = r.1.min(info.blocks);
        }
        ranges.retain(|r| r.0 < r.1);
        Ok(Harvest { ranges, overflow, epoch: old })
    }

    /// Clears what `harvest` read, once the caller made it durable. The harvested epoch is
    /// not the current one, so no program writes it meanwhile.
    pub fn release(&self, info: &SlotInfo, harvest: &Harvest) {
        let _g = self.guard();
        let base = info.base + if harvest.epoch == 1 { info.words } else { 0 };
        for w in 0..info.words {
            self.bitmap.word(base + w).store(0, Ordering::SeqCst);
        }
        self.slot_u64(info.slot, OFF_OVERFLOW).fetch_sub(harvest.overflow, Ordering::SeqCst);
    }

    /// Write-like requests queued so far on the disk (all kinds).
    pub fn writes(&self, slot: u32) -> u64 {
        let c = self.counters(slot);
        c.writes + c.discards + c.write_zeroes + c.secure_erases
    }
}

fn push_range(ranges: &mut Vec<(u64, u64)>, first: u64, end: u64) {
    if let Some(last) = ranges.last_mut()
        && last.1 == first
    {
        last.1 = end;
        return;
    }
    ranges.push((first, end));
}

/// Sorts and merges overlapping or touching ranges.
pub fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge() {
        assert_eq!(merge(vec![(5, 7), (0, 2), (2, 3), (6, 9)]), vec![(0, 3), (5, 9)]);
        let mut r = Vec::new();
        push_range(&mut r, 0, 2);
        push_range(&mut r, 2, 4);
        push_range(&mut r, 5, 6);
        assert_eq!(r, vec![(0, 4), (5, 6)]);
    }
}
