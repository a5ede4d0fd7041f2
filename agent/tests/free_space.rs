//! The hash-scan tracker on a really mounted ext4 or XFS filesystem (a loop device): the free
//! space the filesystem reports (`FS_IOC_GETFSMAP`) is neither read nor sent, every allocated
//! block still reaches the replica exactly, and blocks allocated later arrive with the next
//! collect.
//!
//! Needs root, loop devices and mount. Where this machine cannot create a loop device or mount
//! one (not root, no loop module, no mkfs), each test says so on stderr and returns; once it
//! could mount, every check is asserted. Loop devices, mounts and freezes are undone by guards,
//! also when a check fails.
//!
//! The filesystem is frozen (`fsfreeze`) while the tracker collects, so the comparison with the
//! device afterwards is exact and the replica is a clean filesystem that `e2fsck -fn` /
//! `xfs_repair -n` accept and that mounts read-only with the right files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_agent::disk::Disk;
use lifeboat_agent::freespace::{self, FreeSpace};
use lifeboat_agent::tracker::hashscan::BLOCK_SIZE;
use lifeboat_agent::tracker::{Change, CycleStats, HashScan, HashScanConfig, Tracker};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;

/// Runs a command; its trimmed stdout, or a message with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A loop device, detached on drop.
struct Loop {
    dev: String,
}

impl Loop {
    fn attach(file: &Path, extra: &[&str]) -> Result<Self, String> {
        let mut args = vec!["--find", "--show"];
        args.extend_from_slice(extra);
        let path = file.to_str().expect("utf-8 temp path");
        args.push(path);
        run("losetup", &args).map(|dev| Self { dev })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = run("losetup", &["--detach", &self.dev]);
    }
}

/// A mount, unmounted on drop (retried, then lazily).
struct Mount {
    dir: PathBuf,
}

impl Mount {
    fn new(dev: &str, dir: &Path, options: &str) -> Result<Self, String> {
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        run("mount", &["-o", options, dev, dir.to_str().expect("utf-8 temp path")])?;
        Ok(Self { dir: dir.to_path_buf() })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let dir = self.dir.to_str().expect("utf-8 temp path");
        for _ in 0..20 {
            if run("umount", &[dir]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = run("umount", &["--lazy", dir]);
    }
}

/// A frozen filesystem (`fsfreeze -f`), thawed on drop.
struct Frozen {
    dir: PathBuf,
}

impl Frozen {
    fn new(dir: &Path) -> Self {
        run("fsfreeze", &["--freeze", dir.to_str().expect("utf-8 temp path")])
            .expect("freeze the mounted filesystem");
        Self { dir: dir.to_path_buf() }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = run("fsfreeze", &["--unfreeze", self.dir.to_str().expect("utf-8 temp path")]);
    }
}

/// How to make, check and mount one kind of filesystem.
struct FsKind {
    name: &'static str,
    mkfs: &'static [&'static str],
    /// The smallest size its mkfs accepts comfortably.
    size: u64,
    /// Checks an unmounted image read-only: program and arguments before the path.
    check: &'static [&'static str],
    /// Options to mount the replica (the original is unmounted by then).
    replica_options: &'static str,
    /// Whether the replica is checked after it was mounted once: XFS's freeze leaves a log
    /// that `xfs_repair -n` will not ignore, so the replica is mounted (replaying it, as a
    /// recovery would) before the check. ext4's freeze empties the journal.
    check_after_mount: bool,
}

const EXT4: FsKind = FsKind {
    name: "ext4",
    // No lazy initialisation: nothing writes in the background after mount.
    mkfs: &["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
    size: 64 * MIB,
    check: &["e2fsck", "-fn"],
    replica_options: "ro,noload",
    check_after_mount: false,
};

const XFS: FsKind = FsKind {
    name: "xfs",
    mkfs: &["mkfs.xfs", "-q", "-f"],
    // mkfs.xfs refuses filesystems under 300 MB.
    size: 320 * MIB,
    check: &["xfs_repair", "-n"],
    replica_options: "nouuid",
    check_after_mount: true,
};

const XFS_RMAP: FsKind = FsKind {
    name: "xfs",
    mkfs: &["mkfs.xfs", "-q", "-f", "-m", "rmapbt=1"],
    size: 320 * MIB,
    check: &["xfs_repair", "-n"],
    replica_options: "nouuid",
    check_after_mount: true,
};

/// Captures what the tracker logs while `f` runs.
fn with_logs<R>(f: impl FnOnce() -> R) -> (R, String) {
    #[derive(Clone)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf(Arc::new(Mutex::new(Vec::new())));
    let writer = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let r = tracing::subscriber::with_default(sub, f);
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (r, logs)
}

/// Collects `dev` and applies the changes to `replica`, as the appliance would.
fn collect_into(t: &mut HashScan, dev: &str, replica: &File) -> CycleStats {
    let disk = Disk::open(dev).unwrap();
    let zeros = vec![0u8; MIB as usize];
    let stats = t
        .collect(&disk, &mut |c: Change<'_>| {
            match c {
                Change::Data { offset, data } => replica.write_all_at(data, offset)?,
                Change::Zero { offset, len } => {
                    let mut at = offset;
                    while at < offset + len {
                        let n = (offset + len - at).min(MIB);
                        replica.write_all_at(&zeros[..n as usize], at)?;
                        at += n;
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    t.commit().unwrap();
    stats
}

/// The free space of `dev` now, exactly (no alignment, no cap).
fn free_now(dev: &str) -> FreeSpace {
    let disk = Disk::open(dev).unwrap();
    freespace::query(&disk, 1, usize::MAX).expect("free space of the mounted filesystem")
}

/// What the tracker skips: the free space in whole tracker blocks.
fn skippable_now(dev: &str) -> u64 {
    let disk = Disk::open(dev).unwrap();
    freespace::query(&disk, BLOCK_SIZE, freespace::MAX_FREE_EXTENTS).unwrap().extents.bytes()
}

/// Every byte of `dev` outside `free` is the same in `replica`: each allocated block arrived.
/// Returns the bytes compared.
fn assert_allocated_blocks_equal(dev: &str, replica: &Path, free: &[Range<u64>]) -> u64 {
    let disk = Disk::open(dev).unwrap();
    let replica = File::open(replica).unwrap();
    let mut used = Vec::new();
    let mut at = 0;
    for r in free {
        if r.start > at {
            used.push(at..r.start);
        }
        at = r.end;
    }
    if at < disk.size() {
        used.push(at..disk.size());
    }
    let (mut a, mut b) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut compared = 0;
    for r in used {
        let mut off = r.start;
        while off < r.end {
            let n = (r.end - off).min(MIB) as usize;
            disk.read_at(off, &mut a[..n]).unwrap();
            replica.read_exact_at(&mut b[..n], off).unwrap();
            if a[..n] != b[..n] {
                let i = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y).unwrap();
                panic!(
                    "allocated byte {} differs between the device and the replica",
                    off + i as u64
                );
            }
            compared += n as u64;
            off += n as u64;
        }
    }
    compared
}

fn write_file(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn random(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// Mounts the filesystem that starts at `offset` in `replica` and checks that it holds exactly
/// `files` (None: must not exist).
fn assert_replica_files(
    kind: &FsKind,
    replica: &Path,
    offset: u64,
    len: u64,
    mnt: &Path,
    files: &BTreeMap<&str, Option<Vec<u8>>>,
) {
    let (off, size) = (offset.to_string(), len.to_string());
    let mut args = vec!["--offset", &off, "--sizelimit", &size];
    if kind.replica_options.split(',').any(|o| o == "ro") {
        args.push("--read-only");
    }
    let lo = Loop::attach(replica, &args).expect("attach the replica");
    let _m = Mount::new(&lo.dev, mnt, kind.replica_options).expect("mount the replica");
    for (name, want) in files {
        let got = fs::read(mnt.join(name));
        match want {
            Some(data) => {
                let got = got.unwrap_or_else(|e| panic!("{name} is missing in the replica: {e}"));
                assert!(got == *data, "{name} differs in the replica");
            }
            None => assert!(got.is_err(), "{name} was deleted but is in the replica"),
        }
    }
}

/// The whole scenario on a filesystem of `kind` made on the whole loop device.
fn exercise(kind: &FsKind) {
    if !have(kind.mkfs[0]) || !have("fsfreeze") || !have("losetup") {
        eprintln!(
            "SKIPPED: {} or fsfreeze or losetup is not installed; cannot test free-space skipping on {}",
            kind.mkfs[0], kind.name
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let replica_path = dir.path().join("replica.img");
    File::create(&img).unwrap().set_len(kind.size).unwrap();
    let mut mkfs: Vec<&str> = kind.mkfs[1..].to_vec();
    mkfs.push(img.to_str().unwrap());
    run(kind.mkfs[0], &mkfs).expect("make the filesystem");

    let lo = match Loop::attach(&img, &[]) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "SKIPPED: cannot create a loop device here (needs root and the loop module): {e}"
            );
            return;
        }
    };
    // Mountinfo names the mount point by its resolved path.
    let mnt = dir.path().canonicalize().unwrap().join("mnt");
    let mount = match Mount::new(&lo.dev, &mnt, "noatime") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount {} here: {e}", kind.name);
            return;
        }
    };
    // From here on, everything is checked.
    let replica = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&replica_path)
        .unwrap();
    replica.set_len(kind.size).unwrap();

    let mut rng = StdRng::seed_from_u64(7);
    let mut files: BTreeMap<&str, Option<Vec<u8>>> = BTreeMap::new();
    fs::create_dir(mnt.join("dir")).unwrap();
    for (name, len) in
        [("big", 5 * MIB as usize), ("odd", MIB as usize + 123), ("dir/small", 300_000)]
    {
        let data = random(&mut rng, len);
        write_file(&mnt.join(name), &data);
        files.insert(name, Some(data));
    }
    write_file(&mnt.join("hello"), b"hello, lifeboat\n");
    files.insert("hello", Some(b"hello, lifeboat\n".to_vec()));
    // A deleted file: its blocks are free again and hold stale data.
    write_file(&mnt.join("deleted"), &random(&mut rng, 2 * MIB as usize));
    fs::remove_file(mnt.join("deleted")).unwrap();
    files.insert("deleted", None);

    let mut cfg = HashScanConfig::new(dir.path().join("state").join("disk.map"));
    cfg.disk_id = [1; 16];
    let mut t = HashScan::new(cfg).unwrap();

    // (a) The initial copy skips the free space.
    let frozen = Frozen::new(&mnt);
    let free = free_now(&lo.dev);
    assert_eq!(free.sources.len(), 1, "{free}");
    assert_eq!(free.sources[0].fs_type, kind.name);
    assert_eq!(free.sources[0].mount_point, mnt);
    assert_eq!(free.sources[0].partition, None);
    let skippable = skippable_now(&lo.dev);
    let (stats, logs) = with_logs(|| collect_into(&mut t, &lo.dev, &replica));
    assert!(
        logs.contains(&format!(
            "skipping free space of the mounted {} filesystem at {}",
            kind.name,
            mnt.display()
        )),
        "{logs}"
    );
    assert!(stats.initial);
    assert_eq!(stats.free_bytes_skipped, skippable, "{stats:?}");
    assert_eq!(stats.bytes_read + stats.free_bytes_skipped, kind.size, "{stats:?}");
    assert!(stats.free_bytes_skipped >= kind.size / 2, "{stats:?}");
    assert!(stats.data_bytes <= stats.bytes_read);
    // (b) Every allocated block is on the replica.
    let compared = assert_allocated_blocks_equal(&lo.dev, &replica_path, free.extents.ranges());
    eprintln!(
        "{}: {} of {} free (GETFSMAP), {} skipped in whole 64 KiB blocks; read {}, sent {} of data; {} allocated bytes identical on the replica",
        kind.name,
        freespace::human_bytes(free.extents.bytes()),
        freespace::human_bytes(kind.size),
        freespace::human_bytes(stats.free_bytes_skipped),
        freespace::human_bytes(stats.bytes_read),
        freespace::human_bytes(stats.data_bytes),
        freespace::human_bytes(compared),
    );
    drop(frozen);

    // (c) A new file (in blocks that were free and skipped) and a deletion: the next collect
    // brings the new blocks.
    let data = random(&mut rng, 3 * MIB as usize + 4096);
    write_file(&mnt.join("dir/new"), &data);
    files.insert("dir/new", Some(data));
    fs::remove_file(mnt.join("odd")).unwrap();
    files.insert("odd", None);
    let frozen = Frozen::new(&mnt);
    let free = free_now(&lo.dev);
    let skippable = skippable_now(&lo.dev);
    let stats = collect_into(&mut t, &lo.dev, &replica);
    assert!(!stats.initial);
    assert_eq!(stats.free_bytes_skipped, skippable, "{stats:?}");
    assert!(stats.data_bytes >= 3 * MIB, "the new file's blocks were not sent: {stats:?}");
    assert_eq!(stats.unknown_bytes, 0);
    assert_allocated_blocks_equal(&lo.dev, &replica_path, free.extents.ranges());
    drop(frozen);
    drop(mount);

    // The replica is a consistent filesystem with the files as they are now.
    if !kind.check_after_mount {
        check_replica(kind, &replica_path);
    }
    assert_replica_files(kind, &replica_path, 0, kind.size, &dir.path().join("rmnt"), &files);
    if kind.check_after_mount {
        check_replica(kind, &replica_path);
    }
}

/// Runs the filesystem's read-only checker on the replica, when it is installed.
fn check_replica(kind: &FsKind, replica: &Path) {
    if !have(kind.check[0]) {
        eprintln!("{} is not installed: the replica is not checked with it", kind.check[0]);
        return;
    }
    let mut args = kind.check[1..].to_vec();
    args.push(replica.to_str().unwrap());
    run(kind.check[0], &args).expect("the replica passes the filesystem check");
}

#[test]
fn ext4_free_space_is_skipped_and_allocated_blocks_replicated() {
    exercise(&EXT4);
}

#[test]
fn xfs_free_space_is_skipped_and_allocated_blocks_replicated() {
    exercise(&XFS);
}

#[test]
fn xfs_with_reverse_mapping_free_space_is_skipped() {
    exercise(&XFS_RMAP);
}

/// A partition added with `addpart`, deleted on drop.
struct AddedPartition {
    dev: String,
}

impl Drop for AddedPartition {
    fn drop(&mut self) {
        let _ = run("delpart", &[&self.dev, "1"]);
    }
}

/// Writes an MBR with primary Linux partitions at the given (start, length) in bytes.
fn write_mbr(img: &Path, parts: &[(u64, u64)]) {
    let mut mbr = [0u8; 512];
    for (i, (start, len)) in parts.iter().enumerate() {
        let e = &mut mbr[446 + 16 * i..462 + 16 * i];
        e[4] = 0x83;
        e[8..12].copy_from_slice(&((start / 512) as u32).to_le_bytes());
        e[12..16].copy_from_slice(&((len / 512) as u32).to_le_bytes());
    }
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    OpenOptions::new().write(true).open(img).unwrap().write_all_at(&mbr, 0).unwrap();
}

/// A partitioned disk: the tracker protects the whole disk, the filesystem is mounted from
/// its first partition; free space is found through the partition and shifted by its start.
#[test]
fn ext4_on_a_partition_of_the_protected_disk() {
    if !have("mkfs.ext4") || !have("fsfreeze") || !have("losetup") {
        eprintln!("SKIPPED: mkfs.ext4, fsfreeze or losetup is not installed");
        return;
    }
    let size = 96 * MIB;
    let (p1, p1_len) = (MIB, 40 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let replica_path = dir.path().join("replica.img");
    File::create(&img).unwrap().set_len(size).unwrap();
    write_mbr(&img, &[(p1, p1_len), (p1 + p1_len, size - p1 - p1_len)]);
    let lo = match Loop::attach(&img, &["--partscan"]) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "SKIPPED: cannot create a loop device here (needs root and the loop module): {e}"
            );
            return;
        }
    };
    let part = format!("{}p1", lo.dev);
    let appears = || {
        (0..30).any(|_| {
            let there = Path::new(&part).exists();
            if !there {
                std::thread::sleep(Duration::from_millis(100));
            }
            there
        })
    };
    // A kernel without the MBR parser finds no partitions: add them the way partx does.
    let _added = if appears() {
        None
    } else {
        let (start, len) = ((p1 / 512).to_string(), (p1_len / 512).to_string());
        match run("addpart", &[&lo.dev, "1", &start, &len]) {
            Ok(_) if appears() => Some(AddedPartition { dev: lo.dev.clone() }),
            r => {
                eprintln!("SKIPPED: no partition device {part} for the loop device ({r:?})");
                return;
            }
        }
    };
    let mut mkfs: Vec<&str> = EXT4.mkfs[1..].to_vec();
    mkfs.push(&part);
    run(EXT4.mkfs[0], &mkfs).expect("make the filesystem on the partition");
    let mnt = dir.path().join("mnt");
    let mount = match Mount::new(&part, &mnt, "noatime") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount ext4 here: {e}");
            return;
        }
    };
    let replica = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&replica_path)
        .unwrap();
    replica.set_len(size).unwrap();
    let mut rng = StdRng::seed_from_u64(8);
    let data = random(&mut rng, 4 * MIB as usize);
    write_file(&mnt.join("file"), &data);

    let mut t =
        HashScan::new(HashScanConfig::new(dir.path().join("state").join("disk.map"))).unwrap();
    let frozen = Frozen::new(&mnt);
    let free = free_now(&lo.dev);
    assert_eq!(free.sources.len(), 1, "{free}");
    assert_eq!(free.sources[0].partition, Some(1));
    assert_eq!(free.sources[0].offset, p1);
    assert!(free.extents.ranges().iter().all(|r| r.start >= p1 && r.end <= p1 + p1_len));
    let skippable = skippable_now(&lo.dev);
    let stats = collect_into(&mut t, &lo.dev, &replica);
    assert_eq!(stats.free_bytes_skipped, skippable);
    assert!(stats.free_bytes_skipped >= p1_len / 2, "{stats:?}");
    // The rest of the disk (partition table, the unmounted second partition) is read.
    assert_eq!(stats.bytes_read, size - stats.free_bytes_skipped);
    assert_allocated_blocks_equal(&lo.dev, &replica_path, free.extents.ranges());
    eprintln!(
        "partition 1 (ext4, {}): {} skipped of a {} disk",
        freespace::human_bytes(p1_len),
        freespace::human_bytes(stats.free_bytes_skipped),
        freespace::human_bytes(size)
    );
    drop(frozen);
    drop(mount);
    let files = BTreeMap::from([("file", Some(data))]);
    assert_replica_files(&EXT4, &replica_path, p1, p1_len, &dir.path().join("rmnt"), &files);
}

/// A loop device that is not mounted: no free space, the whole device is read.
#[test]
fn unmounted_device_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    File::create(&img).unwrap().set_len(4 * MIB).unwrap();
    let lo = match Loop::attach(&img, &[]) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "SKIPPED: cannot create a loop device here (needs root and the loop module): {e}"
            );
            return;
        }
    };
    let disk = Disk::open(&lo.dev).unwrap();
    let err = freespace::query(&disk, BLOCK_SIZE, 10).unwrap_err();
    assert!(err.to_string().contains("not mounted"), "{err}");
    let mut t =
        HashScan::new(HashScanConfig::new(dir.path().join("state").join("disk.map"))).unwrap();
    let stats = t.collect(&disk, &mut |_c: Change<'_>| Ok(())).unwrap();
    assert_eq!((stats.free_bytes_skipped, stats.bytes_read), (0, 4 * MIB));
}
