//! `cargo xtask image`: the appliance as a bootable disk image (raw, qcow2, and an OVA with an
//! OVF 1.0 descriptor), built from Debian packages (bookworm, from the Debian archive, with
//! mmdebstrap) plus the release binaries, the bundled plugins and the agent's package.
//!
//! No loop device and no mount: the root filesystem is made from a folder (`mkfs.ext4 -d`),
//! the EFI system partition from files (`mkfs.vfat -C`, mtools, `syslinux --install` on the
//! image file), and the partitions are written into a GPT disk at their offsets. The ESP
//! boots both ways: SYSLINUX (BIOS, through `gptmbr.bin` and the partition's legacy-boot
//! attribute) and systemd-boot (UEFI, `\EFI\BOOT\BOOTX64.EFI`), with the same kernel and
//! initramfs.
//!
//! The Debian root is cached as a tarball in `~/.cache/lifeboat/images` (or
//! `LIFEBOAT_CACHE_DIR`), keyed by the release and the package list; nothing secret is in
//! it or in the image (machine id, SSH keys: none; the appliance makes its CA, keys and
//! setup token at its first start).

use crate::quickstart::sha256_file;
use crate::{root, run, target_dir};
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the image is built from (Debian bookworm): the kernel, systemd (networkd, timesyncd),
/// the firewall, XFS for the data disk.
pub const IMAGE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "systemd-timesyncd",
    "systemd-resolved",
    "udev",
    "linux-image-amd64",
    "initramfs-tools",
    "nftables",
    "xfsprogs",
    "iproute2",
    "kmod",
    "ca-certificates",
];

/// Host tools the build needs (Debian packages).
pub const BUILD_TOOLS: &[&str] = &[
    "mmdebstrap",
    "dosfstools",
    "mtools",
    "syslinux",
    "syslinux-common",
    "systemd-boot-efi",
    "fdisk",
    "e2fsprogs",
    // Frozen clock for mtools and syslinux, which stamp what they write with the time.
    "faketime",
];

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Sizes, MiB: the EFI system partition, and the least root partition.
const ESP_MIB: u64 = 160;
const ROOT_MIN_MIB: u64 = 2048;

// Fixed identifiers, so that two builds of the same inputs are the same bytes.
const DISK_GUID: &str = "6C1F0A52-3C2B-4E7A-9B1D-1F2A3B4C5D6E";
const ESP_GUID: &str = "6C1F0A52-3C2B-4E7A-9B1D-1F2A3B4C5D01";
const ROOT_GUID: &str = "6C1F0A52-3C2B-4E7A-9B1D-1F2A3B4C5D02";
const ROOT_FS_UUID: &str = "6c1f0a52-3c2b-4e7a-9b1d-1f2a3b4c5d03";
const ESP_VOLUME_ID: &str = "6C1F0A52";

/// Where the images go.
pub fn out_dir() -> PathBuf {
    root().join("images/out")
}

fn cache_dir() -> PathBuf {
    match std::env::var_os("LIFEBOAT_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/lifeboat"),
    }
    .join("images")
}

/// The built image's files.
pub struct Built {
    pub raw: PathBuf,
    pub qcow2: PathBuf,
    pub ova: PathBuf,
}

/// Builds everything, then the image.
pub fn build() -> Result<Built> {
    crate::setup::toolchain()?;
    crate::setup::apt(BUILD_TOOLS)?;
    crate::plugins::build()?;
    crate::build_binaries()?;
    crate::package::package_agent()?;
    build_image()
}

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Debian root as a tarball, from the cache or made now.
fn debian_root() -> Result<PathBuf> {
    let key = format!("{SUITE} {MIRROR} minbase {}", IMAGE_PACKAGES.join(","));
    let tag = &hex::encode(Sha256::digest(key.as_bytes()))[..16];
    let dir = cache_dir();
    std::fs::create_dir_all(&dir)?;
    let tarball = dir.join(format!("debian-{SUITE}-{tag}.tar"));
    if tarball.exists() {
        eprintln!("xtask: Debian root from the cache: {}", tarball.display());
        return Ok(tarball);
    }
    let part = dir.join(format!("debian-{SUITE}-{tag}.part.tar"));
    eprintln!("xtask: making the Debian root with mmdebstrap (a few minutes; cached after)");
    run(Command::new("mmdebstrap")
        .args(["--mode=root", "--variant=minbase", "--format=tar"])
        .arg(format!("--include={}", IMAGE_PACKAGES.join(",")))
        // Nothing secret or machine-specific in the image: systemd makes the machine id at
        // first boot.
        .arg("--customize-hook=rm -f \"$1\"/etc/ssh/ssh_host_* \"$1\"/var/lib/dbus/machine-id; : > \"$1\"/etc/machine-id")
        .arg("--customize-hook=rm -rf \"$1\"/var/cache/apt/archives/*.deb \"$1\"/var/lib/apt/lists/*")
        .arg(SUITE)
        .arg(&part)
        .arg(MIRROR)
        .env("SOURCE_DATE_EPOCH", crate::package::source_date_epoch().to_string()))?;
    std::fs::rename(&part, &tarball)?;
    Ok(tarball)
}

/// The appliance's configuration template: the bundled plugins pinned by their digests, the
/// state and the local target on the data disk.
fn appliance_config(plugins: &Path) -> Result<String> {
    let mut grants = String::new();
    for name in ["zstd", "aes-gcm", "local"] {
        let sha = sha256_file(&plugins.join(format!("{name}.wasm")))?;
        grants.push_str(&format!("\n[plugins.grants.{name}]\nsha256 = \"{sha}\"\n"));
        if name == "local" {
            grants.push_str(
                "clock = true\ndirectories = { \"/target\" = \"/var/lib/lifeboat/target\" }\n\
                 settings = { root = \"/target\", host_root = \"/var/lib/lifeboat/target\" }\n",
            );
        }
    }
    Ok(format!(
        "# The appliance's configuration, made at each start by /usr/lib/lifeboat/configure\n\
         # from /usr/share/lifeboat/appliance.toml.in (on the OS disk).\n\
         config_version = 1\ndata_dir = \"/var/lib/lifeboat/state\"\n\n\
         [config_server]\nlisten = \"0.0.0.0:443\"\nserver_names = [@SERVER_NAMES@]\n\
         downloads = \"/usr/share/lifeboat/downloads\"\n\n\
         [process_server]\nlisten = \"0.0.0.0:9443\"\n\n\
         [plugins]\ndir = \"/usr/lib/lifeboat/plugins\"\n{grants}"
    ))
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            std::fs::create_dir_all(&dest)?;
            copy_tree(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), &dest)?;
        }
    }
    Ok(())
}

/// Builds the image from what is built already.
pub fn build_image() -> Result<Built> {
    let version = crate::package::version()?;
    let out = out_dir();
    let work = out.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    let tree = work.join("root");
    std::fs::create_dir_all(&tree)?;
    let tarball = debian_root()?;
    run(Command::new("tar").args(["--numeric-owner", "-xpf"]).arg(&tarball).arg("-C").arg(&tree))?;

    // Lifeboat's files.
    let release = target_dir().join("release");
    let plugins = target_dir().join("plugins");
    for bin in ["lifeboat-appliance", "lifeboat"] {
        run(Command::new("strip")
            .args(["--strip-all", "-o"])
            .arg(tree.join("usr/bin").join(bin))
            .arg(release.join(bin)))?;
    }
    let plugin_dir = tree.join("usr/lib/lifeboat/plugins");
    std::fs::create_dir_all(&plugin_dir)?;
    for name in ["zstd", "aes-gcm", "local"] {
        for ext in ["wasm", "toml"] {
            std::fs::copy(
                plugins.join(format!("{name}.{ext}")),
                plugin_dir.join(format!("{name}.{ext}")),
            )?;
        }
    }
    let downloads = tree.join("usr/share/lifeboat/downloads");
    std::fs::create_dir_all(&downloads)?;
    copy_tree(&target_dir().join("packages"), &downloads)?;
    std::fs::write(tree.join("usr/share/lifeboat/appliance.toml.in"), appliance_config(&plugins)?)?;
    copy_tree(&root().join("images/rootfs"), &tree)?;
    let doc = tree.join("usr/share/doc/lifeboat");
    std::fs::create_dir_all(&doc)?;
    std::fs::copy(root().join("docs/image.md"), doc.join("image.md"))?;
    std::fs::write(
        tree.join("etc/fstab"),
        format!(
            "# The OS disk; the data disk is var-lib-lifeboat.mount.\nUUID={ROOT_FS_UUID} / ext4 defaults,noatime 0 1\n"
        ),
    )?;
    // Services: the appliance, its data disk and console note, the network, time, firewall.
    run(Command::new("systemctl").arg(format!("--root={}", tree.display())).args([
        "enable",
        "lifeboat-appliance.service",
        "lifeboat-console.service",
        "var-lib-lifeboat.mount",
        "systemd-networkd.service",
        "systemd-networkd-wait-online.service",
        "systemd-timesyncd.service",
        "systemd-resolved.service",
        "nftables.service",
    ]))?;
    // Every file's times at SOURCE_DATE_EPOCH (what the tarball holds is already clamped):
    // the same inputs give the same filesystem.
    let epoch = crate::package::source_date_epoch();
    run(Command::new("find")
        .arg(&tree)
        .args(["-exec", "touch", "-h", "-d"])
        .arg(format!("@{epoch}"))
        .args(["{}", "+"]))?;
    // Packages with their versions, beside the image.
    let packages = sh(Command::new("dpkg-query")
        .arg(format!("--admindir={}", tree.join("var/lib/dpkg").display()))
        .args(["-W", "-f=${Package} ${Version}\n"]))?;

    // The boot files, from the root's /boot.
    let kernel = newest(&tree.join("boot"), "vmlinuz-")?;
    let initrd = newest(&tree.join("boot"), "initrd.img-")?;
    let cmdline = format!("root=UUID={ROOT_FS_UUID} ro console=tty0 console=ttyS0,115200n8 quiet");

    // The root filesystem, from the folder.
    let root_bytes: u64 = sh(Command::new("du").args(["-sb"]).arg(&tree))?
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du")?;
    let root_mib = ((root_bytes >> 20) * 3 / 2 + 256).max(ROOT_MIN_MIB);
    let root_img = work.join("root.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "lifeboat-root", "-U", ROOT_FS_UUID])
        .args(["-E", &format!("hash_seed={ROOT_FS_UUID},lazy_itable_init=0,lazy_journal_init=0")])
        .arg("-d")
        .arg(&tree)
        .arg(&root_img)
        .arg(format!("{root_mib}M"))
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string()))?;
    // `mkfs.ext4 -d` copies each file's ctime and atime from the folder: the kernel set the
    // ctimes when the files were written here (a ctime cannot be set from user space), and
    // reading the folders to copy them moved their atimes (relatime). debugfs sets both to
    // the epoch in every inode, or two builds would differ in the inode tables.
    let mut commands = String::new();
    time_commands(&tree, "", epoch, &mut commands)?;
    let script = work.join("times.debugfs");
    std::fs::write(&script, commands)?;
    let debugfs = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(&root_img)
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .output()
        .context("debugfs (e2fsprogs)")?;
    // debugfs goes on after a failed command and exits 0: its complaints are on stderr,
    // after its version line.
    let complaints: Vec<_> = String::from_utf8_lossy(&debugfs.stderr)
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    if !debugfs.status.success() || !complaints.is_empty() {
        bail!("debugfs could not set the ctimes and atimes: {}", complaints.join("\n"));
    }

    // The EFI system partition: SYSLINUX for BIOS, systemd-boot for UEFI.
    let esp = work.join("esp.vfat");
    run(Command::new("mkfs.vfat")
        .args(["-C", "-F", "32", "-n", "LIFEBOAT", "--invariant", "-i", ESP_VOLUME_ID])
        .arg(&esp)
        .arg((ESP_MIB * 1024).to_string()))?;
    // mtools and syslinux stamp what they write with the clock: frozen at the epoch.
    let frozen = sh(Command::new("date")
        .args(["-u", "-d"])
        .arg(format!("@{epoch}"))
        .arg("+%Y-%m-%d %H:%M:%S"))?
    .trim()
    .to_owned();
    let at_epoch = |program: &str| {
        let mut c = Command::new("faketime");
        c.arg("-f").arg(&frozen).arg(program).env("MTOOLS_SKIP_CHECK", "1").env("TZ", "UTC");
        c
    };
    run(at_epoch("mmd").arg("-i").arg(&esp).arg("::/syslinux"))?;
    run(at_epoch("syslinux").args(["--install", "--directory", "/syslinux"]).arg(&esp))?;
    let files = work.join("espfiles");
    for d in ["syslinux", "EFI/BOOT", "loader/entries"] {
        std::fs::create_dir_all(files.join(d))?;
    }
    std::fs::copy(&kernel, files.join("vmlinuz"))?;
    std::fs::copy(&initrd, files.join("initrd.img"))?;
    std::fs::write(
        files.join("syslinux/syslinux.cfg"),
        format!(
            "DEFAULT lifeboat\nPROMPT 0\nTIMEOUT 0\nLABEL lifeboat\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND {cmdline}\n"
        ),
    )?;
    std::fs::copy(
        "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        files.join("EFI/BOOT/BOOTX64.EFI"),
    )?;
    std::fs::write(files.join("loader/loader.conf"), "default lifeboat.conf\ntimeout 0\n")?;
    std::fs::write(
        files.join("loader/entries/lifeboat.conf"),
        format!(
            "title Lifeboat appliance {version}\nlinux /vmlinuz\ninitrd /initrd.img\noptions {cmdline}\n"
        ),
    )?;
    for f in ["vmlinuz", "initrd.img", "syslinux/syslinux.cfg", "EFI", "loader"] {
        let dest = match f.rsplit_once('/') {
            Some((dir, _)) => format!("::/{dir}/"),
            None => "::/".into(),
        };
        run(at_epoch("mcopy").args(["-s", "-o", "-i"]).arg(&esp).arg(files.join(f)).arg(dest))?;
    }

    // The disk: GPT, the ESP (legacy BIOS bootable) then the root.
    std::fs::create_dir_all(&out)?;
    let name = format!("lifeboat-appliance-{version}");
    let raw = out.join(format!("{name}.raw"));
    let esp_start = 2048u64;
    let esp_sectors = ESP_MIB * 2048;
    let root_start = esp_start + esp_sectors;
    let root_sectors = root_mib * 2048;
    let total = (root_start + root_sectors + 2048) * 512;
    let _ = std::fs::remove_file(&raw);
    std::fs::File::create(&raw)?.set_len(total)?;
    let layout = format!(
        "label: gpt\nlabel-id: {DISK_GUID}\nfirst-lba: 2048\n\
         start={esp_start}, size={esp_sectors}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={ESP_GUID}, name=\"EFI\", attrs=\"LegacyBIOSBootable\"\n\
         start={root_start}, size={root_sectors}, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid={ROOT_GUID}, name=\"root\"\n"
    );
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&raw)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("sfdisk (from fdisk)")?;
    use std::io::Write as _;
    sfdisk.stdin.take().unwrap().write_all(layout.as_bytes())?;
    if !sfdisk.wait()?.success() {
        bail!("sfdisk failed on {}", raw.display());
    }
    for (img, start) in [(&esp, esp_start), (&root_img, root_start)] {
        run(Command::new("dd")
            .arg(format!("if={}", img.display()))
            .arg(format!("of={}", raw.display()))
            .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
            .arg(format!("seek={}", start * 512))
            .arg("oflag=seek_bytes"))?;
    }
    run(Command::new("dd")
        .arg("if=/usr/lib/syslinux/mbr/gptmbr.bin")
        .arg(format!("of={}", raw.display()))
        .args(["bs=440", "count=1", "conv=notrunc", "status=none"]))?;

    let qcow2 = out.join(format!("{name}.qcow2"));
    run(Command::new("qemu-img").args(["convert", "-c", "-O", "qcow2"]).arg(&raw).arg(&qcow2))?;
    let ova = crate::ova::build(&out, &name, &version, &raw)?;
    std::fs::write(out.join(format!("{name}.packages")), packages)?;
    std::fs::remove_dir_all(&work)?;
    for f in [&raw, &qcow2, &ova] {
        eprintln!("xtask: built {} ({} MiB)", f.display(), f.metadata()?.len() >> 20);
    }
    Ok(Built { raw, qcow2, ova })
}

/// debugfs commands setting the ctime and atime of `dir` (at `path` in the filesystem) and
/// everything under it to `epoch`, in name order.
fn time_commands(dir: &Path, path: &str, epoch: u64, out: &mut String) -> Result<()> {
    set_times(if path.is_empty() { "/" } else { path }, epoch, out);
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let name = name
            .to_str()
            .with_context(|| format!("a name that is not UTF-8 in {}", dir.display()))?;
        if name.contains('\n') {
            bail!("{}/{name}: a name debugfs cannot be given", dir.display());
        }
        // Inside debugfs's double quotes, a quote is doubled; nothing else is special.
        let child = format!("{path}/{}", name.replace('"', "\"\""));
        if e.file_type()?.is_dir() {
            time_commands(&e.path(), &child, epoch, out)?;
        } else {
            set_times(&child, epoch, out);
        }
    }
    Ok(())
}

fn set_times(path: &str, epoch: u64, out: &mut String) {
    for field in ["ctime", "atime"] {
        out.push_str(&format!("sif \"{path}\" {field} @{epoch}\n"));
    }
}

/// The file of `dir` whose name starts with `prefix`, newest version last by name.
fn newest(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found.pop().with_context(|| format!("no {prefix}* in {}", dir.display()))
}
