//! Builds the eBPF write tracker (`src/bpf/tracker.bpf.c`) with clang and generates its
//! libbpf skeleton into `OUT_DIR`. Needs clang and the kernel's UAPI headers
//! (`linux-libc-dev`); `cargo xtask` installs both.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let src = "src/bpf/tracker.bpf.c";
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set: run by cargo")?);
    let arch_include = format!(
        "-I/usr/include/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    libbpf_cargo::SkeletonBuilder::new()
        .source(src)
        .clang_args([arch_include.as_str(), "-Isrc/bpf", "-O2", "-Wall"])
        .build_and_generate(out.join("tracker.skel.rs"))
        .unwrap_or_else(|e| {
            panic!("building the eBPF tracker {src} failed (is clang installed?): {e:#}")
        });
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-changed=src/bpf/vmlinux_min.h");
    Ok(())
}
