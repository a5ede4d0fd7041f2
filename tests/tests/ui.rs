//! The web UI in a real browser against a real appliance and agent: the setup wizard
//! claims the appliance with its setup token, keeps the local target from the target
//! plugins' generated forms, the agent registers with the command the
//! wizard shows, the dashboard shows the machine protected, and its page draws the RPO plot
//! from stored samples and runs a test failover and its cleanup; then Firefox logs in and
//! sees the dashboard and the machine's plots. The browser side is
//! `appliance/ui/tests/browser.mjs` (headless Chromium driven by playwright-core, with
//! axe-core); screenshots of every screen land in `target/ui/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lifeboat_e2e::*;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn the_wizard_claims_the_appliance_and_the_dashboard_shows_the_registered_machine() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
    let ui = root.join("appliance/ui");
    assert!(
        ui.join("node_modules/playwright-core").is_dir() && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs playwright-core (npm ci in appliance/ui) and Debian's chromium: \
         `cargo xtask test` installs both"
    );
    let site = Site::new();
    // The Azure target is installed too (granted no host): the wizard offers it and shows
    // its refusals.
    let sha = site.install_plugin("azure", &site.root().join("plugins"));
    let cfg = site.config_with(
        "all",
        Roles::ALL,
        &format!("\n[plugins.grants.azure]\nsha256 = \"{sha}\"\nclock = true\n"),
    );
    // The agent's packages (`cargo xtask package`, run by `cargo xtask test`) at /downloads/.
    serve_downloads(&cfg, &packages_dir());
    let _appliance = site.start("appliance", &cfg);
    site.wait_port(site.config_port);
    site.wait_port(site.ps_port);
    let token = site.cli(&cfg, &["setup-token"]).trim().to_owned();
    let shots = root.join("target/ui");
    let mut browser = Command::new("node")
        .arg(ui.join("tests/browser.mjs"))
        .env("LIFEBOAT_URL", format!("https://127.0.0.1:{}", site.config_port))
        .env("LIFEBOAT_SETUP_TOKEN", &token)
        .env("LIFEBOAT_SHOTS", &shots)
        .env("LIFEBOAT_BUILT_PLUGINS", build_dirs().1)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_browser = browser.stdin.take().unwrap();
    let mut from_browser = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut next = || -> serde_json::Value {
        let line = from_browser.next().expect("the browser script ended early").unwrap();
        serde_json::from_str(&line).unwrap()
    };

    // The wizard showed the registration command: run it as shown, with this test's
    // agent binary and state folder.
    let shown = next();
    // The install command pins the installer the appliance serves.
    let install = shown["install"].as_str().unwrap();
    let pinned = install.split("echo '").nth(1).and_then(|r| r.split_whitespace().next()).unwrap();
    let script = sh(
        "curl",
        &["-fsSk", &format!("https://127.0.0.1:{}/downloads/install.sh", site.config_port)],
    )
    .unwrap();
    use sha2::Digest as _;
    assert_eq!(pinned, hex::encode(sha2::Sha256::digest(format!("{script}\n"))), "{install}");
    let command = shown["command"].as_str().unwrap();
    let first: String = command
        .lines()
        .scan(true, |more, l| {
            let keep = *more;
            *more = l.trim_end().ends_with('\\');
            keep.then(|| l.trim_end().trim_end_matches('\\').to_owned())
        })
        .collect::<Vec<_>>()
        .join(" ");
    let words: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(words[..2], ["lifeboat-agent", "register"], "{command}");
    let state = site.root().join("agent-state");
    let status = Command::new(site.bin.join("lifeboat-agent"))
        .args(&words[1..])
        .arg("--state-dir")
        .arg(&state)
        .status()
        .unwrap();
    assert!(status.success(), "the command the wizard shows registers the agent: {command}");
    let disk = site.root().join("disk.img");
    make_disk(&disk, 8, 5);
    site.agent_once(&site.agent_config(&state, std::slice::from_ref(&disk), 1));
    let machine = Site::machine_id(&state);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned();
    let reply = serde_json::json!({"registered": true, "machine": machine, "hostname": hostname});
    writeln!(to_browser, "{reply}").unwrap();
    drop(to_browser);

    // The test failover the page started made a VM at the local target, with the VM
    // settings the page saved; its cleanup removed the VM.
    let made = next();
    let vm = made["test_failover"]["vm"].as_str().unwrap();
    assert!(made["test_failover"]["cleaned_unix_ms"].as_u64().is_some(), "{made}");
    assert!(
        !site.root().join("target/vms").join(format!("{vm}.json")).exists(),
        "cleanup removed {vm}"
    );
    let log = std::fs::read_to_string(site.root().join("appliance.log")).unwrap();
    assert!(
        log.contains("test failover ready") && log.contains("test failover cleaned up"),
        "the appliance logged both jobs"
    );

    let done = next();
    assert_eq!(done["done"], true, "{done}");
    let screens = done["screens"].as_array().unwrap();
    assert!(screens.len() >= 10, "{done}");
    for s in screens {
        assert!(shots.join(format!("{}.png", s.as_str().unwrap())).is_file(), "{s}");
    }
    // For `cargo xtask bench ui`, which counts the screens axe checked.
    std::fs::write(
        shots.join("screens.json"),
        serde_json::json!({ "screens": screens }).to_string(),
    )
    .unwrap();
    assert!(browser.wait().unwrap().success(), "the browser script failed");

    // The same appliance in Firefox: login, the dashboard, the machine's plots.
    assert!(
        Path::new("/usr/bin/firefox-esr").exists()
            && ui.join("node_modules/puppeteer-core").is_dir(),
        "the Firefox check needs Debian's firefox-esr and puppeteer-core: `cargo xtask test` installs both"
    );
    let firefox = Command::new("node")
        .arg(ui.join("tests/firefox.mjs"))
        .env("LIFEBOAT_URL", format!("https://127.0.0.1:{}", site.config_port))
        .env("LIFEBOAT_USER", "admin")
        .env("LIFEBOAT_PASSWORD", "correct horse battery")
        .env("LIFEBOAT_MACHINE", &machine)
        .env("LIFEBOAT_SHOTS", &shots)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&firefox.stdout);
    assert!(
        firefox.status.success() && said.contains("\"ok\":true"),
        "the Firefox check failed: {said}"
    );
}
