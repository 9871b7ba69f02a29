//! The real [`Kernel`] behind the engine: one inotify instance, its watches, and
//! directory listings that read only `readdir` (`d_type`), so a walk costs one
//! `getdents` pass per directory and no `stat` per file.

use super::engine::{AddError, Kernel, RawEvent, WATCH_MASK};
use inotify::{Inotify, WatchMask};
use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub(crate) struct InotifyKernel {
    inotify: Inotify,
}

impl InotifyKernel {
    pub(crate) fn new() -> io::Result<InotifyKernel> {
        // The crate opens the fd with IN_NONBLOCK | IN_CLOEXEC.
        Ok(InotifyKernel {
            inotify: Inotify::init()?,
        })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Reads what is queued (non-blocking) into `buf`; None when nothing was.
    pub(crate) fn read_events<'a>(
        &mut self,
        buf: &'a mut [u8],
    ) -> io::Result<Option<Vec<RawEvent<'a>>>> {
        let events = match self.inotify.read_events(buf) {
            Ok(events) => events,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Some(Vec::new())),
            Err(e) => return Err(e),
        };
        Ok(Some(
            events
                .map(|e| RawEvent {
                    wd: e.wd.get_watch_descriptor_id(),
                    mask: e.mask.bits(),
                    cookie: e.cookie,
                    name: e.name,
                })
                .collect(),
        ))
    }
}

impl Kernel for InotifyKernel {
    fn add_watch(&mut self, abs: &Path, is_root: bool) -> Result<i32, AddError> {
        let mut mask = WatchMask::from_bits_retain(WATCH_MASK);
        if !is_root {
            // Below the root a symlink is replicated as a link, never followed.
            // The root itself may be reached through one (/var/www -> /srv/www).
            mask |= WatchMask::DONT_FOLLOW;
        }
        match self.inotify.watches().add(abs, mask) {
            Ok(wd) => Ok(wd.get_watch_descriptor_id()),
            Err(e) => Err(match e.raw_os_error() {
                Some(libc::ENOSPC) => AddError::Limit,
                Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => AddError::Gone,
                _ => AddError::Other(e),
            }),
        }
    }

    fn rm_watch(&mut self, wd: i32) {
        // SAFETY: inotify_rm_watch takes two integers and touches no memory of ours;
        // the fd is our live inotify instance (borrowed from `self.inotify`). A
        // descriptor the kernel already dropped only yields EINVAL, which is fine.
        let _ = unsafe { libc::inotify_rm_watch(self.inotify.as_raw_fd(), wd) };
    }

    fn subdirs(&mut self, abs: &Path) -> io::Result<Vec<OsString>> {
        list_subdirs(abs)
    }

    fn max_user_watches(&self) -> Option<u64> {
        std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

/// Names of the real subdirectories of `abs` (not symlinks to directories).
pub(crate) fn list_subdirs(abs: &Path) -> io::Result<Vec<OsString>> {
    let mut dir = Dir::open(
        abs,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let dirfd = dir.as_raw_fd();
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            Some(t) => t == Type::Directory,
            // The filesystem did not fill d_type.
            None => match nix::sys::stat::fstatat(
                Some(dirfd),
                entry.file_name(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => {
                    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
                }
                Err(_) => false,
            },
        };
        if is_dir {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    Ok(names)
}
