//! Streams being received: a file arriving whole or as a delta into a temporary
//! file beside its final name, with the signature of the new version built as the
//! bytes pass, committed by a rename once its hash matches.

use crate::entry::Meta;
use crate::path::RelPath;
use crate::sigcache::FileIdentity;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter, Cursor, Write};
use std::sync::Arc;
use std::time::Instant;
use uphold_config::sync::FsyncPolicy;
use uphold_core::NodeName;
use uphold_delta::{block_size_for, Applier, DeltaEnd, Signature, SignatureBuilder};
use uphold_os::confined::DirFd;

use super::files::{finish_put, open_parent};
use super::meta::file_meta;
use super::ReceiverSet;

/// Largest signature returned; a bigger one (files over ~20 GB) means a whole transfer.
const MAX_SIGNATURE_BYTES: usize = 3 * 1024 * 1024;

pub(super) enum TransferSlot {
    Idle(Box<Transfer>),
    /// Taken by a request being processed.
    Busy {
        peer: NodeName,
        /// Its set and announced size, which count against the set's budget.
        set: String,
        size: u64,
    },
}

impl TransferSlot {
    /// Bytes this stream announced, when it belongs to `set`.
    pub(super) fn reserved_in(&self, set: &str) -> u64 {
        match self {
            TransferSlot::Idle(t) if t.set.config.name.as_str() == set => t.size,
            TransferSlot::Busy { set: s, size, .. } if s == set => *size,
            _ => 0,
        }
    }
}

pub(super) struct Transfer {
    pub(super) peer: NodeName,
    pub(super) set: Arc<ReceiverSet>,
    pub(super) path: RelPath,
    pub(super) dir: DirFd,
    pub(super) temp: OsString,
    pub(super) name: OsString,
    pub(super) meta: Meta,
    pub(super) size: u64,
    pub(super) body: TransferBody,
    pub(super) last_used: Instant,
}

pub(super) enum TransferBody {
    Whole {
        out: SigWriter,
        hasher: Box<blake3::Hasher>,
        written: u64,
    },
    Delta(Box<Applier<File, SigWriter>>),
}

/// The temporary file, with a signature built from the bytes as they pass.
pub(super) struct SigWriter {
    pub(super) file: BufWriter<File>,
    pub(super) sig: Option<SignatureBuilder>,
}

impl Write for SigWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        if let Some(sig) = &mut self.sig {
            sig.update(&buf[..n]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

pub(super) fn signature(root: &DirFd, set: &ReceiverSet, path: &RelPath) -> Option<Vec<u8>> {
    let (dir, name) = open_parent(root, path).ok()?;
    let st = dir.stat(&name).ok()??;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG
        || (st.st_size as u64) < crate::protocol::DELTA_MIN
    {
        return None;
    }
    let id = FileIdentity::of(&st);
    let sig = match set.sigcache.as_ref().and_then(|c| c.get(path, &id)) {
        Some(sig) => sig,
        None => {
            let file = dir.open_read(&name).ok()?;
            let reader = io::BufReader::with_capacity(256 * 1024, file);
            let sig =
                Signature::compute_with(reader, block_size_for(id.size), rand::random()).ok()?;
            if let Some(cache) = &set.sigcache {
                // Only if the file did not change while it was read.
                if matches!(dir.stat(&name), Ok(Some(after)) if FileIdentity::of(&after) == id) {
                    let _ = cache.put(path, &id, &sig);
                }
            }
            sig
        }
    };
    let bytes = sig.to_bytes();
    (bytes.len() <= MAX_SIGNATURE_BYTES).then_some(bytes)
}

pub(super) fn chunk(t: &mut Transfer, data: &[u8]) -> Result<(), String> {
    let path = t.path.clone();
    match &mut t.body {
        TransferBody::Whole {
            out,
            hasher,
            written,
        } => {
            *written += data.len() as u64;
            if *written > t.size {
                return Err(format!(
                    "{path}: more data than the announced {} bytes",
                    t.size
                ));
            }
            hasher.update(data);
            out.write_all(data)
                .map_err(|e| format!("{path}: writing: {e}"))
        }
        TransferBody::Delta(applier) => {
            let mut cursor = Cursor::new(data);
            loop {
                match uphold_delta::wire::read_record(&mut cursor) {
                    Ok(None) => return Ok(()),
                    Ok(Some(uphold_delta::Record::Op(op))) => {
                        applier.apply_op(&op).map_err(|e| format!("{path}: {e}"))?
                    }
                    Ok(Some(uphold_delta::Record::End(_))) => {
                        return Err(format!("{path}: unexpected end record inside a chunk"))
                    }
                    Err(e) => return Err(format!("{path}: {e}")),
                }
            }
        }
    }
}

pub(super) fn commit(t: Transfer, hash: [u8; 32]) -> Result<(), String> {
    let path = t.path.clone();
    let fail = |msg: String| {
        let _ = t.dir.unlink(&t.temp);
        Err(msg)
    };
    let mut out = match t.body {
        TransferBody::Whole {
            mut out,
            hasher,
            written,
        } => {
            if written != t.size {
                return fail(format!("{path}: received {written} of {} bytes", t.size));
            }
            if *hasher.finalize().as_bytes() != hash {
                return fail(format!("{path}: content hash mismatch"));
            }
            if let Err(e) = out.flush() {
                return fail(format!("{path}: {e}"));
            }
            out
        }
        TransferBody::Delta(applier) => {
            let end = DeltaEnd { len: t.size, hash };
            match applier.finish_into(&end) {
                Ok((_, out)) => out,
                Err(e) => return fail(format!("{path}: {e}")),
            }
        }
    };
    if let Err(e) = out.flush() {
        return fail(format!("{path}: {e}"));
    }
    let sig = out.sig.take().map(SignatureBuilder::finish);
    let file = match out.file.into_inner() {
        Ok(f) => f,
        Err(e) => return fail(format!("{path}: {}", e.error())),
    };
    if t.set.config.fsync != FsyncPolicy::Off {
        if let Err(e) = file.sync_data() {
            return fail(format!("{path}: fsync: {e}"));
        }
    }
    let owner = nix::unistd::geteuid().is_root();
    let meta_set = match file_meta(&file, &t.meta, owner) {
        Ok(true) => Ok(()),
        Ok(false) => t.dir.set_mtime(&t.temp, t.meta.mtime_s, t.meta.mtime_ns),
        Err(e) => Err(e),
    };
    drop(file);
    if let Err(e) = meta_set {
        return fail(format!("{path}: {e}"));
    }
    if let Err(e) = finish_put(&t.dir, &t.temp, &t.name, t.set.config.fsync) {
        return fail(format!("{path}: {e}"));
    }
    if let Some(cache) = &t.set.sigcache {
        cache.forget(&path);
        if let (Some(sig), Ok(Some(st))) = (sig, t.dir.stat(&t.name)) {
            let _ = cache.put(&path, &FileIdentity::of(&st), &sig);
        }
    }
    Ok(())
}
