//! Opening a plugin's paths beneath the directory granted to it, never through a
//! symbolic link.
//!
//! # Why
//!
//! A plugin reaches its granted directories through WASI, where wasmtime-wasi (cap-std)
//! already confines every lookup. Our own host functions (`host-fs.clone-file`) take plugin
//! paths too, and they run as the appliance's user with the host's filesystem: checking
//! the *text* of a path for `..` is not enough, because WASI lets a plugin create a
//! symbolic link inside its directory (`up -> ../../..`, or an absolute target), and the
//! host would follow it out. Whoever can write the target directory (the storage, another
//! local user with access to it) can plant one as well, or swap a directory for a link
//! between two calls.
//!
//! # How
//!
//! Every path is resolved relative to a descriptor of the granted directory with
//! `openat2(2)` and `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`: the
//! kernel refuses, atomically with the lookup, any component that is a symbolic link
//! (wherever it points) and any step out of the directory. On kernels without `openat2`
//! (before 5.6, or where a seccomp filter hides it) the same is done one component at a
//! time with `openat(O_NOFOLLOW)`, each relative to the descriptor of the previous one.
//! Files are created in the descriptor of their parent directory (`O_CREAT | O_EXCL |
//! O_NOFOLLOW`, after unlinking any stale temporary), renamed there with `renameat`
//! (which replaces a directory entry and never writes through a link at the
//! destination), and the parent directory is synced after the rename.
//!
//! Plugins therefore cannot use symbolic links in paths they give host functions, even
//! links that stay inside their directory; none of our targets needs them.

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

/// Why a path was refused or could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BeneathError {
    /// The path goes through a symbolic link or out of the granted directory.
    #[error("{0}: refused, the path goes through a symbolic link or out of the granted directory")]
    Escapes(String),
    /// The path names something that is not a regular file (a device, a FIFO, a directory).
    #[error("{0}: refused, not a regular file")]
    NotRegular(String),
    /// It does not exist.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// Any other failure.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

impl BeneathError {
    fn from_errno(what: &Path, e: Errno) -> BeneathError {
        let what = what.display().to_string();
        match e {
            // ELOOP: a symlink met with RESOLVE_NO_SYMLINKS or O_NOFOLLOW; EXDEV: a step
            // out of the directory with RESOLVE_BENEATH; ENOTDIR: a non-directory where a
            // directory was needed (a link to a file, with O_NOFOLLOW | O_DIRECTORY).
            Errno::LOOP | Errno::XDEV => BeneathError::Escapes(what),
            Errno::NOENT => BeneathError::NotFound(what),
            other => BeneathError::Io(what, other.into()),
        }
    }
}

/// The granted directory itself (a path from the operator's configuration, trusted).
pub(crate) fn open_root(dir: &Path) -> Result<OwnedFd, BeneathError> {
    rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| BeneathError::from_errno(dir, e))
}

/// Whether `rel` is a plain relative path: no root, no `.`, no `..`, not empty.
fn plain(rel: &Path) -> bool {
    !rel.as_os_str().is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Opens `rel` beneath `root` with `flags`, refusing every symbolic link on the way and
/// at the end, and every step out of `root`.
pub(crate) fn open(
    root: &impl AsFd,
    rel: &Path,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, BeneathError> {
    if !plain(rel) {
        return Err(BeneathError::Escapes(rel.display().to_string()));
    }
    let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(root, rel, flags, mode, resolve) {
        Err(Errno::NOSYS) | Err(Errno::PERM) if openat2_missing() => {
            open_by_components(root, rel, flags, mode)
        }
        // A link where a directory is wanted (`O_DIRECTORY | O_NOFOLLOW`) is ENOTDIR:
        // told apart from a plain file in the way by opening the path itself.
        Err(Errno::NOTDIR) if is_link(root, rel, resolve) => {
            Err(BeneathError::Escapes(rel.display().to_string()))
        }
        r => r.map_err(|e| BeneathError::from_errno(rel, e)),
    }
}

/// Whether `rel` (beneath `root`, with no link before its last component) is itself a
/// symbolic link. For error messages only: nothing is opened through it.
fn is_link(root: &impl AsFd, rel: &Path, resolve: ResolveFlags) -> bool {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat2(root, rel, flags, Mode::empty(), resolve) {
        Ok(fd) => rustix::fs::fstat(&fd)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink),
        Err(e) => matches!(e, Errno::LOOP | Errno::XDEV),
    }
}

/// Whether this kernel (or its seccomp filter) lacks `openat2`, tried once.
fn openat2_missing() -> bool {
    static MISSING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MISSING.get_or_init(|| {
        matches!(
            rustix::fs::openat2(
                rustix::fs::CWD,
                ".",
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH,
            ),
            Err(Errno::NOSYS) | Err(Errno::PERM)
        )
    })
}

/// The portable fallback of [`open`]: one `openat(O_NOFOLLOW)` per component, each
/// relative to the previous directory's descriptor, so no symlink is ever followed and
/// `..` (refused by [`plain`]) never appears.
pub(crate) fn open_by_components(
    root: &impl AsFd,
    rel: &Path,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, BeneathError> {
    if !plain(rel) {
        return Err(BeneathError::Escapes(rel.display().to_string()));
    }
    let parts: Vec<_> = rel.components().collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Err(BeneathError::Escapes(rel.display().to_string()));
    };
    let mut dir: Option<OwnedFd> = None;
    for part in dirs {
        let next = {
            let at: &dyn AsFd = match &dir {
                Some(d) => d,
                None => root,
            };
            rustix::fs::openat(
                at.as_fd(),
                part.as_os_str(),
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                // With O_NOFOLLOW | O_DIRECTORY a link is ENOTDIR.
                Errno::NOTDIR
                    if rustix::fs::statat(
                        at.as_fd(),
                        part.as_os_str(),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink) =>
                {
                    BeneathError::Escapes(rel.display().to_string())
                }
                e => BeneathError::from_errno(rel, e),
            })?
        };
        dir = Some(next);
    }
    let at: &dyn AsFd = match &dir {
        Some(d) => d,
        None => root,
    };
    rustix::fs::openat(at.as_fd(), last.as_os_str(), flags | OFlags::NOFOLLOW, mode)
        .map_err(|e| BeneathError::from_errno(rel, e))
}

/// Opens the regular file `rel` for reading. `O_NONBLOCK` so that a FIFO planted in the
/// directory cannot hang the caller before it is refused.
pub(crate) fn open_regular(root: &impl AsFd, rel: &Path) -> Result<OwnedFd, BeneathError> {
    let fd = open(root, rel, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())?;
    let st = rustix::fs::fstat(&fd).map_err(|e| BeneathError::from_errno(rel, e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(BeneathError::NotRegular(rel.display().to_string()));
    }
    Ok(fd)
}

/// The directory holding `rel` (opened beneath `root`) and `rel`'s last component.
pub(crate) fn open_parent<'a>(
    root: &impl AsFd,
    rel: &'a Path,
) -> Result<(OwnedFd, &'a std::ffi::OsStr), BeneathError> {
    let Some(name) = rel.file_name().filter(|_| plain(rel)) else {
        return Err(BeneathError::Escapes(rel.display().to_string()));
    };
    let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = match parent {
        Some(p) => open(root, p, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())?,
        None => rustix::fs::openat(
            root,
            ".",
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| BeneathError::from_errno(rel, e))?,
    };
    Ok((dir, name))
}

/// Creates `name` in `dir` as a new regular file (0600), replacing a stale one of that
/// name by unlinking it first: never opening, truncating or writing through whatever
/// was there (a link to a file elsewhere).
pub(crate) fn create_new(dir: &impl AsFd, name: &std::ffi::OsStr) -> Result<OwnedFd, BeneathError> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(BeneathError::from_errno(Path::new(name), e)),
    }
    rustix::fs::openat(
        dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| BeneathError::from_errno(Path::new(name), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn both_resolvers_refuse_links_and_escapes_and_open_plain_paths() {
        let t = tempfile::tempdir().unwrap();
        let root_dir = t.path().join("root");
        std::fs::create_dir_all(root_dir.join("sub")).unwrap();
        std::fs::write(root_dir.join("sub/f"), b"x").unwrap();
        std::fs::write(t.path().join("outside"), b"secret").unwrap();
        symlink("../outside", root_dir.join("rel")).unwrap();
        symlink(t.path().join("outside"), root_dir.join("abs")).unwrap();
        symlink("sub", root_dir.join("inner")).unwrap();
        symlink("..", root_dir.join("up")).unwrap();
        let root = open_root(&root_dir).unwrap();
        type Opener = fn(&OwnedFd, &Path, OFlags, Mode) -> Result<OwnedFd, BeneathError>;
        let openers: [(&str, Opener); 2] = [
            ("openat2", |r, p, f, m| open(r, p, f, m)),
            ("components", |r, p, f, m| open_by_components(r, p, f, m)),
        ];
        for (how, opener) in openers {
            let o = |p: &str| opener(&root, Path::new(p), OFlags::RDONLY, Mode::empty());
            assert!(o("sub/f").is_ok(), "{how}");
            for bad in ["rel", "abs", "inner/f", "up/outside", "sub/../sub/f", "/etc/hostname", ""]
            {
                match o(bad) {
                    Err(BeneathError::Escapes(_)) => {}
                    other => panic!("{how}: {bad}: {other:?}"),
                }
            }
            assert!(matches!(o("sub/none"), Err(BeneathError::NotFound(_))), "{how}");
        }
    }

    #[test]
    fn only_regular_files_are_read() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            t.path().join("fifo").as_path(),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let root = open_root(t.path()).unwrap();
        assert!(matches!(open_regular(&root, Path::new("d")), Err(BeneathError::NotRegular(_))));
        assert!(matches!(open_regular(&root, Path::new("fifo")), Err(BeneathError::NotRegular(_))));
    }

    #[test]
    fn create_new_replaces_a_link_instead_of_writing_through_it() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("root")).unwrap();
        std::fs::write(t.path().join("victim"), b"keep").unwrap();
        symlink(t.path().join("victim"), t.path().join("root/tmp")).unwrap();
        std::fs::hard_link(t.path().join("victim"), t.path().join("root/hard")).unwrap();
        let root = open_root(&t.path().join("root")).unwrap();
        for name in ["tmp", "hard"] {
            let fd = create_new(&root, std::ffi::OsStr::new(name)).unwrap();
            rustix::io::write(&fd, b"new").unwrap();
        }
        assert_eq!(std::fs::read(t.path().join("victim")).unwrap(), b"keep");
        assert_eq!(std::fs::read(t.path().join("root/tmp")).unwrap(), b"new");
    }
}
