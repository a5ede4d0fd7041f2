//! `cargo xtask`: the one entry point for building, testing, running and benchmarking
//! Lifeboat. Every command installs what it needs (the wasm32-wasip2 Rust target, Debian
//! packages) idempotently and says what it installs.

// A developer tool, not shipped: failing loudly on a broken setup is what it should do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

mod bench;
mod bench_capture;
mod bench_failover;
mod bench_image;
mod bench_replication;
mod bench_ui;
mod image;
mod ova;
mod package;
mod plugins;
mod quickstart;
mod setup;
mod ui;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Lifeboat's build, test and run entry points")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Builds the wasm plugins and installs them with their manifests in <target>/plugins.
    Plugins,
    /// Runs the main job on embedded defaults: appliance + agent + local target on a
    /// generated demo disk, verified.
    Quickstart {
        /// Exit after the verification, stopping everything started.
        #[arg(long)]
        once: bool,
    },
    /// Runs every test: formatting, clippy, unit, integration and end-to-end tests.
    Test,
    /// Builds the agent's Debian package into <target>/packages (with SHA256SUMS), the folder
    /// the appliance serves at /downloads/.
    Package,
    /// Builds the appliance image (raw, qcow2, OVA) into images/out (needs root).
    Image {
        /// Use the binaries, plugins and packages already built (as `cargo xtask test`
        /// leaves them) instead of building them first.
        #[arg(long)]
        no_build: bool,
    },
    /// Builds the appliance's web UI into appliance/ui/dist (the appliance embeds it).
    Ui,
    /// Runs a benchmark and prints its figures (not part of the tests).
    Bench {
        /// Which benchmark: `plugins`, `replication`, `capture`, `failover`, `ui` or `image`.
        name: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Plugins => plugins::build().map(|_| ()),
        Cmd::Test => test(),
        Cmd::Ui => ui::build(),
        Cmd::Package => package::build().map(|_| ()),
        Cmd::Image { no_build: false } => image::build().map(|_| ()),
        Cmd::Image { no_build: true } => image::build_image().map(|_| ()),
        Cmd::Quickstart { once } => quickstart::quickstart(once),
        Cmd::Bench { name } => bench::run(&name),
    };
    if let Err(e) = r {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

/// The workspace root (the parent of this crate's folder).
/// The workspace's root. Found at run time (`cargo run` sets CARGO_MANIFEST_DIR, else the
/// current directory and its parents): a binary reused from a shared target directory may
/// have been built in another clone, whose path it would otherwise carry.
pub fn root() -> PathBuf {
    let is_root = |p: &Path| {
        std::fs::read_to_string(p.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]"))
    };
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR")
        && let Some(parent) = Path::new(&dir).parent()
        && is_root(parent)
    {
        return parent.to_owned();
    }
    if let Ok(cwd) = std::env::current_dir()
        && let Some(found) = cwd.ancestors().find(|p| is_root(p))
    {
        return found.to_owned();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

/// Cargo's target directory, honouring CARGO_TARGET_DIR.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() { d } else { root().join(d) }
        }
        None => root().join("target"),
    }
}

/// Runs a command in the workspace root, echoing it, failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(root());
    eprintln!("xtask: $ {}", describe(cmd));
    let status = cmd.status().with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Builds the release binaries (`lifeboat-appliance`, `lifeboat-agent`) that the
/// quickstart, the end-to-end tests and the benchmarks run.
/// Writes a benchmark's figures to `<workspace>/target/bench/<name>.json` (whatever
/// `CARGO_TARGET_DIR` is) and says where.
pub fn write_bench_json(name: &str, result: &serde_json::Value) -> Result<()> {
    let out_dir = root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(result)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The release binaries, with the web UI built first (the appliance embeds it).
pub fn build_binaries() -> Result<()> {
    ui::build()?;
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "lifeboat-appliance",
        "--package",
        "lifeboat-agent",
        "--package",
        "lifeboat-cli",
    ]))
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn test() -> Result<()> {
    let started = std::time::Instant::now();
    setup::toolchain()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    plugins::build()?;
    // Before clippy, which builds the appliance: its build script embeds the UI.
    ui::build()?;
    // One profile (release) for clippy and tests, so build scripts and dependencies
    // are shared with the quickstart and the end-to-end binaries.
    run(cargo().args([
        "clippy",
        "--release",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    setup::apt(setup::TEST_PACKAGES)?;
    setup::apt_backports(setup::BACKPORTS_PACKAGES)?;
    // The end-to-end tests run the real binaries; `cargo test` alone does not build them.
    build_binaries()?;
    // The agent's package: the packages test installs it in Debian roots.
    package::package_agent()?;
    // The appliance image: the image test boots it (root only: it runs mmdebstrap).
    if setup::is_root() {
        setup::apt(image::BUILD_TOOLS)?;
        image::build_image()?;
    } else {
        eprintln!("xtask: not root: the appliance image is not built and its tests are skipped");
    }
    // Azurite (Azure Storage emulator) for the Azure plugin's tests, from npm (installed
    // with the UI's build above).
    run(Command::new("bash")
        .arg(root().join("scripts/azurite.sh"))
        .stdout(std::process::Stdio::null()))?;
    // vcsim (the vSphere simulator) for the VMware plugin's tests, built from Debian's
    // govmomi (installed with the test packages above).
    run(Command::new("bash")
        .arg(root().join("scripts/vcsim.sh"))
        .stdout(std::process::Stdio::null()))?;
    run(cargo().args(["test", "--release", "--workspace", "--no-fail-fast"]))?;
    eprintln!("xtask: all tests passed in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
