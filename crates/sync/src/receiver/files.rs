//! Operations on the target tree, every path opened below the target root
//! without following symlinks: listing and comparing, creating directories and
//! symlinks, renames, deletions and the final rename of a received file.

use crate::entry::{listing_digest, Entry, Kind, Meta};
use crate::path::{check_name, is_temp_name, Excludes, RelPath, TEMP_PREFIX};
use crate::protocol::{CompareItem, CompareResult};
use std::ffi::{OsStr, OsString};
use std::io::{self};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use uphold_config::sync::FsyncPolicy;
use uphold_os::confined::DirFd;

use super::meta::apply_meta;

/// Leftover temporary files (from a receiver killed mid-write) older than this are removed
/// when their directory is listed.
const STALE_TEMP_SECS: i64 = 600;

pub(super) fn open_root(target: &Path) -> Result<DirFd, String> {
    DirFd::open_root(target).map_err(|e| format!("opening target {}: {e}", target.display()))
}

/// The parent directory of `path` (opened safely) and its last name.
pub(super) fn open_parent(root: &DirFd, path: &RelPath) -> Result<(DirFd, OsString), String> {
    let (parent, name) = path.split().ok_or("the root has no parent")?;
    let dir = root
        .open_subdir(parent.as_path())
        .map_err(|e| format!("{path}: opening parent directory: {e}"))?;
    Ok((dir, OsStr::from_bytes(name).to_os_string()))
}

pub(super) fn temp_name(name: &OsStr) -> OsString {
    let mut v = TEMP_PREFIX.to_vec();
    v.extend_from_slice(format!("{:016x}.", rand::random::<u64>()).as_bytes());
    // Keep the whole name within NAME_MAX.
    let room = crate::path::MAX_NAME_BYTES - v.len();
    let bytes = name.as_bytes();
    v.extend_from_slice(&bytes[..bytes.len().min(room)]);
    OsString::from_vec(v)
}

use std::os::unix::ffi::OsStringExt;

pub(super) fn gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
    )
}

pub(super) fn entry_at(dir: &DirFd, name: &OsStr) -> io::Result<Option<Entry>> {
    let Some(st) = dir.stat(name)? else {
        return Ok(None);
    };
    let link = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        match dir.readlink(name) {
            Ok(target) => Some(target.as_bytes().to_vec()),
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    Ok(Entry::from_stat(name.as_bytes().to_vec(), &st, link))
}

pub(super) fn compare(
    root: &DirFd,
    excludes: &Excludes,
    with_owner: bool,
    item: CompareItem,
) -> Result<CompareResult, String> {
    match item {
        CompareItem::Dir { dir, digest } => {
            let handle = match root.open_subdir(dir.as_path()) {
                Ok(h) => h,
                Err(e) if gone(&e) => return Ok(CompareResult::Missing),
                Err(e) => return Err(format!("{dir}: {e}")),
            };
            let listing =
                list_target(&handle, &dir, excludes).map_err(|e| format!("{dir}: {e}"))?;
            if listing_digest(&listing, with_owner) == digest {
                Ok(CompareResult::Same)
            } else {
                Ok(CompareResult::Listing(listing))
            }
        }
        CompareItem::Names { dir, names } => {
            let handle = match root.open_subdir(dir.as_path()) {
                Ok(h) => h,
                Err(e) if gone(&e) => return Ok(CompareResult::Missing),
                Err(e) => return Err(format!("{dir}: {e}")),
            };
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                let name = name.into_vec();
                check_name(&name).map_err(|r| format!("{dir}: bad name: {r}"))?;
                let path = dir.join(&name);
                let entry = entry_at(&handle, OsStr::from_bytes(&name))
                    .map_err(|e| format!("{path}: {e}"))?
                    .filter(|e| !excludes.is_excluded(&path, e.kind == Kind::Dir));
                out.push(entry);
            }
            Ok(CompareResult::Entries(out))
        }
    }
}

/// A target directory's entries as the sender would list them; removes stale temporary
/// files left by a receiver that died mid-write.
pub(super) fn list_target(
    dir: &DirFd,
    rel: &RelPath,
    excludes: &Excludes,
) -> io::Result<Vec<Entry>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut out = Vec::new();
    for (name, _) in dir.list()? {
        if is_temp_name(name.as_bytes()) {
            if let Ok(Some(st)) = dir.stat(&name) {
                if now - st.st_ctime > STALE_TEMP_SECS {
                    let _ = dir.unlink(&name);
                }
            }
            continue;
        }
        let Some(entry) = entry_at(dir, &name)? else {
            continue;
        };
        if excludes.is_excluded(&rel.join(&entry.name), entry.kind == Kind::Dir) {
            continue;
        }
        out.push(entry);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub(super) fn finish_put(
    dir: &DirFd,
    temp: &OsStr,
    name: &OsStr,
    policy: FsyncPolicy,
) -> io::Result<()> {
    dir.rename(temp, dir, name)?;
    if policy == FsyncPolicy::File {
        dir.fsync()?;
    }
    Ok(())
}

pub(super) fn mkdir(root: &DirFd, path: &RelPath, meta: &Meta, owner: bool) -> Result<(), String> {
    let (dir, name) = open_parent(root, path)?;
    match dir.mkdir(&name, 0o700) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            let is_dir = matches!(dir.stat(&name), Ok(Some(st)) if st.st_mode & libc::S_IFMT == libc::S_IFDIR);
            if !is_dir {
                return Err(format!("{path}: exists and is not a directory"));
            }
        }
        Err(e) => return Err(format!("{path}: mkdir: {e}")),
    }
    apply_meta(&dir, &name, Kind::Dir, meta, owner).map_err(|e| format!("{path}: {e}"))
}

pub(super) fn symlink(
    root: &DirFd,
    path: &RelPath,
    target: &[u8],
    meta: &Meta,
    owner: bool,
) -> Result<(), String> {
    if target.is_empty() || target.contains(&0) || target.len() > crate::path::MAX_PATH_BYTES {
        return Err(format!("{path}: invalid symlink target"));
    }
    let (dir, name) = open_parent(root, path)?;
    let temp = temp_name(&name);
    let make = || -> io::Result<()> {
        dir.symlink(OsStr::from_bytes(target), &temp)?;
        apply_meta(&dir, &temp, Kind::Symlink, meta, owner)?;
        dir.rename(&temp, &dir, &name)
    };
    make().map_err(|e| {
        let _ = dir.unlink(&temp);
        format!("{path}: symlink: {e}")
    })
}

pub(super) fn set_meta_at(
    root: &DirFd,
    path: &RelPath,
    kind: Kind,
    meta: &Meta,
    owner: bool,
) -> Result<(), String> {
    if path.is_root() {
        return Ok(());
    }
    let (dir, name) = open_parent(root, path)?;
    apply_meta(&dir, &name, kind, meta, owner).map_err(|e| format!("{path}: {e}"))
}

pub(super) fn rename(
    root: &DirFd,
    from: &RelPath,
    to: &RelPath,
    expect: &Entry,
) -> Result<bool, String> {
    if from.is_root() || to.is_root() || to.is_within(from) {
        return Ok(false);
    }
    let Ok((from_dir, from_name)) = open_parent(root, from) else {
        return Ok(false);
    };
    let current = match entry_at(&from_dir, &from_name) {
        Ok(Some(e)) => e,
        _ => return Ok(false),
    };
    if current.kind != expect.kind || (current.kind == Kind::File && !current.same_content(expect))
    {
        return Ok(false);
    }
    let Ok((to_dir, to_name)) = open_parent(root, to) else {
        return Ok(false);
    };
    match from_dir.rename(&from_name, &to_dir, &to_name) {
        Ok(()) => Ok(true),
        // The place is taken by a non-empty directory or another kind: the normal
        // comparison sorts it out.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOTEMPTY)
                    | Some(libc::EEXIST)
                    | Some(libc::EISDIR)
                    | Some(libc::ENOTDIR)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(format!("rename {from} -> {to}: {e}")),
    }
}

pub(super) fn delete(root: &DirFd, path: &RelPath) -> Result<(), String> {
    if path.is_root() {
        return Err("refusing to delete the target root".to_string());
    }
    let (dir, name) = match open_parent(root, path) {
        Ok(found) => found,
        Err(_) => return Ok(()),
    };
    match dir.remove_all(&name) {
        Ok(()) => Ok(()),
        Err(e) if gone(&e) => Ok(()),
        Err(e) => Err(format!("{path}: delete: {e}")),
    }
}
