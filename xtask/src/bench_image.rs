//! `cargo xtask bench image` (root): builds the appliance image twice from the same inputs
//! and boots it with BIOS and with UEFI under qemu (TCG unless /dev/kvm is usable), and
//! writes `target/bench/image.json`:
//! - `build_s`: the second build (the Debian root from the cache, as in CI after the first);
//! - `ova_bytes`;
//! - `reproducible`: both builds give the same raw image digest;
//! - `boot_bios_s`, `boot_uefi_s`: from power-on to the wizard's page answering on 443.
//!
//! Targets: `ova_bytes` ≤ 629,145,600; `reproducible`; both boots ≤ 90 s under TCG.

use crate::image;
use crate::quickstart::sha256_file;
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Seconds from power-on until `GET https://127.0.0.1:<port>/` answers 200.
fn boot(raw: &Path, uefi: bool, work: &Path) -> Result<f64> {
    let os = work.join(format!("os-{uefi}.qcow2"));
    let data = work.join(format!("data-{uefi}.qcow2"));
    for (args, what) in [
        (
            vec![
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                raw.to_str().unwrap(),
                "-F",
                "raw",
                os.to_str().unwrap(),
            ],
            "overlay",
        ),
        (vec!["create", "-q", "-f", "qcow2", data.to_str().unwrap(), "8G"], "data disk"),
    ] {
        let st = Command::new("qemu-img").args(&args).status()?;
        if !st.success() {
            bail!("qemu-img ({what}) failed");
        }
    }
    let port = free_port();
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-m", "2048", "-smp", "2", "-display", "none", "-no-user-config", "-serial", "null"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", os.display()))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", data.display()))
        .arg("-netdev")
        .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:443"))
        .args(["-device", "virtio-net-pci,netdev=n0"]);
    if uefi {
        let vars = work.join("OVMF_VARS.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).context("ovmf")?;
        c.arg("-drive")
            .arg("if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    let started = Instant::now();
    let mut vm =
        c.stdin(Stdio::null()).stdout(Stdio::null()).spawn().context("qemu-system-x86_64")?;
    let url = format!("https://127.0.0.1:{port}/");
    let result = loop {
        let ok = Command::new("curl")
            .args(["-fsSk", "-o", "/dev/null", "--max-time", "5", &url])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            break Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > Duration::from_secs(600) {
            break Err(anyhow::anyhow!("no answer on 443 in 600 s"));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let _ = vm.kill();
    let _ = vm.wait();
    result
}

pub fn image() -> Result<()> {
    image::build()?;
    let first = sha256_file(
        &image::out_dir().join(format!("lifeboat-appliance-{}.raw", crate::package::version()?)),
    )?;
    let started = Instant::now();
    let built = image::build_image()?;
    let build_s = started.elapsed().as_secs_f64();
    let second = sha256_file(&built.raw)?;
    let ova_bytes = built.ova.metadata()?.len();
    let work = tempfile::tempdir()?;
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let boot_bios_s = boot(&built.raw, false, work.path())?;
    let boot_uefi_s = boot(&built.raw, true, work.path())?;
    let qcow2_bytes = built.qcow2.metadata()?.len();
    let result = serde_json::json!({
        "build_s": build_s,
        "ova_bytes": ova_bytes,
        "qcow2_bytes": qcow2_bytes,
        "reproducible": first == second,
        "raw_sha256": [first, second],
        "boot_bios_s": boot_bios_s,
        "boot_uefi_s": boot_uefi_s,
        "accelerator": if kvm { "kvm (not used: the figures are TCG's)" } else { "tcg" },
        "targets": { "ova_bytes": 629_145_600u64, "reproducible": true, "boot_s": 90 },
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    crate::write_bench_json("image", &result)
}
