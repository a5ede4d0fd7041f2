//! The in-memory batch: header fields, extents, and the builder that is the only way to make
//! one besides [`crate::decode`].
//!
//! A [`Batch`] is valid by construction (sorted, non-overlapping, sector-aligned extents within
//! the size limits), so [`crate::encode`] cannot fail and every batch that reaches the wire
//! decodes again. The per-block checksums are computed when data is pushed, not when it is
//! encoded: the agent pushes right after reading the disk, so the checksum covers the data from
//! the moment it was read, and encoding later only copies.

use std::borrow::Cow;
use std::fmt;

use crate::layout::{CHECKSUM_LEN, EXTENT_ENTRY_LEN, HEADER_LEN, TRAILER_LEN};
use crate::{BLOCK_SIZE, MAX_BATCH_BYTES, MAX_EXTENTS, SECTOR_SIZE, WireError, block_checksum};

/// Identity of a protected machine: a 16-byte UUID, assigned by the configuration server at
/// registration.
///
/// A UUID rather than a database row number because batches outlive the database that numbered
/// them: they sit in the target's log area and are replayed by a master target that may have
/// been rebuilt from the catalogue with the source site gone.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MachineId(pub [u8; 16]);

impl fmt::Display for MachineId {
    /// The usual hyphenated lower-case UUID form, `8-4-4-4-12` hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MachineId({self})")
    }
}

impl std::str::FromStr for MachineId {
    type Err = String;

    /// Parses the hyphenated form that `Display` prints (hyphens optional).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
        let bad = || format!("{s:?} is not a machine id (expected a UUID such as 3f2a…-…)");
        if hex.len() != 32 {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).ok_or_else(bad);
            out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).map_err(|_| bad())?;
        }
        Ok(MachineId(out))
    }
}

/// Stored as the hyphenated text that `Display` prints, so the database stays readable.
#[cfg(feature = "rusqlite")]
impl rusqlite::types::ToSql for MachineId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.to_string().into())
    }
}

#[cfg(feature = "rusqlite")]
impl rusqlite::types::FromSql for MachineId {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        v.as_str()?.parse().map_err(|e: String| rusqlite::types::FromSqlError::Other(e.into()))
    }
}

impl From<[u8; 16]> for MachineId {
    fn from(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

/// What kind of recovery point a consistency tag marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PointKind {
    /// Crash-consistent: the disk as it was at one instant.
    Crash,
    /// App-consistent: taken while a quiesce plugin held the application frozen.
    App,
}

/// Marks that once this batch and every earlier batch of the disk are applied, the replica is
/// at recovery point `point_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConsistencyTag {
    /// Crash- or app-consistent.
    pub kind: PointKind,
    /// The point's id, shared by every disk (and, in a consistency group, every machine) that
    /// cut the point together.
    pub point_id: u64,
}

/// The fixed fields of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchHeader {
    /// The machine the disk belongs to.
    pub machine: MachineId,
    /// The disk's position in the machine (0 for the first disk).
    pub disk_index: u32,
    /// Position of this batch in the disk's stream. Each batch of a disk carries the previous
    /// one's number plus one; the receiver enforces that, since a single batch cannot.
    pub sequence: u64,
    /// Present when this batch completes a recovery point.
    pub tag: Option<ConsistencyTag>,
}

/// One range of the disk changed by a batch.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Extent<'a> {
    /// New contents for `data.len()` bytes at `offset`.
    Data {
        /// Disk offset in bytes, a multiple of 512.
        offset: u64,
        /// The bytes; the length is a non-zero multiple of 512. Borrowed from the input when
        /// decoded.
        data: Cow<'a, [u8]>,
    },
    /// `length` bytes at `offset` now read as zeros (written as zeros, or discarded).
    Zero {
        /// Disk offset in bytes, a multiple of 512.
        offset: u64,
        /// Length in bytes, a non-zero multiple of 512.
        length: u64,
    },
}

impl<'a> Extent<'a> {
    /// Disk offset of the first byte.
    pub fn offset(&self) -> u64 {
        match self {
            Self::Data { offset, .. } | Self::Zero { offset, .. } => *offset,
        }
    }

    /// Length in bytes.
    pub fn length(&self) -> u64 {
        match self {
            Self::Data { data, .. } => data.len() as u64,
            Self::Zero { length, .. } => *length,
        }
    }

    /// Disk offset one past the last byte. Saturates at `u64::MAX` for an extent that would
    /// overflow, which no extent inside a [`Batch`] does.
    pub fn end(&self) -> u64 {
        self.offset().saturating_add(self.length())
    }

    /// The data of a data extent, `None` for a zero extent.
    pub fn data(&self) -> Option<&[u8]> {
        match self {
            Self::Data { data, .. } => Some(data),
            Self::Zero { .. } => None,
        }
    }

    /// Detaches the extent from the buffer it borrows from (copies borrowed data).
    pub fn into_owned(self) -> Extent<'static> {
        match self {
            Self::Data { offset, data } => {
                Extent::Data { offset, data: Cow::Owned(data.into_owned()) }
            }
            Self::Zero { offset, length } => Extent::Zero { offset, length },
        }
    }

    /// Bytes this extent adds to the encoded batch: its table entry, payload and checksums.
    pub(crate) fn encoded_cost(&self) -> u64 {
        match self {
            Self::Data { data, .. } => {
                let len = data.len() as u64;
                EXTENT_ENTRY_LEN as u64
                    + len
                    + len.div_ceil(BLOCK_SIZE as u64) * CHECKSUM_LEN as u64
            }
            Self::Zero { .. } => EXTENT_ENTRY_LEN as u64,
        }
    }
}

impl fmt::Debug for Extent<'_> {
    /// Lengths, not contents: a batch holds up to 64 MiB and ends up in logs and test failures.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Data { offset, data } => {
                f.debug_struct("Data").field("offset", offset).field("length", &data.len()).finish()
            }
            Self::Zero { offset, length } => {
                f.debug_struct("Zero").field("offset", offset).field("length", length).finish()
            }
        }
    }
}

/// Checks one extent against the format's rules and the extent before it; returns its end.
///
/// Shared by the builder and the decoder so both refuse exactly the same batches with the same
/// words. `prev` is the previous extent's (offset, end).
pub(crate) fn check_extent(
    index: usize,
    offset: u64,
    length: u64,
    prev: Option<(u64, u64)>,
) -> Result<u64, WireError> {
    if !offset.is_multiple_of(SECTOR_SIZE) {
        return Err(WireError::UnalignedOffset { index, offset });
    }
    if length == 0 || !length.is_multiple_of(SECTOR_SIZE) {
        return Err(WireError::BadLength { index, offset, length });
    }
    let end =
        offset.checked_add(length).ok_or(WireError::ExtentOverflow { index, offset, length })?;
    if let Some((prev_offset, prev_end)) = prev {
        let prev = index - 1;
        if offset < prev_offset {
            return Err(WireError::Unsorted { index, offset, prev, prev_offset });
        }
        if offset < prev_end {
            return Err(WireError::Overlap { index, offset, prev, prev_end });
        }
    }
    Ok(end)
}

/// A batch of changes to one disk: header fields plus sorted, non-overlapping extents.
///
/// Made by [`BatchBuilder`] or [`crate::decode`]; either way it is valid, so
/// [`crate::encode`] always succeeds. `'a` is the lifetime of borrowed data: a decoded batch
/// borrows its payload from the input buffer, and [`Batch::into_owned`] detaches it.
#[derive(Clone, PartialEq, Eq)]
pub struct Batch<'a> {
    pub(crate) header: BatchHeader,
    pub(crate) extents: Vec<Extent<'a>>,
    /// Little-endian xxh3-64 of every data block, in extent order, exactly as on the wire.
    pub(crate) checksums: Cow<'a, [u8]>,
    pub(crate) encoded_len: usize,
}

impl<'a> Batch<'a> {
    /// Starts building a batch with the given header fields.
    pub fn builder(header: BatchHeader) -> BatchBuilder<'a> {
        BatchBuilder::new(header)
    }

    /// The header fields.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The extents, sorted by offset, non-overlapping.
    pub fn extents(&self) -> &[Extent<'a>] {
        &self.extents
    }

    /// The exact size of the encoded batch in bytes (at most [`MAX_BATCH_BYTES`]).
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    /// Total bytes of data carried by data extents.
    pub fn data_len(&self) -> u64 {
        self.extents.iter().filter_map(Extent::data).map(|d| d.len() as u64).sum()
    }

    /// The xxh3-64 of every data block: the data extents in order, each cut into
    /// [`BLOCK_SIZE`] blocks (the last one shorter when the length is not a multiple of it).
    /// Already verified for a decoded batch; useful to keep beside the replica for scrubbing.
    pub fn block_checksums(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.checksums.chunks_exact(CHECKSUM_LEN).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        })
    }

    /// Detaches the batch from the buffer it was decoded from (copies borrowed data).
    pub fn into_owned(self) -> Batch<'static> {
        Batch {
            header: self.header,
            extents: self.extents.into_iter().map(Extent::into_owned).collect(),
            checksums: Cow::Owned(self.checksums.into_owned()),
            encoded_len: self.encoded_len,
        }
    }
}

impl fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("header", &self.header)
            .field("extents", &self.extents)
            .field("encoded_len", &self.encoded_len)
            .finish()
    }
}

/// Builds a valid [`Batch`] one extent at a time.
///
/// Extents must be pushed in offset order. A push that breaks a rule or would take the batch
/// over [`MAX_BATCH_BYTES`] or [`MAX_EXTENTS`] returns the error and leaves the builder as it
/// was, so the sender can [`build`](Self::build) what it has and start the next batch; ask
/// [`has_room_for`](Self::has_room_for) first to keep the extent.
#[derive(Clone)]
pub struct BatchBuilder<'a> {
    header: BatchHeader,
    extents: Vec<Extent<'a>>,
    checksums: Vec<u8>,
    /// At most [`MAX_BATCH_BYTES`]: [`Self::push`] refuses an extent that would pass it.
    encoded_len: usize,
}

impl fmt::Debug for BatchBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchBuilder")
            .field("header", &self.header)
            .field("extents", &self.extents)
            .field("encoded_len", &self.encoded_len)
            .finish()
    }
}

impl<'a> BatchBuilder<'a> {
    /// An empty batch with the given header fields.
    pub fn new(header: BatchHeader) -> Self {
        Self {
            header,
            extents: Vec::new(),
            checksums: Vec::new(),
            encoded_len: HEADER_LEN + TRAILER_LEN,
        }
    }

    /// Appends an extent after checking it (see [`WireError`] for the rules).
    pub fn push(&mut self, extent: Extent<'a>) -> Result<(), WireError> {
        let index = self.extents.len();
        let prev = self.extents.last().map(|p| (p.offset(), p.end()));
        check_extent(index, extent.offset(), extent.length(), prev)?;
        if index >= MAX_EXTENTS {
            return Err(WireError::TooManyExtents { count: index as u64 + 1 });
        }
        let len = (self.encoded_len as u64).saturating_add(extent.encoded_cost());
        let len = match usize::try_from(len) {
            Ok(len) if len <= MAX_BATCH_BYTES => len,
            _ => return Err(WireError::TooLarge { len }),
        };
        if let Extent::Data { data, .. } = &extent {
            self.checksums.reserve(data.len().div_ceil(BLOCK_SIZE) * 8);
            for block in data.chunks(BLOCK_SIZE) {
                self.checksums.extend_from_slice(&block_checksum(block).to_le_bytes());
            }
        }
        self.encoded_len = len;
        self.extents.push(extent);
        Ok(())
    }

    /// Appends a data extent: `data` written at `offset`.
    pub fn push_data(
        &mut self,
        offset: u64,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<(), WireError> {
        self.push(Extent::Data { offset, data: data.into() })
    }

    /// Appends a zero extent: `length` bytes at `offset` read as zeros.
    pub fn push_zero(&mut self, offset: u64, length: u64) -> Result<(), WireError> {
        self.push(Extent::Zero { offset, length })
    }

    /// Whether `extent` still fits under [`MAX_BATCH_BYTES`] and [`MAX_EXTENTS`]; it may still
    /// be refused for breaking an ordering or alignment rule.
    pub fn has_room_for(&self, extent: &Extent<'_>) -> bool {
        self.extents.len() < MAX_EXTENTS
            && (self.encoded_len as u64).saturating_add(extent.encoded_cost())
                <= MAX_BATCH_BYTES as u64
    }

    /// Number of extents pushed so far.
    pub fn extent_count(&self) -> usize {
        self.extents.len()
    }

    /// Size the batch would encode to now.
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    /// The finished batch.
    pub fn build(self) -> Batch<'a> {
        Batch {
            header: self.header,
            extents: self.extents,
            checksums: Cow::Owned(self.checksums),
            encoded_len: self.encoded_len,
        }
    }
}
