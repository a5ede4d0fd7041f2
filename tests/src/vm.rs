//! A bootable test disk and booting it under qemu.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// The kernel the bootable test disk boots: the newest `/boot/vmlinuz-<version>` that has
/// its modules in `/lib/modules/<version>` (Debian's `linux-image-amd64`, installed by
/// `cargo xtask setup`). Returns (vmlinuz, version).
pub fn test_kernel() -> (PathBuf, String) {
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir("/boot")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let v = name.strip_prefix("vmlinuz-")?.to_owned();
                    Path::new("/lib/modules").join(&v).is_dir().then(|| (e.path(), v))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().expect(
        "no /boot/vmlinuz-* with its modules: `cargo xtask test` installs linux-image-amd64",
    )
}

/// What the bootable test disk prints on its serial console once its root filesystem
/// (the boot disk's partition 1) is up.
pub const BOOTED: &str = "LIFEBOAT-BOOTED";
/// Printed after the data disk's files (`sha256sum /data/*`).
pub const BOOT_DONE: &str = "LIFEBOAT-DONE";

/// Builds a small bootable Linux disk image at `path` (48 MiB, raw): an MBR with
/// SYSLINUX's boot code and one bootable partition at 1 MiB holding an ext2 root
/// filesystem with the host's kernel, an initramfs and BusyBox. The initramfs loads the
/// virtio and ext4 modules, mounts partition 1 read-only and switches to it; its `init`
/// prints [`BOOTED`], mounts the second disk (`/dev/vdb`, ext4) read-only at `/data`,
/// prints `sha256sum /data/*`, then [`BOOT_DONE`], and powers off. Needs root (a loop
/// mount for `extlinux --install`), busybox-static, extlinux and cpio.
pub fn make_bootable_disk(path: &Path, work: &Path) {
    let (vmlinuz, version) = test_kernel();
    let w = work.join("bootdisk");
    let ir = w.join("initramfs");
    let root = w.join("root");
    for d in ["bin", "dev", "proc", "sys", "newroot", "lib/modules"] {
        std::fs::create_dir_all(ir.join(d)).unwrap();
    }
    for d in ["bin", "sbin", "boot/extlinux", "dev", "proc", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for dir in [&ir, &root] {
        std::fs::copy("/bin/busybox", dir.join("bin/busybox"))
            .expect("/bin/busybox: `cargo xtask test` installs busybox-static");
    }
    // The modules to reach a virtio disk with ext4 on it, dependencies first.
    let mut insmods = Vec::new();
    for m in ["virtio_pci", "virtio_blk", "ext4"] {
        let deps = sh("modprobe", &["--show-depends", "-S", &version, m]).unwrap();
        for line in deps.lines() {
            let Some(ko) = line.strip_prefix("insmod ").map(str::trim) else { continue };
            let name = Path::new(ko).file_name().unwrap().to_string_lossy().into_owned();
            if !insmods.contains(&name) {
                std::fs::copy(ko, ir.join("lib/modules").join(&name)).unwrap();
                insmods.push(name);
            }
        }
    }
    let loads: String = insmods
        .iter()
        .map(|m| format!("/bin/busybox insmod /lib/modules/{m} 2>/dev/null\n"))
        .collect();
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sys /sys\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         {loads}\
         n=0\n\
         while [ ! -b /dev/vda1 ] && [ $n -lt 200 ]; do /bin/busybox sleep 0.1; n=$((n+1)); done\n\
         /bin/busybox mount -t ext4 -o ro /dev/vda1 /newroot || {{ echo LIFEBOAT-NO-ROOT; /bin/busybox poweroff -f; }}\n\
         /bin/busybox mount --move /dev /newroot/dev\n\
         exec /bin/busybox switch_root /newroot /sbin/init\n"
    );
    write_exec(&ir.join("init"), &init);
    let rootinit = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         echo {BOOTED}\n\
         /bin/busybox mount -t ext4 -o ro /dev/vdb /data && /bin/busybox sha256sum /data/* 2>/dev/null\n\
         echo {BOOT_DONE}\n\
         /bin/busybox poweroff -f\n"
    );
    write_exec(&root.join("sbin/init"), &rootinit);
    let cpio = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > ../initrd.gz")
        .current_dir(&ir)
        .status()
        .expect("cpio: `cargo xtask test` installs it");
    assert!(cpio.success(), "building the initramfs failed");
    std::fs::copy(w.join("initrd.gz"), root.join("boot/initrd.gz")).unwrap();
    std::fs::copy(&vmlinuz, root.join("boot/vmlinuz")).unwrap();
    std::fs::write(
        root.join("boot/extlinux/extlinux.conf"),
        "DEFAULT linux\nTIMEOUT 1\nPROMPT 0\nLABEL linux\n  KERNEL /boot/vmlinuz\n  INITRD /boot/initrd.gz\n  APPEND console=ttyS0 quiet panic=-1\n",
    )
    .unwrap();
    // The image: partition 1 from sector 2048 to the end, ext2 made in place.
    const MIB: u64 = 1 << 20;
    let size = 48 * MIB;
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
    let p = path.to_str().unwrap();
    sh(
        "mke2fs",
        &["-q", "-F", "-t", "ext2", "-E", "offset=1048576", "-d", root.to_str().unwrap(), p, "47M"],
    )
    .unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let mbr = std::fs::read("/usr/lib/EXTLINUX/mbr.bin")
            .expect("/usr/lib/EXTLINUX/mbr.bin: `cargo xtask test` installs extlinux");
        f.write_all_at(&mbr[..440], 0).unwrap();
        let mut entry = [0x80, 0xfe, 0xff, 0xff, 0x83, 0xfe, 0xff, 0xff].to_vec();
        entry.extend_from_slice(&2048u32.to_le_bytes());
        entry.extend_from_slice(&(((size - MIB) / 512) as u32).to_le_bytes());
        f.write_all_at(&entry, 446).unwrap();
        f.write_all_at(&[0x55, 0xaa], 510).unwrap();
        f.sync_all().unwrap();
    }
    let dev = sh("losetup", &["--find", "--show", "--offset", "1048576", p]).unwrap();
    let mnt = w.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = sh("mount", &[&dev, mnt.to_str().unwrap()]);
    let installed = mounted
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|_| sh("extlinux", &["--install", mnt.join("boot/extlinux").to_str().unwrap()]));
    if mounted.is_ok() {
        sh("umount", &[mnt.to_str().unwrap()]).unwrap();
    }
    let _ = sh("losetup", &["--detach", &dev]);
    installed.expect("extlinux --install");
    let _ = std::fs::remove_dir_all(&w);
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Boots the local target's VM spec `spec` with `lifeboat-appliance qemu-command` under
/// software emulation (TCG), its interfaces on qemu's user network (the test host has
/// none of the mapped networks), and returns what its serial console printed, once it
/// powered off or after `limit`.
pub fn boot_vm(bin: &Path, spec: &Path, limit: Duration) -> String {
    let args = Command::new(bin.join("lifeboat-appliance"))
        .args(["qemu-command", "--json", "--accel", "tcg", "--user-net"])
        .arg(spec)
        .output()
        .unwrap();
    assert!(args.status.success(), "qemu-command: {}", String::from_utf8_lossy(&args.stderr));
    let argv: Vec<String> = serde_json::from_slice(&args.stdout).unwrap();
    // The console goes to a file beside the spec: a pipe could fill and stall the guest.
    let console = spec.with_extension("console");
    let out = std::fs::File::create(&console).unwrap();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("qemu-system-x86_64: `cargo xtask test` installs it");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    String::from_utf8_lossy(&std::fs::read(&console).unwrap()).into_owned()
}
