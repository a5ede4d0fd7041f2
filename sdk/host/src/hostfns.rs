//! Host functions our WIT package offers plugins beyond WASI: native AEAD for ciphers,
//! file cloning for targets, allow-listed commands for quiescers. Each checks the
//! calling plugin's grants before doing anything.

use crate::beneath::{self, BeneathError};
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

/// Maps a plugin path to (granted host directory, path relative to it). Only the text is
/// checked here; [`crate::beneath`] opens the result without following any link.
pub(crate) fn resolve<'a>(
    dirs: &'a [(String, PathBuf)],
    guest: &str,
) -> Result<(&'a Path, PathBuf), String> {
    let p = Path::new(guest);
    if p.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(format!("path {guest:?} must not contain `.` or `..`"));
    }
    for (g, host) in dirs {
        if let Ok(rest) = p.strip_prefix(g) {
            if rest.as_os_str().is_empty() {
                return Err(format!("path {guest:?} is a granted directory, not a file in it"));
            }
            return Ok((host.as_path(), rest.to_owned()));
        }
    }
    Err(format!("path {guest:?} is outside the directories granted to the plugin"))
}

/// Why [`clone_file`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CloneError {
    /// A path was refused or not found (see [`BeneathError`]).
    #[error(transparent)]
    Path(#[from] BeneathError),
    /// Reading, writing or syncing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Clones `src_rel` beneath `src_root` to `dst_rel` beneath `dst_root`: FICLONE, else a
/// sparse copy of the data ranges, into a new temporary file beside the destination,
/// synced, renamed over it, and the directory synced. Returns whether it reflinked.
/// Neither path may go through a symbolic link (see [`crate::beneath`]).
pub(crate) fn clone_file(
    src_root: &Path,
    src_rel: &Path,
    dst_root: &Path,
    dst_rel: &Path,
) -> Result<bool, CloneError> {
    let input =
        std::fs::File::from(beneath::open_regular(&beneath::open_root(src_root)?, src_rel)?);
    let (dir, name) = beneath::open_parent(&beneath::open_root(dst_root)?, dst_rel)?;
    // A link at the destination would be replaced, not followed; refused all the same,
    // so a plugin learns at once that links are not for host functions.
    if let Ok(st) = rustix::fs::statat(&dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        && rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink
    {
        return Err(BeneathError::Escapes(dst_rel.display().to_string()).into());
    }
    let mut tmp_name = name.to_owned();
    tmp_name.push(".clone-tmp");
    let output = std::fs::File::from(beneath::create_new(&dir, &tmp_name)?);
    let copied = (|| -> std::io::Result<bool> {
        let reflinked = rustix::fs::ioctl_ficlone(&output, &input).is_ok();
        if !reflinked {
            sparse_copy(&input, &output)?;
        }
        output.sync_all()?;
        Ok(reflinked)
    })();
    let reflinked = match copied {
        Ok(r) => r,
        Err(e) => {
            let _ = rustix::fs::unlinkat(&dir, &tmp_name, rustix::fs::AtFlags::empty());
            return Err(e.into());
        }
    };
    rustix::fs::renameat(&dir, &tmp_name, &dir, name).map_err(std::io::Error::from)?;
    rustix::fs::fsync(&dir).map_err(std::io::Error::from)?;
    Ok(reflinked)
}

/// Copies `input` to `output` (same length), skipping holes where the filesystem
/// reports them and blocks of zeros.
fn sparse_copy(input: &std::fs::File, output: &std::fs::File) -> std::io::Result<()> {
    let len = input.metadata()?.len();
    output.set_len(len)?;
    let mut pos = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while pos < len {
        // Skip holes where the filesystem reports them; fall back to copying all.
        let start = match rustix::fs::seek(input, rustix::fs::SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => pos,
        };
        let end = match rustix::fs::seek(input, rustix::fs::SeekFrom::Hole(start)) {
            Ok(e) => e.min(len),
            Err(_) => len,
        };
        let mut off = start;
        while off < end {
            let n = usize::try_from(end - off).map_or(buf.len(), |left| left.min(buf.len()));
            input.read_exact_at(&mut buf[..n], off)?;
            if buf[..n].iter().any(|b| *b != 0) {
                output.write_all_at(&buf[..n], off)?;
            }
            off += n as u64;
        }
        pos = end;
    }
    Ok(())
}

use gen_target::lifeboat::plugins::host_fs;

impl host_fs::Host for HostState {
    fn clone_file(&mut self, src: String, dst: String) -> Result<host_fs::CloneMethod, GenError> {
        let (sr, s) = resolve(&self.dirs, &src).map_err(GenError::Denied)?;
        let (dr, d) = resolve(&self.dirs, &dst).map_err(GenError::Denied)?;
        match clone_file(sr, &s, dr, &d) {
            Ok(true) => Ok(host_fs::CloneMethod::Reflink),
            Ok(false) => Ok(host_fs::CloneMethod::Copy),
            Err(CloneError::Path(BeneathError::NotFound(_))) => {
                Err(GenError::NotFound(format!("cloning {src} to {dst}: no such file")))
            }
            Err(CloneError::Path(e @ (BeneathError::Escapes(_) | BeneathError::NotRegular(_)))) => {
                tracing::warn!(plugin = %self.plugin, %src, %dst, error = %e, "refused a host file operation");
                Err(GenError::Denied(format!("cloning {src} to {dst}: {e}")))
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
            (Path::new("/srv/t"), PathBuf::from("disks/a.img"))
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
        clone_file(d.path(), Path::new("a.img"), d.path(), Path::new("b.img")).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert!(!d.path().join("b.img.clone-tmp").exists());
    }
}
