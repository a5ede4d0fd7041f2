//! Azurite, the real Azure Blob service the Azure target's tests run against.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// Azurite's published, well-known development account key.
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A real Azurite (Blob service) on 127.0.0.1, installed by `scripts/azurite.sh`, with
/// its data in a temporary folder; killed when dropped.
pub struct Azurite {
    child: Child,
    /// Its port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Azurite {
    /// Installs (once) and starts Azurite on a free port.
    pub fn start() -> Azurite {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/azurite.sh");
        let out = Command::new("bash").arg(script).stderr(Stdio::inherit()).output().unwrap();
        assert!(out.status.success(), "scripts/azurite.sh failed");
        let bin = String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim().to_owned();
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent", "--location"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Azurite { child, port, _dir: dir };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("Azurite did not start");
    }

    /// The `[plugins.grants.azure]` table for a container of this Azurite.
    pub fn grant(&self, container: &str, lease_id: &str) -> String {
        format!(
            "clock = true\nhttp_hosts = [\"http://127.0.0.1:{p}\"]\nsettings = {{ account = \"{AZURITE_ACCOUNT}\", key = \"{AZURITE_KEY}\", endpoint = \"http://127.0.0.1:{p}/{AZURITE_ACCOUNT}\", container = \"{container}\", lease_id = \"{lease_id}\" }}\n",
            p = self.port
        )
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Site {
    /// Writes `appliance-<name>.toml` for `roles` whose target is the Azure plugin
    /// (`azure_grant` from [`Azurite::grant`]), with its own data directory `data_dir`.
    pub fn azure_config(
        &self,
        name: &str,
        roles: Roles,
        data_dir: &str,
        azure_grant: &str,
    ) -> PathBuf {
        self.target_config(name, roles, data_dir, "azure", azure_grant)
    }

    /// Writes `appliance-<name>.toml` for `roles` whose process server and master target
    /// use target plugin `plugin` (copied from the build) with the body of its grant
    /// `grant` (the sha256 pin is added), with its own data directory `data_dir`.
    pub fn target_config(
        &self,
        name: &str,
        roles: Roles,
        data_dir: &str,
        plugin: &str,
        grant: &str,
    ) -> PathBuf {
        let root = self.root();
        let (_, plugins) = build_dirs();
        for ext in ["wasm", "toml"] {
            std::fs::copy(
                plugins.join(format!("{plugin}.{ext}")),
                root.join(format!("plugins/{plugin}.{ext}")),
            )
            .unwrap();
        }
        let mut grants = String::new();
        for n in ["zstd", "aes-gcm", plugin] {
            let sha = sha256_file(&root.join(format!("plugins/{n}.wasm")));
            grants.push_str(&format!("\n[plugins.grants.{n}]\nsha256 = \"{sha}\"\n"));
        }
        grants.push_str(grant);
        let path = root.join(format!("appliance-{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "config_version = 1\ndata_dir = \"{data_dir}\"\n\
                 [roles]\nconfig_server = {}\nprocess_server = {}\nmaster_target = {}\n\
                 [config_server]\nlisten = \"127.0.0.1:{}\"\n\
                 [process_server]\nlisten = \"127.0.0.1:{}\"\ntarget = \"{plugin}\"\n\
                 [master_target]\ntarget = \"{plugin}\"\npoll_ms = 100\nkeep_points = 100\nkeep_hours = 0\n\
                 [plugins]\ndir = \"plugins\"\n{grants}",
                roles.config_server, roles.process_server, roles.master_target, self.config_port, self.ps_port,
            ),
        )
        .unwrap();
        path
    }
}
