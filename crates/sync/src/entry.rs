//! What is known about one directory entry, on either side, and how two of them are
//! compared: the same rules on sender and receiver, so that a directory digest computed
//! on each side matches exactly when nothing needs sending.
//!
//! Preserved: file contents, sizes and modification times (to the nanosecond), permission
//! bits of files and directories, symlink targets, and owner and group when the receiver
//! runs as root. Not preserved: directory modification times, access times, hard links
//! (each link arrives as its own file), xattrs and ACLs, special files (devices, fifos,
//! sockets are skipped).

use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub kind: Kind,
    /// Files only; 0 otherwise.
    pub size: u64,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    /// Permission bits (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Symlinks only.
    #[serde(with = "serde_bytes")]
    pub link: Option<Vec<u8>>,
}

/// Metadata applied to a created or updated entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_s: i64,
    pub mtime_ns: u32,
}

impl Entry {
    /// From `lstat` data; `None` for kinds that are not replicated.
    pub fn from_metadata(
        name: Vec<u8>,
        md: &std::fs::Metadata,
        link: Option<Vec<u8>>,
    ) -> Option<Entry> {
        let ft = md.file_type();
        let kind = if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            return None;
        };
        Some(Entry {
            name,
            kind,
            size: if kind == Kind::File { md.size() } else { 0 },
            mtime_s: md.mtime(),
            mtime_ns: md.mtime_nsec().clamp(0, 999_999_999) as u32,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            link: if kind == Kind::Symlink { link } else { None },
        })
    }

    /// From an `fstatat` result.
    pub fn from_stat(
        name: Vec<u8>,
        st: &nix::sys::stat::FileStat,
        link: Option<Vec<u8>>,
    ) -> Option<Entry> {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            _ => return None,
        };
        Some(Entry {
            name,
            kind,
            size: if kind == Kind::File {
                st.st_size as u64
            } else {
                0
            },
            mtime_s: st.st_mtime,
            mtime_ns: st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            link: if kind == Kind::Symlink { link } else { None },
        })
    }

    pub fn meta(&self) -> Meta {
        Meta {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime_s: self.mtime_s,
            mtime_ns: self.mtime_ns,
        }
    }

    /// Same data: what would have to be transferred. Files by size and mtime (rsync's
    /// quick check), symlinks by target, directories always.
    pub fn same_content(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && match self.kind {
                Kind::File => {
                    self.size == other.size
                        && self.mtime_s == other.mtime_s
                        && self.mtime_ns == other.mtime_ns
                }
                Kind::Symlink => self.link == other.link,
                Kind::Dir => true,
            }
    }

    /// Same attributes that are set without transferring data.
    pub fn same_meta(&self, other: &Entry, with_owner: bool) -> bool {
        let owner = !with_owner || (self.uid == other.uid && self.gid == other.gid);
        let mode = self.kind == Kind::Symlink || self.mode == other.mode;
        owner && mode
    }
}

/// Owner and group as a set writes them on its targets: as sent when it
/// preserves privileged attributes, else through its `owners` and `groups`
/// lists (an id not kept becomes root's).
pub fn kept_owner(
    ownership: &uphold_config::owners::Ownership,
    preserve_privileged: bool,
    uid: u32,
    gid: u32,
) -> (u32, u32) {
    if preserve_privileged {
        (uid, gid)
    } else {
        (ownership.uid(uid), ownership.gid(gid))
    }
}

/// `mode` with setuid and setgid cleared: how a set that does not preserve
/// privileged bits sends and writes it.
pub fn without_privileged_bits(mode: u32) -> u32 {
    mode & !0o6000
}

/// Digest of a sorted listing under the comparison rules above: equal digests mean the
/// directory needs nothing. Truncated blake3; 128 bits leave no practical collision.
pub fn listing_digest(entries: &[Entry], with_owner: bool) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    for e in entries {
        h.update(&(e.name.len() as u32).to_le_bytes());
        h.update(&e.name);
        let kind = match e.kind {
            Kind::File => 1u8,
            Kind::Dir => 2,
            Kind::Symlink => 3,
        };
        h.update(&[kind]);
        match e.kind {
            Kind::File => {
                h.update(&e.size.to_le_bytes());
                h.update(&e.mtime_s.to_le_bytes());
                h.update(&e.mtime_ns.to_le_bytes());
                h.update(&e.mode.to_le_bytes());
            }
            Kind::Dir => {
                h.update(&e.mode.to_le_bytes());
            }
            Kind::Symlink => {
                let link = e.link.as_deref().unwrap_or_default();
                h.update(&(link.len() as u32).to_le_bytes());
                h.update(link);
            }
        }
        if with_owner {
            h.update(&e.uid.to_le_bytes());
            h.update(&e.gid.to_le_bytes());
        }
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}
