//! Host functions our WIT package offers plugins beyond WASI: native AEAD for ciphers,
//! file cloning for targets, allow-listed commands for quiescers. Each checks the
//! calling plugin's grants before doing anything.

use crate::keys::Algorithm;
use crate::state::HostState;
use crate::worlds::{GenError, gen_cipher, gen_codec, gen_quiescer, gen_target};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

impl gen_codec::lifeboat::plugins::types::Host for HostState {}

use gen_cipher::lifeboat::plugins::aead;

impl aead::Host for HostState {
    fn keys(&mut self) -> Vec<aead::KeyInfo> {
        self.keys
            .keys()
            .iter()
            .map(|k| aead::KeyInfo {
                id: k.id().to_owned(),
                algorithm: match k.algorithm() {
                    Algorithm::Aes256Gcm => aead::Algorithm::Aes256Gcm,
                    Algorithm::ChaCha20Poly1305 => aead::Algorithm::Chacha20Poly1305,
                },
                active: k.active(),
            })
            .collect()
    }

    fn seal(
        &mut self,
        key_id: String,
        nonce: Vec<u8>,
        aad: Vec<u8>,
        plaintext: Vec<u8>,
    ) -> Result<Vec<u8>, GenError> {
        let key = self.keys.get(&key_id).ok_or_else(|| {
            GenError::NotFound(format!("key {key_id:?} is not held by this host"))
        })?;
        let mut buf = plaintext;
        key.seal_in_place(&nonce, &aad, &mut buf).map_err(GenError::Invalid)?;
        Ok(buf)
    }

    fn open(
        &mut self,
        key_id: String,
        nonce: Vec<u8>,
        aad: Vec<u8>,
        ciphertext: Vec<u8>,
    ) -> Result<Vec<u8>, GenError> {
        let key = self.keys.get(&key_id).ok_or_else(|| {
            GenError::NotFound(format!(
                "key {key_id:?} is not held by this host: restore it from the recovery \
                 passphrase before reading data sealed with it"
            ))
        })?;
        let mut buf = ciphertext;
        key.open_in_place(&nonce, &aad, &mut buf).map_err(GenError::Invalid)?;
        Ok(buf)
    }
}

/// Maps a plugin path to the host path under one of its granted directories.
pub(crate) fn resolve(dirs: &[(String, PathBuf)], guest: &str) -> Result<PathBuf, String> {
    let p = Path::new(guest);
    if p.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(format!("path {guest:?} must not contain `.` or `..`"));
    }
    for (g, host) in dirs {
        if let Ok(rest) = p.strip_prefix(g) {
            if rest.as_os_str().is_empty() {
                return Err(format!("path {guest:?} is a granted directory, not a file in it"));
            }
            return Ok(host.join(rest));
        }
    }
    Err(format!("path {guest:?} is outside the directories granted to the plugin"))
}

/// Clones `src` to `dst`: FICLONE, else a sparse copy of the data ranges.
pub(crate) fn clone_file(src: &Path, dst: &Path) -> std::io::Result<bool> {
    let input = std::fs::File::open(src)?;
    let tmp = dst.with_extension("clone-tmp");
    let output = std::fs::File::create(&tmp)?;
    let reflinked = rustix::fs::ioctl_ficlone(&output, &input).is_ok();
    if !reflinked {
        let len = input.metadata()?.len();
        output.set_len(len)?;
        let mut pos = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        while pos < len {
            // Skip holes where the filesystem reports them; fall back to copying all.
            let start = match rustix::fs::seek(&input, rustix::fs::SeekFrom::Data(pos)) {
                Ok(s) => s,
                Err(rustix::io::Errno::NXIO) => break,
                Err(_) => pos,
            };
            let end = match rustix::fs::seek(&input, rustix::fs::SeekFrom::Hole(start)) {
                Ok(e) => e.min(len),
                Err(_) => len,
            };
            let mut off = start;
            while off < end {
                let n = ((end - off) as usize).min(buf.len());
                input.read_exact_at(&mut buf[..n], off)?;
                if buf[..n].iter().any(|b| *b != 0) {
                    output.write_all_at(&buf[..n], off)?;
                }
                off += n as u64;
            }
            pos = end;
        }
    }
    output.sync_all()?;
    std::fs::rename(&tmp, dst)?;
    Ok(reflinked)
}

use gen_target::lifeboat::plugins::host_fs;

impl host_fs::Host for HostState {
    fn clone_file(&mut self, src: String, dst: String) -> Result<host_fs::CloneMethod, GenError> {
        let s = resolve(&self.dirs, &src).map_err(GenError::Denied)?;
        let d = resolve(&self.dirs, &dst).map_err(GenError::Denied)?;
        match clone_file(&s, &d) {
            Ok(true) => Ok(host_fs::CloneMethod::Reflink),
            Ok(false) => Ok(host_fs::CloneMethod::Copy),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(GenError::NotFound(format!("{src}: {e}")))
            }
            Err(e) => Err(GenError::Internal(format!("cloning {src} to {dst}: {e}"))),
        }
    }
}

use gen_quiescer::lifeboat::plugins::commands;

impl commands::Host for HostState {
    async fn run(
        &mut self,
        program: String,
        args: Vec<String>,
        timeout_ms: u32,
    ) -> Result<commands::CommandOutput, GenError> {
        if !self.commands.contains(&program) {
            tracing::warn!(plugin = %self.plugin, %program, "denied a command the plugin was not granted");
            return Err(GenError::Denied(format!(
                "command {program:?} is not granted to plugin {}",
                self.plugin
            )));
        }
        let child = tokio::process::Command::new(&program)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(std::time::Duration::from_millis(u64::from(timeout_ms)), child)
            .await
        {
            Err(_) => Ok(commands::CommandOutput {
                status: -1,
                stdout: Vec::new(),
                stderr: format!("killed after {timeout_ms} ms").into_bytes(),
            }),
            Ok(Err(e)) => Err(GenError::Invalid(format!("cannot run {program:?}: {e}"))),
            Ok(Ok(out)) => Ok(commands::CommandOutput {
                status: out.status.code().unwrap_or(-1),
                stdout: out.stdout,
                stderr: out.stderr,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_stays_inside_granted_dirs() {
        let dirs = vec![("/target".to_owned(), PathBuf::from("/srv/t"))];
        assert_eq!(
            resolve(&dirs, "/target/disks/a.img").unwrap(),
            PathBuf::from("/srv/t/disks/a.img")
        );
        assert!(resolve(&dirs, "/target/../etc/passwd").is_err());
        assert!(resolve(&dirs, "/etc/passwd").is_err());
        assert!(resolve(&dirs, "/targetx/a").is_err());
        assert!(resolve(&dirs, "/target").is_err());
    }

    #[test]
    fn clone_keeps_content_and_holes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("a.img");
        let f = std::fs::File::create(&src).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", (8 << 20) - 4).unwrap();
        drop(f);
        let dst = d.path().join("b.img");
        clone_file(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
    }
}
