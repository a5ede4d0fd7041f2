//! The agent packages the configuration server hands out at `/downloads/`, with their
//! SHA-256, and the installer script that pins them.
//!
//! The folder (`config_server.downloads`) is read once at start: every regular file whose
//! name is plain (letters, digits, `.`, `_`, `+`, `-`; no leading dot) is listed with its size
//! and digest; nothing else under the folder can be reached. The installer
//! (`/downloads/install.sh`) is generated from the digests and the active CA's fingerprint,
//! and the one-line command shown to administrators checks the installer's own SHA-256
//! before running it: whoever sits between the machine and the appliance can change nothing
//! without the command refusing it, whatever certificate 443 serves.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// One file served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadFile {
    /// Its name under `/downloads/`.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// The folder's files, as read at start (kept in memory: a download costs no allocation and
/// no disk read, however many arrive at once).
#[derive(Debug, Clone)]
pub struct Downloads {
    files: Vec<DownloadFile>,
    bytes: Vec<bytes::Bytes>,
}

/// Most bytes the downloads folder may hold in all (it holds packages, a few MiB each).
pub const MAX_TOTAL_BYTES: u64 = 512 << 20;

/// Whether `name` may be served: a plain file name, never a path or a hidden file.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// The installer's template (placeholders `@FINGERPRINT@`, `@DEB@`, `@DEB_SHA256@`).
const INSTALLER: &str = include_str!("install.sh");

impl Downloads {
    /// Reads and hashes the files of `dir` (not its sub-folders, links or hidden files).
    pub fn scan(dir: &Path) -> std::io::Result<Downloads> {
        let mut found = Vec::new();
        let mut total = 0u64;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // symlink_metadata: a link is not followed out of the folder.
            let meta = entry.path().symlink_metadata()?;
            if !plain_name(&name) || !meta.is_file() {
                continue;
            }
            total += meta.len();
            if total > MAX_TOTAL_BYTES {
                return Err(std::io::Error::other(format!(
                    "{}: more than {} MiB of files; the downloads folder is for agent packages",
                    dir.display(),
                    MAX_TOTAL_BYTES >> 20
                )));
            }
            let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
            std::fs::File::open(entry.path())?.read_to_end(&mut data)?;
            let file = DownloadFile {
                name,
                size: data.len() as u64,
                sha256: hex::encode(Sha256::digest(&data)),
            };
            found.push((file, bytes::Bytes::from(data)));
        }
        found.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let (files, bytes) = found.into_iter().unzip();
        Ok(Downloads { files, bytes })
    }

    /// The files, by name.
    pub fn files(&self) -> &[DownloadFile] {
        &self.files
    }

    /// A listed file's bytes; `None` for any other name.
    pub fn get(&self, name: &str) -> Option<(&DownloadFile, bytes::Bytes)> {
        let i = self.files.iter().position(|f| f.name == name)?;
        Some((&self.files[i], self.bytes[i].clone()))
    }

    /// `SHA256SUMS`: `<hex>  <name>` per file, as `sha256sum -c` reads it.
    pub fn sums(&self) -> String {
        self.files
            .iter()
            .filter(|f| f.name != "SHA256SUMS")
            .map(|f| format!("{}  {}\n", f.sha256, f.name))
            .collect()
    }

    /// The agent's Debian package (the newest version when there are several).
    pub fn agent_deb(&self) -> Option<&DownloadFile> {
        self.files
            .iter()
            .filter(|f| f.name.starts_with("lifeboat-agent_") && f.name.ends_with("_amd64.deb"))
            .max_by(|a, b| compare_versions(&a.name, &b.name))
    }

    /// The installer script for the CA `fingerprint`.
    pub fn installer(&self, fingerprint: &str) -> String {
        let (deb, sha) =
            self.agent_deb().map(|f| (f.name.as_str(), f.sha256.as_str())).unwrap_or(("", ""));
        // Every value put in the script is a plain name, hex or `sha256:` hex: nothing a
        // shell would read as anything but the literal between the single quotes.
        debug_assert!(plain_name(deb) || deb.is_empty());
        INSTALLER
            .replace("@FINGERPRINT@", fingerprint)
            .replace("@DEB_SHA256@", sha)
            .replace("@DEB@", deb)
    }
}

/// The one-line command that downloads the installer from `origin`, checks it against
/// `installer_sha256` and runs it as root.
pub fn install_command(origin: &str, installer_sha256: &str) -> String {
    format!(
        "curl -fsSko /tmp/lifeboat-install.sh {origin}/downloads/install.sh && echo '{installer_sha256}  /tmp/lifeboat-install.sh' | sha256sum -c --quiet - && sudo LIFEBOAT_APPLIANCE={origin} sh /tmp/lifeboat-install.sh"
    )
}

/// Whether `origin` is `https://HOST[:PORT]` with a host of letters, digits, `.`, `-` or a
/// bracketed IPv6 address: safe to put in a shell command unquoted.
pub fn valid_origin(origin: &str) -> bool {
    let Some(rest) = origin.strip_prefix("https://") else { return false };
    let (host_ok, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else { return false };
        let ok = !addr.is_empty()
            && addr.len() <= 45
            && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        (ok, if after.is_empty() { None } else { Some(after.strip_prefix(':')) })
    } else {
        let (host, port) = match rest.split_once(':') {
            Some((h, p)) => (h, Some(Some(p))),
            None => (rest, None),
        };
        let ok = !host.is_empty()
            && host.len() <= 253
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b));
        (ok, port)
    };
    // `port`: None (no port), Some(None) (something after the host that is not `:PORT`),
    // Some(Some(p)).
    let port_ok = match port {
        None => true,
        Some(None) => false,
        Some(Some(p)) => p.len() <= 5 && p.parse::<u16>().is_ok_and(|n| n > 0),
    };
    host_ok && port_ok
}

/// Orders `lifeboat-agent_<version>_amd64.deb` names by version (numeric parts as numbers).
fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok()).collect()
    };
    key(a).cmp(&key(b)).then_with(|| a.cmp(b))
}

/// The SHA-256 (hex) of a text.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_regular_files_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("lifeboat-agent_0.1.0_amd64.deb"), b"deb").unwrap();
        std::fs::write(d.join("lifeboat-agent_0.10.0_amd64.deb"), b"newer").unwrap();
        std::fs::write(d.join(".hidden"), b"x").unwrap();
        std::fs::write(d.join("with space"), b"x").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/inner.deb"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("passwd")).unwrap();
        let dl = Downloads::scan(d).unwrap();
        let names: Vec<&str> = dl.files().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["lifeboat-agent_0.1.0_amd64.deb", "lifeboat-agent_0.10.0_amd64.deb"]);
        assert_eq!(dl.agent_deb().unwrap().name, "lifeboat-agent_0.10.0_amd64.deb");
        assert!(dl.get("passwd").is_none() && dl.get("../passwd").is_none());
        assert!(dl.get("sub/inner.deb").is_none());
        assert_eq!(&dl.get("lifeboat-agent_0.1.0_amd64.deb").unwrap().1[..], b"deb");
        let f = &dl.files()[0];
        assert_eq!((f.size, f.sha256.as_str()), (3, sha256_hex("deb").as_str()));
        assert_eq!(
            dl.sums().lines().next().unwrap(),
            format!("{}  lifeboat-agent_0.1.0_amd64.deb", sha256_hex("deb"))
        );
    }

    #[test]
    fn the_installer_names_the_package_and_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lifeboat-agent_0.1.0_amd64.deb"), b"deb").unwrap();
        let s = Downloads::scan(dir.path()).unwrap().installer("sha256:abcd");
        assert!(s.contains("FINGERPRINT='sha256:abcd'"), "{s}");
        assert!(s.contains("DEB='lifeboat-agent_0.1.0_amd64.deb'"), "{s}");
        assert!(s.contains(&format!("DEB_SHA256='{}'", sha256_hex("deb"))), "{s}");
        assert!(!s.contains('@'), "every placeholder is filled");
        let empty = tempfile::tempdir().unwrap();
        let s = Downloads::scan(empty.path()).unwrap().installer("sha256:abcd");
        assert!(s.contains("DEB=''"), "no package: the script says so when run");
    }

    #[test]
    fn origins_are_checked_before_they_reach_a_command() {
        for ok in [
            "https://appliance",
            "https://10.0.0.5:443",
            "https://a-b.example.com:8443",
            "https://[fd00::1]:443",
        ] {
            assert!(valid_origin(ok), "{ok}");
        }
        for bad in [
            "http://appliance",
            "https://",
            "https://a;rm -rf /",
            "https://a b",
            "https://a:0",
            "https://a:70000",
            "https://a:44x",
            "https://$(id)",
            "https://a'b",
            "https://[fd00::1",
            "https://a/path",
            "https://[fd00::1]x",
            "https://[fd00::1]:",
            "https://[]:443",
        ] {
            assert!(!valid_origin(bad), "{bad}");
        }
        let c = install_command("https://a:443", "00ff");
        assert!(c.contains("echo '00ff  /tmp/lifeboat-install.sh' | sha256sum -c"), "{c}");
        assert!(c.ends_with("sudo LIFEBOAT_APPLIANCE=https://a:443 sh /tmp/lifeboat-install.sh"));
    }
}
