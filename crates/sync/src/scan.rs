//! Reading the sender's own tree: listings of one directory and `lstat` of one entry,
//! filtered by the set's excludes, in the form both sides compare. Paths below the root
//! are resolved one component at a time without following symlinks, as the receiver
//! does: a directory replaced by a symlink (to a loop, or to `/etc`) is not the
//! directory, and nothing outside the tree is ever read and sent.

use crate::entry::{Entry, Kind};
use crate::path::{is_temp_name, Excludes, RelPath};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use uphold_os::confined::DirFd;

/// Directory `dir` below `root`, opened without following symlinks below the root;
/// `None` when it is not there as a directory.
fn open_dir(root: &Path, dir: &RelPath) -> io::Result<Option<DirFd>> {
    match DirFd::open_root(root).and_then(|r| r.open_subdir(dir.as_path())) {
        Ok(d) => Ok(Some(d)),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `lstat` (and the link target) of `name` in `dir`; `None` when it is gone or of a kind
/// that is not replicated.
fn entry_in(dir: &DirFd, name: &[u8]) -> io::Result<Option<Entry>> {
    let os = OsStr::from_bytes(name);
    let st = match dir.stat(os) {
        Ok(Some(st)) => st,
        Ok(None) => return Ok(None),
        Err(e) if is_gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let link = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        match dir.readlink(os) {
            Ok(target) => Some(target.as_bytes().to_vec()),
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    Ok(Entry::from_stat(name.to_vec(), &st, link))
}

/// Opens source file `path` for reading, without following any symlink below the root.
pub fn open_local(root: &Path, path: &RelPath) -> io::Result<std::fs::File> {
    let (parent, name) = path
        .split()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the root is not a file"))?;
    open_dir(root, &parent)?
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?
        .open_read(OsStr::from_bytes(name))
}

/// `lstat` of `path` below `root`; `None` when it does not exist or is of a kind that is
/// not replicated.
pub fn stat_local(root: &Path, path: &RelPath) -> io::Result<Option<Entry>> {
    let Some((parent, name)) = path.split() else {
        let md = std::fs::metadata(root)?;
        return Ok(Entry::from_metadata(Vec::new(), &md, None));
    };
    match open_dir(root, &parent)? {
        Some(dir) => entry_in(&dir, name),
        None => Ok(None),
    }
}

/// Missing, or a path component turned into a file (ENOTDIR) or a symlink (ELOOP, as
/// components are opened without following): all mean "not there".
pub fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP))
}

/// The entries of directory `dir`, sorted by name, without excluded entries and the
/// receiver's temporary files; `None` when `dir` is missing or not a directory.
pub fn list_local(
    root: &Path,
    dir: &RelPath,
    excludes: &Excludes,
) -> io::Result<Option<Vec<Entry>>> {
    let Some(handle) = open_dir(root, dir)? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (name, _) in handle.list()? {
        let name = name.as_bytes();
        if is_temp_name(name) {
            continue;
        }
        // Relative to the open directory (no walk from the root), never following a
        // final symlink.
        let Some(entry) = entry_in(&handle, name)? else {
            continue;
        };
        if excludes.is_excluded(&dir.join(name), entry.kind == Kind::Dir) {
            continue;
        }
        out.push(entry);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(out))
}
