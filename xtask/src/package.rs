//! `cargo xtask package`: the agent's static binary and its Debian package.
//!
//! The binary is built for x86_64-unknown-linux-musl with the agent's `static` feature
//! (libbpf and zlib compiled from libbpf-sys's vendored sources, Debian's libelf.a: see
//! [`static_sysroot`]; all linked in): no program interpreter, no shared library, so it runs on any x86_64 Linux with a
//! kernel the agent supports, whatever its C library (Debian 11's glibc 2.31 included, which a
//! binary linked here against glibc 2.36 would refuse). The package is made from it with
//! `dpkg-deb` (no Debian source tree: the control file is written here; a static binary
//! depends on no package).
//!
//! Output, in `<target>/packages/`, the folder the appliance serves at `/downloads/` (its
//! `config_server.downloads`): `lifeboat-agent_<version>_amd64.deb`,
//! `lifeboat-agent-<version>-x86_64-linux-musl` (the binary alone, for other distributions)
//! and `SHA256SUMS`.
//! Reproducible: every file's time is `SOURCE_DATE_EPOCH` (default: the last commit's time),
//! owners are root, and `dpkg-deb` clamps the archive members' times to the same epoch.

use crate::{root, run, target_dir};
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The package's maintainer scripts and unit, from `agent/debian/`.
const SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// The static agent's Rust target.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds the release binaries, then the packages; returns the Debian package's path.
pub fn build() -> Result<PathBuf> {
    crate::setup::toolchain()?;
    crate::build_binaries()?;
    package_agent()
}

/// What musl-gcc needs besides musl to build the static agent's C parts, made under
/// `<target>/static-sysroot`:
/// - `include/`: the kernel's UAPI headers (`linux`, `asm`, `asm-generic`: libbpf includes
///   them; they belong to no C library) and libelf's two headers, all from this system;
/// - `lib/libelf.a`: Debian's libelf.a plus `agent/static/musl-compat.c` compiled with
///   musl-gcc (glibc's `rawmemchr`, the one function it calls that musl lacks). elfutils
///   itself does not build against musl (its configure requires argp), and the rest of what
///   libelf.a calls is the plain POSIX/Linux ABI, the same in musl on x86_64;
/// - `host-lib/`: Debian's libelf.a and libz.a for the host's libbpf-sys (libbpf-cargo
///   compiles the BPF program at build time): cargo gives it the same `static` features.
fn static_sysroot() -> Result<PathBuf> {
    let dir = target_dir().join("static-sysroot");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let include = dir.join("include");
    let lib = dir.join("lib");
    std::fs::create_dir_all(&include)?;
    std::fs::create_dir_all(&lib)?;
    std::fs::create_dir_all(dir.join("host-lib"))?;
    for a in ["libelf.a", "libz.a"] {
        std::os::unix::fs::symlink(
            Path::new("/usr/lib/x86_64-linux-gnu").join(a),
            dir.join("host-lib").join(a),
        )?;
    }
    for (name, from) in [
        ("linux", "/usr/include/linux"),
        ("asm", "/usr/include/x86_64-linux-gnu/asm"),
        ("asm-generic", "/usr/include/asm-generic"),
    ] {
        std::os::unix::fs::symlink(from, include.join(name))?;
    }
    for h in ["libelf.h", "gelf.h"] {
        std::fs::copy(Path::new("/usr/include").join(h), include.join(h))
            .with_context(|| format!("/usr/include/{h} (libelf-dev)"))?;
    }
    std::fs::copy("/usr/lib/x86_64-linux-gnu/libelf.a", lib.join("libelf.a"))
        .context("/usr/lib/x86_64-linux-gnu/libelf.a (libelf-dev)")?;
    let compat = dir.join("musl-compat.o");
    run(Command::new("musl-gcc")
        .args(["-O2", "-fPIC", "-c", "-o"])
        .arg(&compat)
        .arg(root().join("agent/static/musl-compat.c")))?;
    run(Command::new("ar").arg("rs").arg(lib.join("libelf.a")).arg(&compat))?;
    Ok(dir)
}

/// Builds the agent's static binary (incremental: quick when nothing changed).
fn build_static_agent() -> Result<PathBuf> {
    let sysroot = static_sysroot()?;
    let env_target = STATIC_TARGET.replace('-', "_");
    run(crate::cargo()
        .args([
            "build",
            "--release",
            "--target",
            STATIC_TARGET,
            "--package",
            "lifeboat-agent",
            "--features",
            "static",
        ])
        .env(format!("CC_{env_target}"), "musl-gcc")
        .env(
            format!("CFLAGS_{env_target}"),
            format!("-isystem {}", sysroot.join("include").display()),
        )
        .env(format!("LIBBPF_SYS_LIBRARY_PATH_{env_target}"), sysroot.join("lib"))
        .env("LIBBPF_SYS_LIBRARY_PATH_x86_64_unknown_linux_gnu", sysroot.join("host-lib")))?;
    let binary = target_dir().join(STATIC_TARGET).join("release/lifeboat-agent");
    // What makes it static: no interpreter to find, no library to load.
    let headers = Command::new("readelf")
        .args(["--program-headers", "--dynamic"])
        .arg(&binary)
        .output()
        .context("readelf (binutils)")?;
    let headers = String::from_utf8_lossy(&headers.stdout);
    if headers.contains("INTERP") || headers.contains("(NEEDED)") {
        bail!("{} is not static:\n{headers}", binary.display());
    }
    Ok(binary)
}

/// The version every crate of the workspace has.
pub fn version() -> Result<String> {
    let text = std::fs::read_to_string(root().join("Cargo.toml"))?;
    let doc: toml::Table = text.parse()?;
    doc.get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("version"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .context("workspace.package.version missing from Cargo.toml")
}

/// `SOURCE_DATE_EPOCH` if set, else the newest commit's time, else 0. Read once per run:
/// a commit made while `cargo xtask bench image` builds its two images must not give them
/// different epochs.
pub fn source_date_epoch() -> u64 {
    static EPOCH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(read_source_date_epoch)
}

fn read_source_date_epoch() -> u64 {
    if let Some(v) = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.parse().ok()) {
        return v;
    }
    Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(root())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Builds the static agent, then packages it.
pub fn package_agent() -> Result<PathBuf> {
    let version = version()?;
    let binary = build_static_agent()?;
    let out = target_dir().join("packages");
    let stage = target_dir().join("package-stage/lifeboat-agent");
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    std::fs::create_dir_all(&out)?;
    let put = |rel: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let p = stage.join(rel);
        std::fs::create_dir_all(p.parent().unwrap())?;
        std::fs::write(&p, bytes)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };

    // The binary, without its debug line tables (the release profile keeps them for
    // backtraces in tests; a package does not need them).
    std::fs::create_dir_all(stage.join("usr/bin"))?;
    run(Command::new("strip")
        .args(["--strip-all", "-o"])
        .arg(stage.join("usr/bin/lifeboat-agent"))
        .arg(&binary))?;
    std::fs::set_permissions(
        stage.join("usr/bin/lifeboat-agent"),
        std::fs::Permissions::from_mode(0o755),
    )?;

    // The unit, with the binary where the package puts it.
    let unit = std::fs::read_to_string(root().join("agent/lifeboat-agent.service"))?;
    let unit = unit.replace("/usr/local/bin/lifeboat-agent", "/usr/bin/lifeboat-agent");
    put("lib/systemd/system/lifeboat-agent.service", unit.as_bytes(), 0o644)?;
    let example = std::fs::read(root().join("agent/debian/agent.toml.example"))?;
    put("usr/share/doc/lifeboat-agent/agent.toml.example", &example, 0o644)?;
    let copyright = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: lifeboat\nSource: https://example.invalid/lifeboat\n\n\
         Files: *\nCopyright: Lifeboat developers\nLicense: Apache-2.0\n \
         On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n";
    put("usr/share/doc/lifeboat-agent/copyright", copyright.as_bytes(), 0o644)?;

    // Control files (the binary is static: no Depends).
    let installed_kib = dir_size(&stage)?.div_ceil(1024);
    let control = format!(
        "Package: lifeboat-agent\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: Lifeboat developers <lifeboat@example.invalid>\n\
         Installed-Size: {installed_kib}\n\
         Recommends: util-linux\n\
         Section: admin\n\
         Priority: optional\n\
         Description: Lifeboat agent: replicates this machine's disks to a Lifeboat appliance\n \
         Captures the machine's disks (a first full copy, then every change) and ships them\n \
         to a Lifeboat appliance's process server over mutual TLS.\n \
         .\n \
         The package registers the machine only when LIFEBOAT_PASSPHRASE (with\n \
         LIFEBOAT_APPLIANCE and LIFEBOAT_FINGERPRINT) is set at install; it never starts\n \
         an agent that is not registered.\n"
    );
    put("DEBIAN/control", control.as_bytes(), 0o644)?;
    for s in SCRIPTS {
        let text = std::fs::read(root().join("agent/debian").join(s))?;
        put(&format!("DEBIAN/{s}"), &text, 0o755)?;
    }
    put("DEBIAN/md5sums", md5sums(&stage)?.as_bytes(), 0o644)?;

    let epoch = source_date_epoch();
    set_times(&stage, epoch)?;
    let deb = out.join(format!("lifeboat-agent_{version}_amd64.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb)
        .env("SOURCE_DATE_EPOCH", epoch.to_string()))?;
    // The binary alone, for systems without dpkg.
    let plain = out.join(format!("lifeboat-agent-{version}-x86_64-linux-musl"));
    std::fs::copy(stage.join("usr/bin/lifeboat-agent"), &plain)?;
    set_mtime(&plain, epoch)?;
    write_sums(&out)?;
    eprintln!("xtask: built {} and {}", deb.display(), plain.display());
    Ok(deb)
}

fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                todo.push(e.path());
            }
            all.push(e.path());
        }
    }
    all.sort();
    Ok(all)
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for f in files(dir)? {
        if f.is_file() && !f.starts_with(dir.join("DEBIAN")) {
            n += f.metadata()?.len();
        }
    }
    Ok(n)
}

fn md5sums(stage: &Path) -> Result<String> {
    let mut cmd = Command::new("md5sum");
    cmd.current_dir(stage);
    for f in files(stage)? {
        if f.is_file() && !f.starts_with(stage.join("DEBIAN")) {
            cmd.arg(f.strip_prefix(stage)?);
        }
    }
    let out = cmd.output().context("md5sum")?;
    if !out.status.success() {
        bail!("md5sum failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn set_times(stage: &Path, epoch: u64) -> Result<()> {
    for f in files(stage)?.into_iter().rev().chain([stage.to_owned()]) {
        set_mtime(&f, epoch)?;
    }
    Ok(())
}

/// Sets the modification time of `path` to `epoch`.
fn set_mtime(path: &Path, epoch: u64) -> Result<()> {
    let t = std::fs::FileTimes::new()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch));
    std::fs::File::open(path)?.set_times(t)?;
    Ok(())
}

/// Writes `SHA256SUMS` for every package and static binary in `out`.
fn write_sums(out: &Path) -> Result<()> {
    let mut sums = String::new();
    let mut names: Vec<_> = std::fs::read_dir(out)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".deb") || n.ends_with("-linux-musl"))
        .collect();
    names.sort();
    for n in names {
        let digest = Sha256::digest(std::fs::read(out.join(&n))?);
        sums.push_str(&format!("{}  {n}\n", hex::encode(digest)));
    }
    std::fs::write(out.join("SHA256SUMS"), sums)?;
    Ok(())
}
