//! The receiver's cache of signatures of large files it wrote. A signature is computed
//! while the file is written (no extra read) and kept with the file's identity (device,
//! inode, size, mtime and ctime — ctime cannot be set from user space, so any later change
//! to the file invalidates the entry). The next delta against that file then needs no
//! read of it for the signature: the file is read once, for the blocks the delta copies.

use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use uphold_delta::{Signature, DEFAULT_MAX_BLOCKS};

use crate::path::RelPath;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl FileIdentity {
    pub fn of(st: &nix::sys::stat::FileStat) -> Self {
        FileIdentity {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SigCache {
    dir: PathBuf,
}

impl SigCache {
    pub fn new(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(SigCache { dir })
    }

    fn file_for(&self, path: &RelPath) -> PathBuf {
        let h = blake3::hash(path.as_bytes());
        self.dir.join(&h.to_hex().as_str()[..32])
    }

    /// The cached signature of `path`, if the file is still the one it was computed for.
    pub fn get(&self, path: &RelPath, id: &FileIdentity) -> Option<Signature> {
        let bytes = std::fs::read(self.file_for(path)).ok()?;
        let (stored, rest): (FileIdentity, &[u8]) = postcard::take_from_bytes(&bytes).ok()?;
        if stored != *id {
            return None;
        }
        Signature::from_bytes(rest, DEFAULT_MAX_BLOCKS).ok()
    }

    pub fn put(&self, path: &RelPath, id: &FileIdentity, sig: &Signature) -> io::Result<()> {
        let final_path = self.file_for(path);
        let tmp = final_path.with_extension("tmp");
        let mut out = io::BufWriter::new(std::fs::File::create(&tmp)?);
        let header = postcard::to_allocvec(id).map_err(io::Error::other)?;
        out.write_all(&header)?;
        sig.write_to(&mut out)?;
        out.flush()?;
        drop(out);
        std::fs::rename(tmp, final_path)
    }

    pub fn forget(&self, path: &RelPath) {
        let _ = std::fs::remove_file(self.file_for(path));
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
