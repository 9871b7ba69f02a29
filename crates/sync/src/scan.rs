//! Reading the sender's own tree: listings of one directory and `lstat` of one entry,
//! filtered by the set's excludes, in the form both sides compare.

use crate::entry::{Entry, Kind};
use crate::path::{is_temp_name, Excludes, RelPath};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `lstat` of `path` below `root`; `None` when it does not exist or is of a kind that is
/// not replicated.
pub fn stat_local(root: &Path, path: &RelPath) -> io::Result<Option<Entry>> {
    let full = path.under(root);
    let md = match std::fs::symlink_metadata(&full) {
        Ok(md) => md,
        Err(e) if is_gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let link = if md.file_type().is_symlink() {
        match std::fs::read_link(&full) {
            Ok(target) => Some(target.as_os_str().as_bytes().to_vec()),
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let name = path.split().map(|(_, n)| n.to_vec()).unwrap_or_default();
    Ok(Entry::from_metadata(name, &md, link))
}

/// Missing, or a path component turned into a file (ENOTDIR): both mean "not there".
pub fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// The entries of directory `dir`, sorted by name, without excluded entries and the
/// receiver's temporary files; `None` when `dir` is missing or not a directory.
pub fn list_local(
    root: &Path,
    dir: &RelPath,
    excludes: &Excludes,
) -> io::Result<Option<Vec<Entry>>> {
    let full = dir.under(root);
    let read = match std::fs::read_dir(&full) {
        Ok(read) => read,
        Err(e) if is_gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for item in read {
        let item = item?;
        let name = item.file_name().as_bytes().to_vec();
        if is_temp_name(&name) {
            continue;
        }
        let path = dir.join(&name);
        // Relative to the open directory (no walk from the root), never following a
        // final symlink.
        let md = match item.metadata() {
            Ok(md) => md,
            Err(e) if is_gone(&e) => continue,
            Err(e) => return Err(e),
        };
        let link = if md.file_type().is_symlink() {
            match std::fs::read_link(item.path()) {
                Ok(target) => Some(target.as_os_str().as_bytes().to_vec()),
                Err(e) if is_gone(&e) => continue,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let Some(entry) = Entry::from_metadata(name, &md, link) else {
            continue;
        };
        if excludes.is_excluded(&path, entry.kind == Kind::Dir) {
            continue;
        }
        out.push(entry);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(out))
}
