//! The messages between a sending and a receiving member. They ride the members' mutual-TLS
//! RPC connection (service [`SYNC_SERVICE`]), postcard-encoded, each request and response
//! within the transport's frame limit. Every field is checked by the receiver before use.

use crate::entry::{Entry, Kind, Meta};
use crate::path::RelPath;
use serde::{Deserialize, Serialize};

/// RPC service number of file sync (the cluster uses 1-4).
pub const SYNC_SERVICE: u16 = 20;
/// Bumped on incompatible changes; sender and receiver must agree.
pub const SYNC_PROTOCOL: u16 = 1;
/// Target size of one request's payload; stays well under the 4 MiB frame limit.
pub const BODY_BUDGET: usize = 1024 * 1024;
/// Files up to this size travel inside an `Apply` request.
pub const INLINE_MAX: u64 = 256 * 1024;
/// Changed files at least this large, with a basis on the target, travel as a delta.
pub const DELTA_MIN: u64 = 64 * 1024;
/// Directories or names per `Compare` request.
pub const COMPARE_BATCH: usize = 512;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    Hello {
        set: String,
        protocol: u16,
    },
    Compare {
        set: String,
        with_owner: bool,
        items: Vec<CompareItem>,
    },
    Apply {
        set: String,
        ops: Vec<FileOp>,
    },
    Signature {
        set: String,
        path: RelPath,
    },
    /// Starts streaming one large file; the receiver answers with a transfer id.
    Begin {
        set: String,
        path: RelPath,
        meta: Meta,
        size: u64,
        /// Present when the chunks are delta records against the current target file
        /// with this geometry (from an earlier `Signature`).
        delta: Option<DeltaBasis>,
    },
    Chunk {
        id: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Commit {
        id: u64,
        hash: [u8; 32],
    },
    Abort {
        id: u64,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct DeltaBasis {
    pub block_size: u32,
    pub basis_len: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CompareItem {
    /// Compare a whole directory listing by digest.
    Dir { dir: RelPath, digest: [u8; 16] },
    /// Only these names of one directory.
    Names {
        dir: RelPath,
        names: Vec<serde_bytes::ByteBuf>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CompareResult {
    Same,
    /// The directory does not exist on the target (or is not a directory).
    Missing,
    /// The full listing, sorted by name.
    Listing(Vec<Entry>),
    /// One per requested name, in order.
    Entries(Vec<Option<Entry>>),
}

/// One change on the target. Applied in order; each reports its own result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FileOp {
    Mkdir {
        path: RelPath,
        meta: Meta,
    },
    /// A whole file; written to a temporary file and renamed over `path`.
    Put {
        path: RelPath,
        meta: Meta,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Symlink {
        path: RelPath,
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
        meta: Meta,
    },
    SetMeta {
        path: RelPath,
        kind: Kind,
        meta: Meta,
    },
    /// Moves `from` to `to` when `from` still is what the sender expects (same kind and,
    /// for files, size and mtime); otherwise does nothing and says so.
    Rename {
        from: RelPath,
        to: RelPath,
        expect: Entry,
    },
    /// Removes `path` with everything below it.
    Delete {
        path: RelPath,
    },
}

impl FileOp {
    /// Rough payload size, for filling requests up to [`BODY_BUDGET`].
    pub fn weight(&self) -> usize {
        64 + match self {
            FileOp::Put { path, data, .. } => path.as_bytes().len() + data.len(),
            FileOp::Symlink { path, target, .. } => path.as_bytes().len() + target.len(),
            FileOp::Rename { from, to, .. } => from.as_bytes().len() + to.as_bytes().len(),
            FileOp::Mkdir { path, .. } | FileOp::SetMeta { path, .. } | FileOp::Delete { path } => {
                path.as_bytes().len()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Done,
    /// A rename whose source was not as expected; the sender falls back to a transfer.
    Skipped,
    Failed(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Hello {
        preserves_owner: bool,
    },
    Compare(Vec<CompareResult>),
    Apply(Vec<OpResult>),
    /// The encoded signature of the target file, or `None` when there is no usable basis.
    Signature(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    Begun {
        id: u64,
    },
    Done,
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(value).map_err(|e| format!("encoding sync message: {e}"))
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("malformed sync message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// A peer's bytes, whatever they are, decode to a message or to an error:
        /// never a panic, never an allocation the input does not pay for.
        #[test]
        fn random_bytes_never_panic_the_message_decoders(
            data in proptest::collection::vec(any::<u8>(), 0..1024),
        ) {
            let _ = decode::<Request>(&data);
            let _ = decode::<Response>(&data);
        }

        /// Valid messages with one byte changed decode or fail cleanly too.
        #[test]
        fn a_changed_byte_in_a_valid_request_never_panics(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let request = Request::Begin {
                set: "www".into(),
                path: RelPath::new(b"a/b".to_vec()).unwrap(),
                meta: Meta { mode: 0o644, uid: 1, gid: 2, mtime_s: 3, mtime_ns: 4 },
                size: 100,
                delta: Some(DeltaBasis { block_size: 4096, basis_len: 8192 }),
            };
            let mut bytes = encode(&request).unwrap();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let _ = decode::<Request>(&bytes);
        }
    }
}
