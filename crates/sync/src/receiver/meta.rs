//! Owner, mode and times of received entries: which `fchown`/`fchmod` calls a
//! new file needs, given who the receiver runs as and its umask.

use crate::entry::{Kind, Meta};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self};
use std::time::Duration;
use uphold_os::confined::DirFd;

/// What a peer may set: setuid and setgid only where the set preserves them, so
/// a member that sends a set cannot plant a setuid-root program on the others,
/// and only the owners and groups the set keeps, so it cannot hand files to
/// any local account.
pub(super) fn restrict(meta: &mut Meta, set: &uphold_config::sync::SyncConfig) {
    if !set.preserve_privileged {
        meta.mode = crate::entry::without_privileged_bits(meta.mode);
    }
    (meta.uid, meta.gid) =
        crate::entry::kept_owner(&set.ownership, set.preserve_privileged, meta.uid, meta.gid);
}

pub(super) fn apply_meta(
    dir: &DirFd,
    name: &OsStr,
    kind: Kind,
    meta: &Meta,
    owner: bool,
) -> io::Result<()> {
    if owner {
        dir.chown(name, meta.uid, meta.gid)?;
    }
    if kind != Kind::Symlink {
        dir.chmod(name, meta.mode)?;
    }
    if kind == Kind::File {
        dir.set_mtime(name, meta.mtime_s, meta.mtime_ns)?;
    }
    Ok(())
}

/// The identity new files get, and the umask that trims their mode at creation.
#[derive(Debug, Clone, Copy)]
pub(super) struct Creds {
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// `None` when it cannot be read: then every file gets an explicit chmod.
    pub(super) umask: Option<u32>,
}

/// Which attribute calls a new file needs after `open(O_CREAT, mode & 0777)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MetaPlan {
    pub(super) chown: bool,
    pub(super) chmod: bool,
}

impl Creds {
    pub(super) fn current() -> Self {
        // Read, not set-and-restore: umask(2) is process-wide and other threads create
        // files too.
        let umask = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            });
        Creds {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            umask,
        }
    }

    pub(super) fn plan(&self, meta: &Meta, preserves_owner: bool, dir: &DirFd) -> MetaPlan {
        // In a set-group-ID directory new files take the directory's group.
        let dir_setgid = dir
            .stat_self()
            .map_or(true, |st| st.st_mode & libc::S_ISGID != 0);
        meta_plan(meta, preserves_owner, self, dir_setgid)
    }
}

pub(super) fn meta_plan(
    meta: &Meta,
    preserves_owner: bool,
    creds: &Creds,
    dir_setgid: bool,
) -> MetaPlan {
    let chown = preserves_owner && (meta.uid != creds.uid || meta.gid != creds.gid || dir_setgid);
    let special = meta.mode & 0o7000 != 0;
    let chmod = match creds.umask {
        None => true,
        Some(umask) => special || (meta.mode & 0o777 & !umask) != (meta.mode & 0o777),
    };
    MetaPlan { chown, chmod }
}

/// Owner, permissions and mtime of a file still open for writing: through its
/// descriptor, without looking its name up again. Returns false when the mtime (before
/// 1970) is left for the caller to set by name.
pub(super) fn file_meta(f: &File, meta: &Meta, owner: bool) -> io::Result<bool> {
    file_meta_planned(
        f,
        meta,
        MetaPlan {
            chown: owner,
            chmod: true,
        },
    )
}

pub(super) fn file_meta_planned(f: &File, meta: &Meta, plan: MetaPlan) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    if plan.chown {
        std::os::unix::fs::fchown(f, Some(meta.uid), Some(meta.gid))?;
    }
    if plan.chmod {
        f.set_permissions(std::fs::Permissions::from_mode(meta.mode & 0o7777))?;
    }
    let mtime = std::time::UNIX_EPOCH
        .checked_add(Duration::new(meta.mtime_s.max(0) as u64, meta.mtime_ns))
        .filter(|_| meta.mtime_s >= 0);
    match mtime {
        Some(t) => {
            f.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))?;
            Ok(true)
        }
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mode: u32, uid: u32, gid: u32) -> Meta {
        Meta {
            mode,
            uid,
            gid,
            mtime_s: 1,
            mtime_ns: 0,
        }
    }

    #[test]
    fn attribute_calls_are_skipped_only_when_creation_already_got_them_right() {
        let creds = Creds {
            uid: 0,
            gid: 0,
            umask: Some(0o022),
        };
        let plan = |m: &Meta, owner, setgid| meta_plan(m, owner, &creds, setgid);
        assert_eq!(
            plan(&meta(0o644, 0, 0), true, false),
            MetaPlan {
                chown: false,
                chmod: false
            }
        );
        assert_eq!(
            plan(&meta(0o664, 0, 0), true, false),
            MetaPlan {
                chown: false,
                chmod: true
            }
        );
        assert_eq!(
            plan(&meta(0o644, 33, 33), true, false),
            MetaPlan {
                chown: true,
                chmod: false
            }
        );
        assert_eq!(
            plan(&meta(0o644, 0, 0), true, true),
            MetaPlan {
                chown: true,
                chmod: false
            }
        );
        assert_eq!(
            plan(&meta(0o4755, 0, 0), true, false),
            MetaPlan {
                chown: false,
                chmod: true
            }
        );
        assert_eq!(
            plan(&meta(0o644, 33, 33), false, false),
            MetaPlan {
                chown: false,
                chmod: false
            }
        );
        let unknown = Creds {
            umask: None,
            ..creds
        };
        assert!(meta_plan(&meta(0o644, 0, 0), true, &unknown, false).chmod);
    }
}
