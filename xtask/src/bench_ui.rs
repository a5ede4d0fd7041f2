//! `cargo xtask bench ui`: the web UI's first load and its dashboard with 500 machines
//! (issue 13's targets: `first_load_bytes` ≤ 300,000 and `dashboard_ms_500` ≤ 1,000).
//!
//! The bench starts a real appliance (every role, the local target), creates its
//! administrator, and registers 500 machines the way users do: a one-time passphrase from
//! `lifeboat-appliance passphrase` and `lifeboat-agent register` for each (distinct keys,
//! certificates and state folders); the first `PROTECTED` of them also run one agent cycle
//! on a small disk of their own, so that part of the list has disks, points and an RPO.
//! Then `appliance/ui/tests/bench.mjs` loads the dashboard in headless Chromium five times,
//! each in a fresh browser context (nothing cached), and measures the time from the
//! navigation's start until the machines list shows all 500 rows, and the compressed bytes
//! of the page, script and stylesheet. axe-core checks the 500-machine dashboard and a
//! machine's page; with the screens the browser test (`tests/tests/ui.rs`, run here too)
//! checked, that is `screens`. Writes `target/bench/ui.json`.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::bench_replication::{Lifeboat, out};
use crate::{root, run};

const MACHINES: usize = 500;
const PROTECTED: usize = 500;
const LOADS: usize = 5;
const PASSWORD: &str = "bench password 1234";

/// Registers machine `i` (its own state folder) and, if asked, runs one agent cycle on
/// its own 4 MiB disk.
fn add_machine(lb: &Lifeboat, fingerprint: &str, i: usize, protect: bool) -> Result<()> {
    let passphrase = out(Command::new(lb.bin.join("lifeboat-appliance"))
        .args(["passphrase", "--config"])
        .arg(&lb.config))?;
    let state = lb.dir.join(format!("machines/{i}"));
    let status = Command::new(lb.bin.join("lifeboat-agent"))
        .args(["register", "--appliance", &lb.config_url, "--fingerprint", fingerprint])
        .args(["--passphrase", passphrase.trim(), "--state-dir"])
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("lifeboat-agent register failed for machine {i}");
    }
    if protect {
        let disk = state.join("disk.img");
        std::fs::write(&disk, vec![i as u8; 1 << 20])?;
        std::fs::File::options().write(true).open(&disk)?.set_len(4 << 20)?;
        let config = state.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\ndisks = [\"{}\"]\nnice = 0\n",
                state.display(),
                disk.display()
            ),
        )?;
        let status = Command::new(lb.bin.join("lifeboat-agent"))
            .args(["run", "--once", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("lifeboat-agent run --once failed for machine {i}");
        }
    }
    Ok(())
}

/// Runs the benchmark.
pub fn ui() -> Result<()> {
    crate::setup::toolchain()?;
    crate::setup::apt(&["chromium"])?;
    crate::plugins::build()?;
    crate::build_binaries()?;
    let work = crate::target_dir().join("bench-ui");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    // The first machine is the one the harness registers, with its disk.
    let disk = work.join("disk.img");
    std::fs::write(&disk, vec![7u8; 4 << 20])?;
    // The master target at the appliance's default pace (the replication benchmarks'
    // 20 ms would have it scan 500 machines 50 times a second while the page loads).
    let lb = Lifeboat::start_polling(&work, &disk, "", 500)?;
    let fingerprint = out(Command::new(lb.bin.join("lifeboat-appliance"))
        .args(["fingerprint", "--config"])
        .arg(&lb.config))?;
    let token = out(Command::new(lb.bin.join("lifeboat-appliance"))
        .args(["setup-token", "--config"])
        .arg(&lb.config))?;
    run(Command::new(lb.bin.join("lifeboat"))
        .arg("--session")
        .arg(work.join("session.json"))
        .args(["setup", "--url", &lb.config_url, "--fingerprint", fingerprint.trim()])
        .args(["--name", "bench", "--setup-token", token.trim()])
        .env("LIFEBOAT_PASSWORD", PASSWORD)
        .stdout(Stdio::null()))?;
    run(Command::new(lb.bin.join("lifeboat-agent"))
        .args(["run", "--once", "--config"])
        .arg(&lb.agent_config)
        .stdin(Stdio::null()))?;

    let t0 = Instant::now();
    for i in 1..MACHINES {
        add_machine(&lb, fingerprint.trim(), i, i < PROTECTED)?;
        if i % 50 == 0 {
            eprintln!("bench: {i} machines registered ({:.0} s)", t0.elapsed().as_secs_f64());
        }
    }
    let seed_s = t0.elapsed().as_secs_f64();
    eprintln!("bench: {MACHINES} machines registered, {PROTECTED} protected, in {seed_s:.0} s");

    let text = out(Command::new("node")
        .arg(root().join("appliance/ui/tests/bench.mjs"))
        .env("LIFEBOAT_URL", &lb.config_url)
        .env("LIFEBOAT_USER", "bench")
        .env("LIFEBOAT_PASSWORD", PASSWORD)
        .env("LIFEBOAT_MACHINES", MACHINES.to_string())
        .env("LIFEBOAT_LOADS", LOADS.to_string())
        .env("LIFEBOAT_SHOTS", root().join("target/ui"))
        .stderr(Stdio::inherit()))?;
    let browser: serde_json::Value =
        serde_json::from_str(text.lines().last().context("bench.mjs printed nothing")?)?;
    drop(lb);

    // The browser test's screens (it writes their names to target/ui/screens.json).
    run(crate::cargo().args(["test", "--release", "-p", "lifeboat-e2e", "--test", "ui"]))?;
    let tested: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("target/ui/screens.json"))?)?;
    let tested = tested["screens"].as_array().map_or(0, Vec::len);
    let bench_screens = browser["screens"].as_array().map_or(0, Vec::len);

    let mut loads: Vec<f64> = browser["dashboard_ms"]
        .as_array()
        .context("no dashboard_ms")?
        .iter()
        .filter_map(|v| v.as_f64())
        .collect();
    let runs = loads.clone();
    loads.sort_by(f64::total_cmp);
    let median = loads[loads.len() / 2];
    let result = serde_json::json!({
        "first_load_bytes": browser["first_load_bytes"],
        "first_load_files": browser["first_load_files"],
        "api_bytes": browser["api_bytes"],
        "api_machines_ms": browser["api_machines_ms"],
        "dashboard_ms_500": median,
        "dashboard_ms_500_loads": runs,
        "machines": MACHINES,
        "machines_protected": PROTECTED,
        "screens": tested + bench_screens,
        "seed_s": seed_s,
        "targets": { "first_load_bytes": 300_000, "dashboard_ms_500": 1000 },
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    let _ = std::fs::remove_dir_all(&work);
    crate::write_bench_json("ui", &result)
}
