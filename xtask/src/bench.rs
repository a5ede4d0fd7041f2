//! Benchmarks: `cargo xtask bench <name>`.

use anyhow::{Result, bail};

/// Runs the named benchmark.
pub fn run(name: &str) -> Result<()> {
    match name {
        "plugins" => {
            crate::plugins::build()?;
            crate::run(
                crate::cargo()
                    .args(["bench", "--package", "lifeboat-plugin-host", "--bench", "plugins"])
                    .env("LIFEBOAT_PLUGINS_DIR", crate::plugins::dir())
                    .env("LIFEBOAT_BENCH_OUT", crate::root().join("target/bench")),
            )
        }
        "replication" => crate::bench_replication::replication(),
        "capture" => crate::bench_capture::capture(),
        "failover" => crate::bench_failover::failover(),
        "ui" => crate::bench_ui::ui(),
        "image" => crate::bench_image::image(),
        "vmware" => vmware(),
        other => {
            bail!(
                "unknown benchmark {other:?}; available: plugins, replication, capture, failover, ui, image, vmware"
            )
        }
    }
}

/// `cargo xtask bench vmware`: the VMware target against vcsim (a 1 GiB half-full disk
/// protected, test failover, cleanup, failover, reprotect, failback), run by the e2e
/// crate's `bench_vmware` example, which has vcsim's harness. Writes
/// `target/bench/vmware.json`.
fn vmware() -> Result<()> {
    crate::setup::toolchain()?;
    crate::setup::apt(crate::setup::TEST_PACKAGES)?;
    crate::plugins::build()?;
    crate::build_binaries()?;
    crate::run(std::process::Command::new("bash").arg(crate::root().join("scripts/vcsim.sh")))?;
    let out_dir = crate::root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    crate::run(
        crate::cargo()
            .args(["run", "--release", "-p", "lifeboat-e2e", "--example", "bench_vmware", "--"])
            .arg(out_dir.join("vmware.json")),
    )
}
