// Lists of one range are what these tests mean; an empty reversed range is a test input.
#![allow(clippy::single_range_in_vec_init, clippy::reversed_empty_ranges)]
#![allow(clippy::cast_possible_truncation)]

use super::*;

const KIB: u64 = 1024;
const U: u64 = 64 * KIB;

const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
42 27 7:0 / /tmp/mnt\\040with\\040spaces rw,relatime shared:5 master:2 - ext4 /dev/loop0 rw
43 27 8:17 /srv/data /data rw,noatime - xfs /dev/sdb1 rw,attr2,inode64
44 27 8:17 / /mnt/whole\\134back rw - xfs /dev/sdb1 rw
garbage line
45 27 0:40 / /no/separator rw shared:9 tmpfs tmpfs rw
46 27 x:y / /bad/devno rw - ext4 /dev/zzz rw
";

#[test]
fn mountinfo_is_parsed_with_optional_fields_and_escapes() {
    let m = parse_mountinfo(MOUNTINFO.as_bytes());
    assert_eq!(m.len(), 5, "{m:#?}");
    assert_eq!((m[0].major, m[0].minor, m[0].fs_type.as_str()), (0, 21, "proc"));
    assert_eq!(m[1].mount_point, Path::new("/"));
    assert_eq!(m[1].source, "/dev/vda");
    // Two optional fields before the separator; spaces escaped as \040.
    assert_eq!(
        m[2],
        MountEntry {
            major: 7,
            minor: 0,
            root: PathBuf::from("/"),
            mount_point: PathBuf::from("/tmp/mnt with spaces"),
            fs_type: "ext4".into(),
            source: "/dev/loop0".into(),
        }
    );
    // A bind mount of a subdirectory, and the same device mounted again; \134 is a backslash.
    assert_eq!((m[3].major, m[3].minor), (8, 17));
    assert_eq!(m[3].root, Path::new("/srv/data"));
    assert_eq!(m[3].fs_type, "xfs");
    assert_eq!(m[4].mount_point, Path::new("/mnt/whole\\back"));
    assert_eq!(m[4].root, Path::new("/"));
}

#[test]
fn unescape_keeps_what_is_not_an_escape() {
    assert_eq!(unescape(b"a\\040b"), b"a b");
    assert_eq!(unescape(b"tab\\011nl\\012"), b"tab\tnl\n");
    assert_eq!(unescape(b"end\\04"), b"end\\04");
    assert_eq!(unescape(b"\\999"), b"\\999");
    assert_eq!(unescape(b"\\"), b"\\");
    // \777 is over 255: left as it is.
    assert_eq!(unescape(b"\\777"), b"\\777");
}

#[test]
fn real_mountinfo_parses() {
    // Whatever this machine has, its root filesystem is mounted.
    let text = fs::read("/proc/self/mountinfo").unwrap();
    let m = parse_mountinfo(&text);
    assert!(m.iter().any(|e| e.mount_point == Path::new("/")), "{m:#?}");
}

#[test]
fn partitions_are_read_from_sysfs() {
    let dir = tempfile::tempdir().unwrap();
    let write = |sub: &str, files: &[(&str, &str)]| {
        let d = dir.path().join(sub);
        fs::create_dir_all(&d).unwrap();
        for (name, content) in files {
            fs::write(d.join(name), content).unwrap();
        }
    };
    write(
        "sdb2",
        &[("partition", "2\n"), ("dev", "8:18\n"), ("start", "4096\n"), ("size", "8192\n")],
    );
    write(
        "sdb1",
        &[("partition", "1\n"), ("dev", "8:17\n"), ("start", "2048\n"), ("size", "2048\n")],
    );
    // Not partitions: no `partition` file, or unreadable fields.
    write("queue", &[("dev", "8:99\n"), ("start", "0"), ("size", "1")]);
    write("sdb3", &[("partition", "3"), ("dev", "garbage"), ("start", "1"), ("size", "1")]);
    fs::write(dir.path().join("size"), "100000\n").unwrap();

    let parts = read_partitions(dir.path());
    assert_eq!(
        parts,
        vec![
            Partition { number: 1, major: 8, minor: 17, start: 2048 * 512, len: 2048 * 512 },
            Partition { number: 2, major: 8, minor: 18, start: 4096 * 512, len: 8192 * 512 },
        ]
    );
    assert!(read_partitions(&dir.path().join("missing")).is_empty());
}

#[test]
fn device_numbers_decode_like_st_rdev() {
    // The kernel's new_encode_dev, as in fmr_device.
    let encode = |major: u32, minor: u32| (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
    for (major, minor) in [(7, 0), (8, 17), (259, 300), (253, 1 << 19), (4095, 0xfffff)] {
        assert_eq!(decode_dev(encode(major, minor)), (major, minor));
        // The same number userspace sees in st_rdev.
        let dev = rustix::fs::makedev(major, minor);
        assert_eq!((rustix::fs::major(dev), rustix::fs::minor(dev)), (major, minor));
        assert_eq!(dev, u64::from(encode(major, minor)));
    }
}

#[test]
fn fsmap_abi_constants() {
    // FMR_OWNER(0, 1); FMR_OWNER('X', 1) is XFS's static metadata, not free space.
    assert_eq!(FMR_OWN_FREE, 1);
    assert_eq!(FS_IOC_GETFSMAP as u64, 0xc0c0_583b);
    assert_eq!(size_of::<FsmapQuery>(), 192 + 64 * FSMAP_RECORDS);
}

fn build(align: u64, cap: usize, ranges: &[Range<u64>]) -> FreeExtents {
    let mut b = FreeExtentsBuilder::new(align, cap);
    for r in ranges {
        b.push(r.clone());
    }
    b.finish()
}

#[test]
fn extents_are_merged_before_alignment() {
    // Two records that touch at 100 KiB: merged first, so the unit 64..128 KiB is kept.
    let e = build(U, 100, &[10 * KIB..100 * KIB, 100 * KIB..200 * KIB]);
    assert_eq!(e.ranges(), &[U..3 * U]);
    assert_eq!(e.bytes(), 2 * U);
    assert_eq!(e.dropped_below(), None);
    // Aligned separately they would have kept only 128..192 KiB.
    let e = build(U, 100, &[10 * KIB..100 * KIB, 101 * KIB..200 * KIB]);
    assert_eq!(e.ranges(), &[2 * U..3 * U]);
}

#[test]
fn extents_shorter_than_a_unit_or_empty_are_dropped() {
    let e = build(U, 100, &[0..U - 1, 5 * U + 1..6 * U + 10, 9 * U..9 * U, 12 * U..11 * U]);
    assert!(e.is_empty(), "{e:?}");
    assert_eq!(e.bytes(), 0);
    // Exactly one unit, aligned: kept.
    let e = build(U, 100, &[3 * U..4 * U]);
    assert_eq!(e.ranges(), &[3 * U..4 * U]);
    // Near u64::MAX: no overflow.
    let e = build(U, 100, &[u64::MAX - 10..u64::MAX]);
    assert!(e.is_empty());
}

#[test]
fn unsorted_and_overlapping_extents_are_normalized() {
    let e = build(
        U,
        100,
        &[
            10 * U..12 * U,
            2 * U..4 * U,
            3 * U..5 * U, // overlaps the previous one
            20 * U..21 * U,
            5 * U..6 * U, // touches 2..5
            0..U,
        ],
    );
    assert_eq!(e.ranges(), &[0..U, 2 * U..6 * U, 10 * U..12 * U, 20 * U..21 * U]);
    // The invariant: sorted, disjoint, not touching, aligned.
    for w in e.ranges().windows(2) {
        assert!(w[0].end < w[1].start);
    }
}

#[test]
fn the_cap_keeps_the_longest_extents() {
    // Five extents of 1..=5 units, a gap between each; room for two.
    let mut ranges = Vec::new();
    let mut at = 0;
    for n in 1..=5u64 {
        ranges.push(at..at + n * U);
        at += (n + 1) * U;
    }
    let e = build(U, 2, &ranges);
    assert!(e.ranges().len() <= 2, "{e:?}");
    let lens: Vec<u64> = e.ranges().iter().map(|r| (r.end - r.start) / U).collect();
    assert_eq!(lens, vec![4, 5]);
    assert_eq!(e.dropped_below(), Some(4 * U));
    // A cap that fits keeps everything.
    let all = build(U, 5, &ranges);
    assert_eq!(all.ranges().len(), 5);
    assert_eq!(all.dropped_below(), None);
    // Memory stays bounded with many tiny-but-whole extents.
    let many: Vec<Range<u64>> = (0..10_000u64).map(|i| 2 * i * U..(2 * i + 1) * U).collect();
    let e = build(U, 64, &many);
    assert!(e.ranges().len() <= 64);
}

#[test]
fn the_cursor_answers_whole_blocks_in_order() {
    let e = build(U, 100, &[U..4 * U, 6 * U..7 * U + 100]);
    let mut c = e.cursor();
    assert!(!c.covers(0, U));
    assert!(c.covers(U, 2 * U));
    assert!(c.covers(2 * U, 3 * U));
    // A range running past a free extent is not free.
    assert!(!c.covers(3 * U, 5 * U));
    assert!(c.covers(3 * U, 4 * U));
    assert!(!c.covers(4 * U, 5 * U));
    assert!(!c.covers(5 * U, 6 * U));
    assert!(c.covers(6 * U, 7 * U));
    // The partial unit after 7U was dropped by alignment.
    assert!(!c.covers(7 * U, 7 * U + 100));
    assert!(!c.covers(8 * U, 9 * U));
    // A short last block inside an extent is free.
    let e = build(U, 100, &[0..4 * U]);
    let mut c = e.cursor();
    assert!(c.covers(3 * U, 3 * U + 4096));
    assert!(!FreeExtents::default().cursor().covers(0, 0));
}

#[test]
fn chunks_of_a_scan_see_the_free_blocks() {
    // The tracker asks block by block, chunk after chunk: the free blocks it sees are exactly
    // the aligned units inside the free space.
    let free = [3 * KIB..300 * KIB, 1000 * KIB..1100 * KIB, 1100 * KIB..2000 * KIB];
    let e = build(U, 100, &free);
    let size = 2100 * KIB;
    let mut c = e.cursor();
    let mut seen = Vec::new();
    for chunk in (0..size).step_by((256 * KIB) as usize) {
        let end = (chunk + 256 * KIB).min(size);
        let mut b = chunk;
        while b < end {
            let b_end = (b + U).min(end);
            if c.covers(b, b_end) {
                seen.push(b / U);
            }
            b = b_end;
        }
    }
    // The two records touching at 1100 KiB are one run: whole units 16 (1024 KiB) to 30,
    // 17 (1088 .. 1152 KiB) included although neither record holds it alone.
    let union = [3 * KIB..300 * KIB, 1000 * KIB..2000 * KIB];
    let expected: Vec<u64> = (0..size.div_ceil(U))
        .filter(|&i| union.iter().any(|r| r.start <= i * U && (i + 1) * U <= r.end))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(seen, [1, 2, 3].into_iter().chain(16..=30).collect::<Vec<u64>>());
}

#[test]
fn human_bytes_reads_well() {
    assert_eq!(human_bytes(0), "0 bytes");
    assert_eq!(human_bytes(1023), "1023 bytes");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(52 << 20), "52.0 MiB");
    assert_eq!(human_bytes(3 << 40), "3.0 TiB");
}

#[test]
fn an_image_file_has_no_free_space_to_ask() {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(1 << 20).unwrap();
    let disk = Disk::open(f.path()).unwrap();
    let err = query(&disk, U, 10).unwrap_err();
    assert!(err.0.contains("image file"), "{err}");
}

#[test]
fn mode_and_display_name_the_filesystems() {
    let fs = FreeSpace {
        sources: vec![
            FreeSource {
                fs_type: "ext4".into(),
                mount_point: "/mnt/x".into(),
                partition: None,
                offset: 0,
                free_bytes: 3 << 30,
            },
            FreeSource {
                fs_type: "xfs".into(),
                mount_point: "/srv".into(),
                partition: Some(2),
                offset: 1 << 20,
                free_bytes: 1 << 20,
            },
        ],
        extents: FreeExtents::default(),
    };
    assert_eq!(
        fs.to_string(),
        "the mounted ext4 filesystem at /mnt/x: 3.0 GiB free; \
         the mounted xfs filesystem at /srv (partition 2, at offset 1048576): 1.0 MiB free"
    );
    let mut other = fs.clone();
    other.sources[0].free_bytes = 1;
    assert_eq!(fs.mode_key(), other.mode_key());
    other.sources[0].mount_point = "/mnt/y".into();
    assert_ne!(fs.mode_key(), other.mode_key());
}

use crate::testutil::sh;

/// Undoes a setup step on drop: unmount, detach.
struct Undo(&'static str, Vec<String>);

impl Drop for Undo {
    fn drop(&mut self) {
        let args: Vec<&str> = self.1.iter().map(String::as_str).collect();
        let _ = sh(self.0, &args);
    }
}

/// GETFSMAP asked a few records at a time (the "last record is the next low key" loop) finds
/// exactly what one call finds, on a real mounted filesystem (ext4, and XFS with reverse
/// mapping, whose records carry inode owners and file offsets in the key). Skips where loop
/// devices cannot be made or mounted.
#[test]
fn getfsmap_in_small_batches_matches_one_call() {
    for (mkfs, size) in [
        (&["mkfs.ext4", "-q", "-F", "-b", "4096"][..], 64u64 << 20),
        (&["mkfs.xfs", "-q", "-f", "-m", "rmapbt=1"][..], 320 << 20),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        fs::File::create(&img).unwrap().set_len(size).unwrap();
        let img_s = img.to_str().unwrap();
        if let Err(e) = sh(mkfs[0], &[&mkfs[1..], &[img_s]].concat()) {
            eprintln!("SKIPPED ({}): {e}", mkfs[0]);
            continue;
        }
        let dev = match sh("losetup", &["--find", "--show", img_s]) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("SKIPPED: cannot create a loop device here: {e}");
                return;
            }
        };
        let _detach = Undo("losetup", vec!["--detach".into(), dev.clone()]);
        let mnt = dir.path().canonicalize().unwrap().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let mnt_s = mnt.to_str().unwrap().to_string();
        if let Err(e) = sh("mount", &[&dev, &mnt_s]) {
            eprintln!("SKIPPED: cannot mount here: {e}");
            return;
        }
        let _umount = Undo("umount", vec![mnt_s.clone()]);
        // Some files, so free space is split into several extents and XFS has owners.
        for i in 0..20u8 {
            fs::write(mnt.join(format!("f{i}")), vec![i | 1; 4096 * (1 + 3 * i as usize)]).unwrap();
        }
        // Allocated before some are deleted, so the deleted ones leave free gaps.
        rustix::fs::sync();
        for i in (0..20).step_by(3) {
            fs::remove_file(mnt.join(format!("f{i}"))).unwrap();
        }
        rustix::fs::sync();
        let st = rustix::fs::stat(dev.as_str()).unwrap();
        let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
        let fd = open_mount_point(&mnt, major, minor).unwrap();
        let all = |batch| {
            let mut v = Vec::new();
            let free = getfsmap_free(&fd, major, minor, size, batch, |r| v.push(r)).unwrap();
            (free, v)
        };
        // XFS frees a deleted file's blocks in the background (inodegc), so the map may
        // still change after the sync (CI once saw it grow between two scans). A freeze
        // finishes that work; then scan until two scans agree.
        let _ = sh("fsfreeze", &["--freeze", &mnt_s]);
        let _ = sh("fsfreeze", &["--unfreeze", &mnt_s]);
        let mut settled = all(FSMAP_RECORDS);
        for _ in 0..50 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let again = all(FSMAP_RECORDS);
            if again == settled {
                break;
            }
            settled = again;
        }
        let (free, one_call) = settled;
        assert!(free > size / 2, "{}: {free} free of {size}", mkfs[0]);
        assert!(one_call.len() > 1, "{one_call:?}");
        for w in one_call.windows(2) {
            assert!(w[0].end <= w[1].start, "records ascend: {one_call:?}");
        }
        for batch in [1, 2, 3, 7] {
            assert_eq!(all(batch), (free, one_call.clone()), "{} in batches of {batch}", mkfs[0]);
        }
        eprintln!(
            "{}: {} free extents, {free} bytes, alike in every batch size",
            mkfs[0],
            one_call.len()
        );
        // Another device's number: nothing is trusted.
        let (none, v) = {
            let mut v = Vec::new();
            let f = getfsmap_free(&fd, major, minor + 1, size, 16, |r| v.push(r)).unwrap();
            (f, v)
        };
        assert_eq!((none, v.len()), (0, 0));
    }
}
