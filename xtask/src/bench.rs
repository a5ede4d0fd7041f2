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
        other => {
            bail!(
                "unknown benchmark {other:?}; available: plugins, replication, capture, failover, ui, image"
            )
        }
    }
}
