//! Embeds the web UI (`ui/dist`, built by `cargo xtask ui`) into the appliance binary.
//!
//! Writes `$OUT_DIR/ui_assets.rs`: every file of `ui/dist` with its path, and its gzip
//! twin (`<file>.gz`, written by the UI build) when there is one. Without a built UI the
//! binary serves `ui/unbuilt.html`, a page saying how to build it, and `UI_BUILT` is false.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let dist = root.join("ui/dist");
    println!("cargo:rerun-if-changed=ui/dist");
    println!("cargo:rerun-if-changed=ui/unbuilt.html");
    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        collect(&dist, &dist, &mut files);
    }
    files.sort();
    let built = !files.is_empty();
    let mut out = String::new();
    let _ = writeln!(out, "/// Whether the web UI was built into this binary.");
    let _ = writeln!(out, "pub const UI_BUILT: bool = {built};");
    let _ = writeln!(out, "/// The UI's files.");
    let _ = writeln!(out, "pub static UI_FILES: &[UiFile] = &[");
    if built {
        for rel in files.iter().filter(|f| !f.ends_with(".gz")) {
            let path = dist.join(rel);
            let gz = dist.join(format!("{rel}.gz"));
            let gz = if gz.is_file() {
                format!("Some(include_bytes!({:?}))", gz.display().to_string())
            } else {
                "None".to_owned()
            };
            let _ = writeln!(
                out,
                "    UiFile {{ path: {rel:?}, bytes: include_bytes!({:?}), gzip: {gz} }},",
                path.display().to_string()
            );
        }
    } else {
        println!(
            "cargo:warning=the web UI is not built (appliance/ui/dist): this binary serves a page saying so; `cargo xtask ui` builds it"
        );
        let page = root.join("ui/unbuilt.html");
        let _ = writeln!(
            out,
            "    UiFile {{ path: \"index.html\", bytes: include_bytes!({:?}), gzip: None }},",
            page.display().to_string()
        );
    }
    let _ = writeln!(out, "];");
    let target =
        PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("ui_assets.rs");
    if let Err(e) = std::fs::write(&target, out) {
        panic!("writing {}: {e}", target.display());
    }
}

/// Every file under `dir`, as paths relative to `base` with `/` separators.
fn collect(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(base, &p, out);
        } else if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            // Build stamps, not served.
        } else if let Ok(rel) = p.strip_prefix(base) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}
