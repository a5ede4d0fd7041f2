//! The baseline map file: the per-block hashes it stores, its header, and reading (checking
//! each segment) and writing it; also opening the previous cycle's map as the baseline.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::{
    BLOCK_SIZE, BLOCK_SIZE_U32, BLOCK_SIZE_USIZE, HashScan, MAP_ENTRY_LEN, MAP_ENTRY_LEN_USIZE,
    MAP_HEADER_LEN, MAP_HEADER_LEN_U32, MAP_HEADER_LEN_USIZE, MAP_MAGIC, MAP_SEGMENT_BLOCKS,
    MAP_VERSION, SUB_BLOCK_SIZE, SUB_BLOCK_SIZE_U32, SUB_BLOCK_SIZE_USIZE, SUBS_PER_BLOCK, state,
};
use crate::disk::Disk;
use crate::tracker::{TrackerError, field};

/// Mixed into the seed of the block-level hash so it differs from a sub-block hash.
const BLOCK_HASH_TAG: u64 = 0x9e37_79b9_7f4a_7c15;
/// How many bad map segments are reported one by one before only counting them.
const SEGMENT_WARNINGS: u64 = 3;

/// A block of zeros.
pub(super) static ZEROS: [u8; BLOCK_SIZE_USIZE] = [0; BLOCK_SIZE_USIZE];

/// Size in bytes of the baseline map for a disk of `disk_size` bytes.
pub fn map_file_size(disk_size: u64) -> u64 {
    let blocks = disk_size.div_ceil(BLOCK_SIZE);
    MAP_HEADER_LEN + blocks * MAP_ENTRY_LEN + blocks.div_ceil(MAP_SEGMENT_BLOCKS) * 8
}

/// Why an existing map cannot be used. Reported as a warning; the cycle then compares against
/// no baseline, which is always safe.
#[derive(Debug, thiserror::Error)]
pub(super) enum MapDefect {
    #[error("cannot read its header: {0}")]
    Io(#[from] io::Error),
    #[error("it does not start with the map magic (not a Lifeboat hash-scan map)")]
    Magic,
    #[error("its header checksum does not match (corrupt)")]
    HeaderChecksum,
    #[error("it is format version {0}, this agent reads version {MAP_VERSION}")]
    Version(u32),
    #[error(
        "it uses {block}-byte blocks and {sub}-byte sub-blocks, this agent uses {BLOCK_SIZE} and {SUB_BLOCK_SIZE}"
    )]
    Geometry { block: u32, sub: u32 },
    #[error("its header is inconsistent ({0})")]
    Inconsistent(&'static str),
    #[error("it was recorded for another disk (disk id differs)")]
    OtherDisk,
}

impl HashScan {
    /// Opens the old map, or decides there is none. Returns the baseline, the hash seed to
    /// use, and whether this is an initial copy to a blank target.
    pub(super) fn open_baseline(&self, disk: &Disk) -> Result<(Baseline, u64, bool), TrackerError> {
        let path = &self.cfg.map_path;
        let size = disk.size();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let seed = fresh_seed();
                let hasher = Hasher::new(seed);
                return Ok(if self.cfg.blank_target_without_map {
                    tracing::info!(
                        disk = %disk.path().display(),
                        map = %path.display(),
                        "no baseline map: initial copy to a blank replica (holes and zero blocks are not sent)"
                    );
                    (Baseline::blank(&hasher, size), seed, true)
                } else {
                    tracing::warn!(
                        disk = %disk.path().display(),
                        map = %path.display(),
                        "no baseline map and the target is not known to be blank: sending the whole disk (zeros as zero ranges)"
                    );
                    (Baseline::Unknown, seed, false)
                });
            }
            Err(e) => return Err(state(path, "open the baseline map")(e)),
        };
        let header = match Header::read(&file).and_then(|h| {
            if h.disk_id == self.cfg.disk_id { Ok(h) } else { Err(MapDefect::OtherDisk) }
        }) {
            Ok(h) => h,
            Err(defect) => {
                tracing::warn!(
                    disk = %disk.path().display(),
                    map = %path.display(),
                    "baseline map is unusable ({defect}); comparing against no baseline: this cycle re-sends the whole disk (zeros as zero ranges), nothing is lost. If this repeats, check the storage holding the map"
                );
                return Ok((Baseline::Unknown, fresh_seed(), false));
            }
        };
        let blocks = size.div_ceil(BLOCK_SIZE);
        let known_blocks = if header.disk_size == size {
            blocks
        } else {
            tracing::warn!(
                disk = %disk.path().display(),
                map = %path.display(),
                old_size = header.disk_size,
                new_size = size,
                "disk was resized since the last cycle: the part past the old size (and the old last block) is sent whole"
            );
            header.disk_size.min(size) / BLOCK_SIZE
        };
        let reader = MapReader {
            file,
            path: path.clone(),
            seed: header.seed,
            segment_blocks: header.segment_blocks,
            map_blocks: header.block_count,
            known_blocks,
            segment: None,
            segment_ok: false,
            buf: Vec::new(),
            bad_segments: 0,
        };
        Ok((Baseline::Map(reader), header.seed, false))
    }
}

/// One block's hashes as stored in the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Entry {
    pub(super) hash: u64,
    pub(super) sub: [u32; SUBS_PER_BLOCK],
}

impl Entry {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.hash.to_le_bytes());
        for s in &self.sub {
            out.extend_from_slice(&s.to_le_bytes());
        }
    }

    pub(super) fn decode(b: &[u8]) -> Self {
        let mut e = Entry { hash: u64::from_le_bytes(field(b, 0)), ..Entry::default() };
        for (i, s) in e.sub.iter_mut().enumerate() {
            *s = u32::from_le_bytes(field(b, 8 + 4 * i));
        }
        e
    }
}

/// The hash functions, keyed by the map's seed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hasher {
    seed: u64,
    /// Hash of a full all-zero sub-block, so zero sub-blocks are recognised without hashing.
    zero_sub: u64,
}

impl Hasher {
    pub(super) fn new(seed: u64) -> Self {
        Self { seed, zero_sub: xxh3_64_with_seed(&ZEROS[..SUB_BLOCK_SIZE_USIZE], seed) }
    }

    /// Hashes one block (64 KiB, or less at the end of the disk). Returns its map entry and
    /// the mask of its all-zero sub-blocks.
    ///
    /// Each sub-block gets a full xxh3-64; the map keeps its low 32 bits. The block hash is an
    /// xxh3-64 over the sixteen full sub-block hashes: a 64-bit hash of the whole block with
    /// every byte hashed once.
    pub(super) fn block(&self, data: &[u8]) -> (Entry, u16) {
        let mut entry = Entry::default();
        let mut zero = 0u16;
        let mut subs = [0u8; 8 * SUBS_PER_BLOCK];
        let mut n = 0;
        for (i, s) in data.chunks(SUB_BLOCK_SIZE_USIZE).enumerate() {
            let h = if is_zero(s) {
                zero |= 1 << i;
                if s.len() == SUB_BLOCK_SIZE_USIZE {
                    self.zero_sub
                } else {
                    xxh3_64_with_seed(s, self.seed)
                }
            } else {
                xxh3_64_with_seed(s, self.seed)
            };
            // The map keeps the low 32 bits of each sub-block hash.
            entry.sub[i] = (h & 0xffff_ffff) as u32;
            subs[8 * i..8 * i + 8].copy_from_slice(&h.to_le_bytes());
            n = i + 1;
        }
        entry.hash = xxh3_64_with_seed(&subs[..8 * n], self.seed ^ BLOCK_HASH_TAG);
        (entry, zero)
    }

    /// The entry of an all-zero block of `len` bytes.
    pub(super) fn zero_entry(&self, len: usize) -> Entry {
        self.block(&ZEROS[..len]).0
    }
}

/// Whether `b` is all zeros. Branch-free within 64-byte pieces so it vectorises.
pub(super) fn is_zero(b: &[u8]) -> bool {
    let mut pieces = b.chunks_exact(64);
    for p in &mut pieces {
        if p.iter().fold(0u8, |acc, &x| acc | x) != 0 {
            return false;
        }
    }
    pieces.remainder().iter().all(|&x| x == 0)
}

/// The map header; see `docs/tracker.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) disk_size: u64,
    pub(super) block_count: u64,
    pub(super) seed: u64,
    pub(super) disk_id: [u8; 16],
    pub(super) segment_blocks: u64,
}

impl Header {
    fn encode(&self) -> io::Result<[u8; MAP_HEADER_LEN_USIZE]> {
        let segment_blocks = u32::try_from(self.segment_blocks).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("map segment of {} blocks is over the header's limit", self.segment_blocks),
            )
        })?;
        let mut h = [0u8; MAP_HEADER_LEN_USIZE];
        h[0..8].copy_from_slice(&MAP_MAGIC);
        h[8..12].copy_from_slice(&MAP_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&MAP_HEADER_LEN_U32.to_le_bytes());
        h[16..20].copy_from_slice(&BLOCK_SIZE_U32.to_le_bytes());
        h[20..24].copy_from_slice(&SUB_BLOCK_SIZE_U32.to_le_bytes());
        h[24..28].copy_from_slice(&segment_blocks.to_le_bytes());
        // 28..32: flags, zero.
        h[32..40].copy_from_slice(&self.disk_size.to_le_bytes());
        h[40..48].copy_from_slice(&self.block_count.to_le_bytes());
        h[48..56].copy_from_slice(&self.seed.to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_id);
        // 72..88: reserved, zero.
        let sum = xxh3_64(&h[..88]);
        h[88..96].copy_from_slice(&sum.to_le_bytes());
        Ok(h)
    }

    pub(super) fn read(file: &File) -> Result<Self, MapDefect> {
        let mut h = [0u8; MAP_HEADER_LEN_USIZE];
        file.read_exact_at(&mut h, 0)?;
        let u32_at = |i: usize| u32::from_le_bytes(field(&h, i));
        let u64_at = |i: usize| u64::from_le_bytes(field(&h, i));
        if h[0..8] != MAP_MAGIC {
            return Err(MapDefect::Magic);
        }
        if xxh3_64(&h[..88]) != u64_at(88) {
            return Err(MapDefect::HeaderChecksum);
        }
        let version = u32_at(8);
        if version != MAP_VERSION {
            return Err(MapDefect::Version(version));
        }
        if u64::from(u32_at(12)) != MAP_HEADER_LEN {
            return Err(MapDefect::Inconsistent("header length"));
        }
        let (block, sub) = (u32_at(16), u32_at(20));
        if u64::from(block) != BLOCK_SIZE || u64::from(sub) != SUB_BLOCK_SIZE {
            return Err(MapDefect::Geometry { block, sub });
        }
        let header = Header {
            segment_blocks: u64::from(u32_at(24)),
            disk_size: u64_at(32),
            block_count: u64_at(40),
            seed: u64_at(48),
            disk_id: field(&h, 56),
        };
        if header.segment_blocks == 0 || header.segment_blocks > 1 << 20 {
            return Err(MapDefect::Inconsistent("segment size"));
        }
        if header.block_count != header.disk_size.div_ceil(BLOCK_SIZE) {
            return Err(MapDefect::Inconsistent("block count does not match disk size"));
        }
        Ok(header)
    }
}

/// What the current cycle compares against.
pub(super) enum Baseline {
    /// No map: the target is blank, every block's baseline is all zeros.
    Blank { full: Entry, last: Entry, last_block: u64 },
    /// No usable map: nothing is known, every block is sent.
    Unknown,
    /// The previous cycle's map.
    Map(MapReader),
}

impl Baseline {
    fn blank(hasher: &Hasher, size: u64) -> Self {
        let blocks = size.div_ceil(BLOCK_SIZE);
        let tail = size % BLOCK_SIZE;
        let full = hasher.zero_entry(BLOCK_SIZE_USIZE);
        Baseline::Blank {
            full,
            last: if tail == 0 { full } else { hasher.zero_entry(tail as usize) },
            last_block: blocks.saturating_sub(1),
        }
    }

    /// The baseline entry of `block` (blocks are asked for in ascending order), or None when
    /// the baseline does not know it.
    pub(super) fn entry(&mut self, block: u64) -> Option<Entry> {
        match self {
            Baseline::Blank { full, last, last_block } => {
                Some(if block == *last_block { *last } else { *full })
            }
            Baseline::Unknown => None,
            Baseline::Map(r) => r.entry(block),
        }
    }
}

/// Streams the old map segment by segment, checking each segment before using it.
pub(super) struct MapReader {
    file: File,
    path: PathBuf,
    seed: u64,
    segment_blocks: u64,
    map_blocks: u64,
    /// Blocks below this are described by the map for the disk's current size.
    known_blocks: u64,
    segment: Option<u64>,
    segment_ok: bool,
    buf: Vec<u8>,
    pub(super) bad_segments: u64,
}

impl MapReader {
    fn entry(&mut self, block: u64) -> Option<Entry> {
        if block >= self.known_blocks || block >= self.map_blocks {
            return None;
        }
        let seg = block / self.segment_blocks;
        if self.segment != Some(seg) {
            self.load(seg);
        }
        if !self.segment_ok {
            return None;
        }
        // Within the loaded segment, so it fits (a segment that does not was never loaded).
        let i = usize::try_from((block - seg * self.segment_blocks) * MAP_ENTRY_LEN).ok()?;
        Some(Entry::decode(&self.buf[i..i + MAP_ENTRY_LEN_USIZE]))
    }

    fn load(&mut self, seg: u64) {
        self.segment = Some(seg);
        let first = seg * self.segment_blocks;
        let n = self.segment_blocks.min(self.map_blocks - first);
        let at = MAP_HEADER_LEN + seg * (self.segment_blocks * MAP_ENTRY_LEN + 8);
        let problem = match usize::try_from(n * MAP_ENTRY_LEN) {
            Err(_) => Some("it does not fit in memory".to_string()),
            Ok(len) => {
                self.buf.resize(len + 8, 0);
                match self.file.read_exact_at(&mut self.buf, at) {
                    Err(e) => Some(format!("cannot read it: {e}")),
                    Ok(()) => {
                        let stored = u64::from_le_bytes(field(&self.buf, len));
                        (segment_checksum(&self.buf[..len], self.seed, seg) != stored)
                            .then(|| "checksum mismatch".to_string())
                    }
                }
            }
        };
        self.segment_ok = problem.is_none();
        if let Some(problem) = problem {
            self.bad_segments += 1;
            if self.bad_segments <= SEGMENT_WARNINGS {
                tracing::warn!(
                    map = %self.path.display(),
                    segment = seg,
                    disk_range = ?(first * BLOCK_SIZE..(first + n) * BLOCK_SIZE),
                    "baseline map segment is unusable ({problem}); its disk range is sent whole this cycle, nothing is lost"
                );
            }
        }
    }
}

fn segment_checksum(entries: &[u8], seed: u64, segment: u64) -> u64 {
    xxh3_64_with_seed(entries, seed.wrapping_add(segment))
}

/// Writes the new map: header, then checksummed segments.
pub(super) struct MapWriter {
    out: BufWriter<File>,
    seed: u64,
    segment_blocks: u64,
    segment: u64,
    buf: Vec<u8>,
}

impl MapWriter {
    pub(super) fn create(path: &Path, header: &Header) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        out.write_all(&header.encode()?)?;
        Ok(Self {
            out,
            seed: header.seed,
            segment_blocks: header.segment_blocks,
            segment: 0,
            // Only a capacity hint.
            buf: Vec::with_capacity(
                usize::try_from(header.segment_blocks * MAP_ENTRY_LEN).unwrap_or(0),
            ),
        })
    }

    pub(super) fn push(&mut self, e: &Entry) -> io::Result<()> {
        e.encode(&mut self.buf);
        if self.buf.len() as u64 == self.segment_blocks * MAP_ENTRY_LEN {
            self.flush_segment()?;
        }
        Ok(())
    }

    fn flush_segment(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let sum = segment_checksum(&self.buf, self.seed, self.segment);
        self.out.write_all(&self.buf)?;
        self.out.write_all(&sum.to_le_bytes())?;
        self.segment += 1;
        self.buf.clear();
        Ok(())
    }

    pub(super) fn finish(mut self) -> io::Result<()> {
        self.flush_segment()?;
        self.out.flush()?;
        self.out.get_ref().sync_all()
    }
}

/// A random seed for a new map, so hash collisions cannot be crafted in advance.
fn fresh_seed() -> u64 {
    let mut b = [0u8; 8];
    match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()) {
        Ok(8) => u64::from_le_bytes(b),
        _ => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                .unwrap_or(0);
            xxh3_64(&[t.to_le_bytes(), u64::from(std::process::id()).to_le_bytes()].concat())
        }
    }
}
