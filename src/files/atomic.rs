//! Atomic rewrites of small files, serialized by a lock on their directory.
//!
//! Every rewrite goes through [`atomic_write`]: a temporary file in the same directory, written
//! and fsynced, given the old file's mode and owner, renamed over the old one, and the directory
//! fsynced. Readers (a daemon reloading) see the old file or the new one, never a half-written
//! one. Writers of one directory are serialized by an advisory lock on the directory
//! ([`DirLock`]), so that two concurrent first contacts cannot record two different keys.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The OS refused an operation on a file or directory.
#[derive(Debug, thiserror::Error)]
#[error("{}: {what}: {error}", path.display())]
pub struct IoError {
    /// The file (or directory).
    pub path: PathBuf,
    /// What was being done.
    pub what: &'static str,
    /// The OS error.
    pub error: io::Error,
}

/// Wraps an OS error about `path` while doing `what`.
pub(crate) fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(io::Error) -> IoError + 'a {
    move |error| IoError {
        path: path.to_path_buf(),
        what,
        error,
    }
}

/// The directory `path` is in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// An exclusive advisory lock (`flock`) on the directory of a file, released on drop. Taken by
/// every writer of a `known_peers` or peers file, around the read-check-write of one file.
pub(crate) struct DirLock {
    _dir: File,
}

impl DirLock {
    /// Locks the directory of `file`, waiting for another holder.
    pub(crate) fn acquire(file: &Path) -> Result<DirLock, IoError> {
        let dir = parent_dir(file);
        let handle =
            File::open(dir).map_err(io_err(dir, "cannot open the directory to lock it"))?;
        handle
            .lock()
            .map_err(io_err(dir, "cannot lock the directory"))?;
        Ok(DirLock { _dir: handle })
    }
}

/// Replaces `path` with `contents` atomically: a temporary file in the same directory (mode
/// `new_mode` when `path` does not exist yet, else the mode and owner of `path`), written and
/// fsynced, renamed over `path`, then the directory fsynced. Symbolic links are followed: the
/// file they point to is replaced.
pub(crate) fn atomic_write(path: &Path, contents: &[u8], new_mode: u32) -> Result<(), IoError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let target = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(io_err(path, "cannot resolve the path")(e)),
    };
    let old = match std::fs::metadata(&target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(path, "cannot read the file's metadata")(e)),
    };
    let dir = parent_dir(&target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp_path = None;
    let mut file = None;
    for attempt in 0..100u32 {
        let candidate = dir.join(format!(".{name}.tmp.{}.{attempt}", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&candidate)
        {
            Ok(f) => {
                tmp_path = Some(candidate);
                file = Some(f);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(dir, "cannot create a temporary file")(e)),
        }
    }
    let (Some(tmp), Some(mut file)) = (tmp_path, file) else {
        return Err(io_err(dir, "cannot create a temporary file")(
            io::Error::from(io::ErrorKind::AlreadyExists),
        ));
    };
    let result = (|| {
        file.write_all(contents)
            .map_err(io_err(&tmp, "cannot write"))?;
        let mode = old.as_ref().map_or(new_mode, |m| m.mode() & 0o7777);
        if let Some(m) = &old {
            let mine = file.metadata().map_err(io_err(&tmp, "cannot stat"))?;
            if (mine.uid(), mine.gid()) != (m.uid(), m.gid()) {
                std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid())).map_err(io_err(
                    &tmp,
                    "cannot give the new file the owner of the old one",
                ))?;
            }
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_err(&tmp, "cannot set the mode"))?;
        file.sync_all().map_err(io_err(&tmp, "cannot fsync"))?;
        std::fs::rename(&tmp, &target).map_err(io_err(&target, "cannot rename over"))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir, "cannot fsync the directory"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_keeps_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers");
        std::fs::write(&path, "x\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        atomic_write(&path, b"y\n", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "y\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
    }
}
