//! Rebuilding the source from the basis and a stream of ops, checking every op against
//! the basis geometry and the result against the sender's whole-file hash.

use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::delta::{DeltaEnd, Op, MAX_LITERAL};
use crate::signature::{read_full, Signature, MAX_BLOCK_SIZE, MIN_EXPLICIT_BLOCK_SIZE};
use crate::stats::DeltaStats;

const COPY_CHUNK: usize = 64 * 1024;

/// Why a delta could not be applied. Nothing is wrong with the output only if
/// [`Applier::finish`] returns `Ok`.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("apply: block size {0} is invalid")]
    BadBlockSize(u32),
    #[error("apply: op {op}: copy of {count} blocks from block {block_index}, basis has {blocks} blocks")]
    BlockOutOfRange {
        op: u64,
        block_index: u64,
        count: u64,
        blocks: u64,
    },
    #[error("apply: op {op}: literal of {len} bytes exceeds the {MAX_LITERAL}-byte limit")]
    LiteralTooLarge { op: u64, len: usize },
    #[error("apply: op {op}: basis ended at byte {at}, signature said {basis_len} bytes (basis changed?)")]
    BasisShort { op: u64, at: u64, basis_len: u64 },
    #[error("apply: reading basis: {0}")]
    Basis(#[source] io::Error),
    #[error("apply: writing output: {0}")]
    Output(#[source] io::Error),
    #[error("apply: op {op}: would write past the announced length of {limit} bytes")]
    PastLength { op: u64, limit: u64 },
    #[error("apply: rebuilt {actual} bytes, sender had {expected}")]
    LengthMismatch { expected: u64, actual: u64 },
    #[error("apply: rebuilt file hash {actual} differs from sender's {expected}")]
    HashMismatch { expected: String, actual: String },
}

/// The verified result of applying a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplySummary {
    pub len: u64,
    pub hash: [u8; 32],
    /// Literal/copied byte counts; `max_buffered` is zero here.
    pub stats: DeltaStats,
}

/// Applies ops one at a time, for callers that decode them from a stream.
pub struct Applier<B, W> {
    basis: B,
    out: W,
    block_size: u64,
    basis_len: u64,
    blocks: u64,
    /// Where the basis reader stands, so sequential copies skip the seek.
    basis_pos: Option<u64>,
    hasher: blake3::Hasher,
    written: u64,
    /// No op may take the output past this many bytes.
    length_limit: u64,
    ops: u64,
    buf: Vec<u8>,
    stats: DeltaStats,
}

impl<B, W> std::fmt::Debug for Applier<B, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("block_size", &self.block_size)
            .field("basis_len", &self.basis_len)
            .field("written", &self.written)
            .finish()
    }
}

fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

impl<B: Read + Seek, W: Write> Applier<B, W> {
    /// An applier for a basis of `basis_len` bytes cut into `block_size` blocks (the
    /// geometry of the signature the sender encoded against).
    pub fn new(basis: B, block_size: u32, basis_len: u64, out: W) -> Result<Self, ApplyError> {
        if !(MIN_EXPLICIT_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(ApplyError::BadBlockSize(block_size));
        }
        let block_size = u64::from(block_size);
        Ok(Applier {
            basis,
            out,
            block_size,
            basis_len,
            blocks: basis_len.div_ceil(block_size),
            basis_pos: None,
            hasher: blake3::Hasher::new(),
            written: 0,
            length_limit: u64::MAX,
            ops: 0,
            buf: Vec::new(),
            stats: DeltaStats::default(),
        })
    }

    /// Refuses, before writing, any op that would take the output past `limit`
    /// bytes: the length the sender announced. Without it, copies of basis blocks
    /// could grow the output far beyond the file being rebuilt (a disk fill).
    pub fn with_length_limit(mut self, limit: u64) -> Self {
        self.length_limit = limit;
        self
    }

    fn check_length(&self, op: u64, adding: u64) -> Result<(), ApplyError> {
        match self.written.checked_add(adding) {
            Some(total) if total <= self.length_limit => Ok(()),
            _ => Err(ApplyError::PastLength {
                op,
                limit: self.length_limit,
            }),
        }
    }

    /// An applier using the geometry of `sig`.
    pub fn for_signature(basis: B, sig: &Signature, out: W) -> Result<Self, ApplyError> {
        Self::new(basis, sig.block_size(), sig.basis_len(), out)
    }

    fn emit(&mut self, len: usize) -> Result<(), ApplyError> {
        let data = &self.buf[..len];
        self.out.write_all(data).map_err(ApplyError::Output)?;
        self.hasher.update(data);
        self.written += len as u64;
        Ok(())
    }

    /// Applies one op, writing its bytes to the output.
    pub fn apply_op(&mut self, op: &Op) -> Result<(), ApplyError> {
        let n = self.ops;
        self.ops += 1;
        match op {
            Op::Literal(data) => {
                if data.len() > MAX_LITERAL {
                    return Err(ApplyError::LiteralTooLarge {
                        op: n,
                        len: data.len(),
                    });
                }
                self.check_length(n, data.len() as u64)?;
                self.out.write_all(data).map_err(ApplyError::Output)?;
                self.hasher.update(data);
                self.written += data.len() as u64;
                self.stats.literal_bytes += data.len() as u64;
                self.stats.literal_ops += 1;
            }
            &Op::Copy { block_index, count } => {
                let out_of_range = ApplyError::BlockOutOfRange {
                    op: n,
                    block_index,
                    count,
                    blocks: self.blocks,
                };
                match block_index.checked_add(count) {
                    Some(end) if count > 0 && end <= self.blocks => {}
                    _ => return Err(out_of_range),
                }
                // In range, so these cannot overflow: block_index + count <= blocks.
                let start = block_index * self.block_size;
                let end = ((block_index + count) * self.block_size).min(self.basis_len);
                self.check_length(n, end.saturating_sub(start))?;
                if self.basis_pos != Some(start) {
                    self.basis_pos = None;
                    self.basis
                        .seek(SeekFrom::Start(start))
                        .map_err(ApplyError::Basis)?;
                }
                if self.buf.len() < COPY_CHUNK {
                    self.buf.resize(COPY_CHUNK, 0);
                }
                let mut at = start;
                while at < end {
                    let want = ((end - at) as usize).min(COPY_CHUNK);
                    let got = read_full(&mut self.basis, &mut self.buf[..want])
                        .map_err(ApplyError::Basis)?;
                    if got < want {
                        return Err(ApplyError::BasisShort {
                            op: n,
                            at: at + got as u64,
                            basis_len: self.basis_len,
                        });
                    }
                    self.emit(got)?;
                    at += got as u64;
                }
                self.basis_pos = Some(end);
                self.stats.copied_bytes += end - start;
                self.stats.copy_ops += 1;
            }
        }
        Ok(())
    }

    /// Flushes the output and checks length and hash against the sender's.
    pub fn finish(self, expected: &DeltaEnd) -> Result<ApplySummary, ApplyError> {
        self.finish_into(expected).map(|(summary, _)| summary)
    }

    /// Like [`Applier::finish`], handing back the output (e.g. a file still to be
    /// renamed into place).
    pub fn finish_into(mut self, expected: &DeltaEnd) -> Result<(ApplySummary, W), ApplyError> {
        self.out.flush().map_err(ApplyError::Output)?;
        if self.written != expected.len {
            return Err(ApplyError::LengthMismatch {
                expected: expected.len,
                actual: self.written,
            });
        }
        let hash = *self.hasher.finalize().as_bytes();
        if hash != expected.hash {
            return Err(ApplyError::HashMismatch {
                expected: hex(&expected.hash),
                actual: hex(&hash),
            });
        }
        Ok((
            ApplySummary {
                len: self.written,
                hash,
                stats: self.stats,
            },
            self.out,
        ))
    }
}

/// Rebuilds the source from `basis` (the file `sig` was computed from) and `ops`,
/// streaming into `out`, and verifies it against `expected`.
pub fn apply<B, W, I>(
    basis: B,
    sig: &Signature,
    ops: I,
    out: W,
    expected: &DeltaEnd,
) -> Result<ApplySummary, ApplyError>
where
    B: Read + Seek,
    W: Write,
    I: IntoIterator,
    I::Item: std::borrow::Borrow<Op>,
{
    let mut applier = Applier::for_signature(basis, sig, out)?.with_length_limit(expected.len);
    for op in ops {
        applier.apply_op(std::borrow::Borrow::borrow(&op))?;
    }
    applier.finish(expected)
}
