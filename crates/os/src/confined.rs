//! Directory handles that cannot be led outside a tree: every path below a root is
//! opened one component at a time with `O_NOFOLLOW | O_DIRECTORY`, and every operation
//! works on a name relative to an open directory (`*at` calls, never following a final
//! symlink). A symlink planted in the target tree (by the replicated data itself or by a
//! local user) therefore can never make the sync receiver write outside its tree.

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path};

/// An open directory.
#[derive(Debug)]
pub struct DirFd(OwnedFd);

/// What a directory entry is, from `readdir` (no extra `stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// Devices, sockets, fifos: not replicated.
    Other,
    /// The filesystem did not say; `stat` it.
    Unknown,
}

fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call of ours and is owned by
    // nobody else; OwnedFd takes over closing it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn moved(name: &OsStr) -> io::Error {
    io::Error::other(format!(
        "directory {name:?} was moved while it was being removed; removal stopped"
    ))
}

fn single_name(name: &OsStr) -> io::Result<&OsStr> {
    let mut comps = Path::new(name).components();
    match (comps.next(), comps.next()) {
        (Some(Component::Normal(n)), None) if n == name => Ok(n),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a single file name"),
        )),
    }
}

impl DirFd {
    /// Opens the root of a tree. The root path itself comes from the config and may go
    /// through symlinks (e.g. /var/www -> /srv/www).
    pub fn open_root(path: &Path) -> io::Result<DirFd> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(DirFd(own(fd)))
    }

    fn raw(&self) -> Option<RawFd> {
        Some(self.0.as_raw_fd())
    }

    /// Opens `rel` below this directory without following any symlink on the way.
    /// `rel` may only hold normal components; an empty path reopens this directory.
    pub fn open_subdir(&self, rel: &Path) -> io::Result<DirFd> {
        let mut current = DirFd(self.0.try_clone()?);
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("path {rel:?} has a component that is not a plain name"),
                ));
            };
            let fd = nix::fcntl::openat(
                current.raw(),
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            current = DirFd(own(fd));
        }
        Ok(current)
    }

    /// `lstat` of an entry; `None` when it does not exist.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<FileStat>> {
        let name = single_name(name)?;
        match nix::sys::stat::fstatat(self.raw(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// `fstat` of the directory itself.
    pub fn stat_self(&self) -> io::Result<FileStat> {
        Ok(nix::sys::stat::fstat(self.0.as_raw_fd())?)
    }

    /// The entries of this directory except `.` and `..`, unsorted.
    pub fn list(&self) -> io::Result<Vec<(OsString, EntryKind)>> {
        use std::os::unix::ffi::OsStrExt;
        let mut dir = nix::dir::Dir::openat(
            self.raw(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            use nix::dir::Type;
            let kind = match entry.file_type() {
                Some(Type::File) => EntryKind::File,
                Some(Type::Directory) => EntryKind::Dir,
                Some(Type::Symlink) => EntryKind::Symlink,
                Some(_) => EntryKind::Other,
                None => EntryKind::Unknown,
            };
            out.push((OsStr::from_bytes(name).to_os_string(), kind));
        }
        Ok(out)
    }

    /// Opens a regular file for reading; a symlink in its place is refused.
    pub fn open_read(&self, name: &OsStr) -> io::Result<File> {
        let name = single_name(name)?;
        let fd = nix::fcntl::openat(
            self.raw(),
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(File::from(own(fd)))
    }

    /// Creates a new file that must not exist yet.
    pub fn create_new(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let name = single_name(name)?;
        let fd = nix::fcntl::openat(
            self.raw(),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode & 0o7777),
        )?;
        Ok(File::from(own(fd)))
    }

    /// Atomically renames `from` here to `to` in `to_dir`, replacing a file there.
    pub fn rename(&self, from: &OsStr, to_dir: &DirFd, to: &OsStr) -> io::Result<()> {
        let (from, to) = (single_name(from)?, single_name(to)?);
        Ok(nix::fcntl::renameat(self.raw(), from, to_dir.raw(), to)?)
    }

    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        let name = single_name(name)?;
        Ok(nix::unistd::unlinkat(
            self.raw(),
            name,
            UnlinkatFlags::NoRemoveDir,
        )?)
    }

    /// Removes an entry of any kind; a directory with everything below it.
    ///
    /// The walk is iterative and holds one directory open at a time, whatever the
    /// depth: a tree built deeper than any stack (renames can nest directories past
    /// PATH_MAX) is removed like any other, never aborting the daemon. Going back up
    /// reopens `..` and checks it is the directory the walk came down from, so a
    /// directory moved away meanwhile ends the walk with an error instead of
    /// removing something else.
    pub fn remove_all(&self, name: &OsStr) -> io::Result<()> {
        let name = single_name(name)?;
        let Some(st) = self.stat(name)? else {
            return Ok(());
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return self.unlink(name);
        }
        /// One directory on the way down: its name in its parent, its identity and
        /// the subdirectories still to remove below it.
        struct Level {
            name: OsString,
            id: (u64, u64),
            subdirs: Vec<OsString>,
        }
        let identity = |st: &FileStat| (st.st_dev, st.st_ino);
        let top_id = identity(&self.stat_self()?);
        let mut current = self.open_subdir(Path::new(name))?;
        let mut path: Vec<Level> = Vec::new();
        let mut entering = Some((name.to_os_string(), identity(&st)));
        loop {
            if let Some((name, id)) = entering.take() {
                if identity(&current.stat_self()?) != id {
                    return Err(moved(&name));
                }
                let subdirs = current.empty_but_subdirs()?;
                path.push(Level { name, id, subdirs });
            }
            let level = path.last_mut().expect("the walk is inside a directory");
            if let Some(child) = level.subdirs.pop() {
                match current.stat(&child)? {
                    Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                        current = current.open_subdir(Path::new(&child))?;
                        entering = Some((child, identity(&st)));
                    }
                    Some(_) => current.unlink(&child)?,
                    None => {}
                }
                continue;
            }
            let done = path.pop().expect("the walk is inside a directory");
            let parent_id = path.last().map_or(top_id, |l| l.id);
            let parent = DirFd(own(nix::fcntl::openat(
                current.raw(),
                "..",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?));
            if identity(&parent.stat_self()?) != parent_id {
                return Err(moved(&done.name));
            }
            nix::unistd::unlinkat(
                parent.raw(),
                done.name.as_os_str(),
                UnlinkatFlags::RemoveDir,
            )?;
            if path.is_empty() {
                return Ok(());
            }
            current = parent;
        }
    }

    /// Unlinks every entry of this directory that is not a directory and returns
    /// the names of the subdirectories.
    fn empty_but_subdirs(&self) -> io::Result<Vec<OsString>> {
        let mut subdirs = Vec::new();
        for (child, kind) in self.list()? {
            let is_dir = match kind {
                EntryKind::Dir => true,
                EntryKind::Unknown => self
                    .stat(&child)?
                    .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR),
                _ => false,
            };
            if is_dir {
                subdirs.push(child);
            } else {
                match self.unlink(&child) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    other => other?,
                }
            }
        }
        Ok(subdirs)
    }

    pub fn mkdir(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        let name = single_name(name)?;
        Ok(nix::sys::stat::mkdirat(
            self.raw(),
            name,
            Mode::from_bits_truncate(mode & 0o7777),
        )?)
    }

    pub fn symlink(&self, target: &OsStr, name: &OsStr) -> io::Result<()> {
        let name = single_name(name)?;
        Ok(nix::unistd::symlinkat(target, self.raw(), name)?)
    }

    pub fn readlink(&self, name: &OsStr) -> io::Result<OsString> {
        let name = single_name(name)?;
        Ok(nix::fcntl::readlinkat(self.raw(), name)?)
    }

    /// Sets access and modification time of an entry (a symlink itself, not its target).
    pub fn set_mtime(&self, name: &OsStr, secs: i64, nanos: u32) -> io::Result<()> {
        let name = single_name(name)?;
        let ts = TimeSpec::new(secs, i64::from(nanos));
        Ok(nix::sys::stat::utimensat(
            self.raw(),
            name,
            &ts,
            &ts,
            UtimensatFlags::NoFollowSymlink,
        )?)
    }

    pub fn chown(&self, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
        let name = single_name(name)?;
        Ok(nix::unistd::fchownat(
            self.raw(),
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?)
    }

    /// Permission bits of a file or directory (symlinks have none to set).
    pub fn chmod(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        let name = single_name(name)?;
        Ok(nix::sys::stat::fchmodat(
            self.raw(),
            name,
            Mode::from_bits_truncate(mode & 0o7777),
            FchmodatFlags::NoFollowSymlink,
        )?)
    }

    /// Makes the directory's entries (creations, renames) durable.
    pub fn fsync(&self) -> io::Result<()> {
        Ok(nix::unistd::fsync(self.0.as_raw_fd())?)
    }

    /// Flushes the whole filesystem holding this directory: one call instead of an
    /// fsync per file when many files were written.
    pub fn syncfs(&self) -> io::Result<()> {
        Ok(nix::unistd::syncfs(self.0.as_raw_fd())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_directory_is_never_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("real")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        let dir = DirFd::open_root(root.path()).unwrap();
        assert!(dir.open_subdir(Path::new("real")).is_ok());
        let err = dir.open_subdir(Path::new("link")).unwrap_err();
        // Linux answers ENOTDIR for O_DIRECTORY | O_NOFOLLOW on a symlink, ELOOP without.
        assert!(
            matches!(err.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)),
            "{err}"
        );
        assert!(dir.open_subdir(Path::new("../x")).is_err());
        assert!(dir.create_new(OsStr::new("a/b"), 0o644).is_err());
        // A symlink in place of a file is not opened either.
        std::os::unix::fs::symlink("/etc/hostname", root.path().join("f")).unwrap();
        assert!(dir.open_read(OsStr::new("f")).is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn remove_all_removes_a_tree_but_not_what_a_symlink_points_at() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        std::fs::create_dir_all(root.path().join("t/a/b")).unwrap();
        std::fs::write(root.path().join("t/a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("t/a/link")).unwrap();
        let dir = DirFd::open_root(root.path()).unwrap();
        dir.remove_all(OsStr::new("t")).unwrap();
        assert!(!root.path().join("t").exists());
        assert!(outside.path().join("keep").exists());
    }

    #[test]
    fn remove_all_removes_a_tree_deeper_than_any_stack_on_a_small_stack() {
        let root = tempfile::tempdir().unwrap();
        uphold_testkit::trees::deep_tree(root.path(), "t", 20_000);
        let dir = DirFd::open_root(root.path()).unwrap();
        // 64 KiB of stack: a recursive walk would overflow it within a few
        // hundred levels.
        let removed = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || dir.remove_all(OsStr::new("t")))
            .unwrap()
            .join()
            .expect("the walk must not overflow its stack");
        removed.unwrap();
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn remove_all_removes_wide_trees_and_every_kind_of_entry() {
        let root = tempfile::tempdir().unwrap();
        for i in 0..50 {
            let sub = root.path().join(format!("t/{i}/x/y"));
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(sub.join("f"), b"x").unwrap();
            std::fs::write(root.path().join(format!("t/{i}/g")), b"x").unwrap();
        }
        nix::unistd::mkfifo(&root.path().join("t/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::write(root.path().join("keep"), b"x").unwrap();
        let dir = DirFd::open_root(root.path()).unwrap();
        dir.remove_all(OsStr::new("t")).unwrap();
        assert!(!root.path().join("t").exists());
        assert!(root.path().join("keep").exists());
        // Removing what is not there is not an error; a plain file is unlinked.
        dir.remove_all(OsStr::new("t")).unwrap();
        dir.remove_all(OsStr::new("keep")).unwrap();
        assert!(!root.path().join("keep").exists());
    }
}
