//! The delta encoder: streams the source (new version) past a window of one block,
//! matches windows against the basis signature and emits `Copy`/`Literal` ops.
//!
//! Memory is bounded by one block, at most [`MAX_LITERAL`] bytes of pending literal
//! data and one read chunk, whatever the file size; the source is read exactly once
//! and hashed with blake3 on the way so the receiver can verify the rebuilt file.

use std::collections::HashMap;
use std::io::{self, Read};

use crate::rolling::Rolling;
use crate::signature::{strong_hash, Signature, STRONG_LEN};
use crate::stats::DeltaStats;

/// Largest literal op, in bytes (also enforced by the wire decoder and the applier).
pub const MAX_LITERAL: usize = 64 * 1024;
/// How much of the source one `read` call asks for.
const READ_CHUNK: usize = 64 * 1024;
/// Candidates with the same weak checksum verified per offset. Distinct blocks sharing
/// a 32-bit weak sum are rare; the cap keeps a pathological basis from making every
/// offset cost a long chain walk.
const MAX_CHAIN: usize = 64;
const NO_BLOCK: usize = usize::MAX;

/// One instruction for rebuilding the source from the basis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Copy `count` consecutive basis blocks starting at `block_index`.
    Copy { block_index: u64, count: u64 },
    /// Bytes to write verbatim, at most [`MAX_LITERAL`] of them.
    Literal(Vec<u8>),
}

/// What the receiver needs to check the rebuilt file: the source's length and hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaEnd {
    pub len: u64,
    pub hash: [u8; 32],
}

/// The outcome of encoding one source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaSummary {
    pub source_len: u64,
    /// blake3 of the whole source; the receiver checks the rebuilt file against it.
    pub source_hash: [u8; 32],
    pub stats: DeltaStats,
}

impl DeltaSummary {
    /// The trailer to send after the last op.
    pub fn end(&self) -> DeltaEnd {
        DeltaEnd {
            len: self.source_len,
            hash: self.source_hash,
        }
    }
}

/// Matches sources against one signature; build once, encode any number of sources.
pub struct DeltaEncoder<'s> {
    sig: &'s Signature,
    /// Weak checksum to the lowest full block index carrying it.
    heads: HashMap<u32, usize>,
    /// Next full block with the same weak checksum, or `NO_BLOCK`.
    next: Vec<usize>,
    full_blocks: usize,
    /// The short last block, matched only at the very end of the source.
    tail: Option<usize>,
}

impl std::fmt::Debug for DeltaEncoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaEncoder")
            .field("block_size", &self.sig.block_size())
            .field("full_blocks", &self.full_blocks)
            .finish()
    }
}

struct Emitter<F> {
    sink: F,
    pending_copy: Option<(u64, u64)>,
    stats: DeltaStats,
}

impl<F: FnMut(Op) -> io::Result<()>> Emitter<F> {
    fn flush_copy(&mut self) -> io::Result<()> {
        if let Some((block_index, count)) = self.pending_copy.take() {
            self.stats.copy_ops += 1;
            (self.sink)(Op::Copy { block_index, count })?;
        }
        Ok(())
    }

    fn copy(&mut self, block: u64, len: u64) -> io::Result<()> {
        self.stats.copied_bytes += len;
        match &mut self.pending_copy {
            Some((start, count)) if *start + *count == block => *count += 1,
            _ => {
                self.flush_copy()?;
                self.pending_copy = Some((block, 1));
            }
        }
        Ok(())
    }

    fn literal(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.flush_copy()?;
        for chunk in data.chunks(MAX_LITERAL) {
            self.stats.literal_bytes += chunk.len() as u64;
            self.stats.literal_ops += 1;
            (self.sink)(Op::Literal(chunk.to_vec()))?;
        }
        Ok(())
    }
}

impl<'s> DeltaEncoder<'s> {
    pub fn new(sig: &'s Signature) -> Self {
        let bs = u64::from(sig.block_size());
        let full_blocks = (sig.basis_len() / bs) as usize;
        let tail = (sig.blocks().len() > full_blocks).then_some(full_blocks);
        let mut heads = HashMap::with_capacity(full_blocks);
        let mut next = vec![NO_BLOCK; full_blocks];
        // Inserting from the back leaves every chain in ascending block order.
        for i in (0..full_blocks).rev() {
            if let Some(prev) = heads.insert(sig.blocks()[i].weak, i) {
                next[i] = prev;
            }
        }
        DeltaEncoder {
            sig,
            heads,
            next,
            full_blocks,
            tail,
        }
    }

    /// Finds a full basis block equal to `window`, trying `preferred` first so runs of
    /// identical blocks (zeros, say) still merge into one `Copy`.
    fn find(&self, weak: u32, window: &[u8], preferred: Option<usize>) -> Option<usize> {
        let mut candidate = *self.heads.get(&weak)?;
        let blocks = self.sig.blocks();
        let mut strong: Option<[u8; STRONG_LEN]> = None;
        let mut matches = |i: usize| {
            if blocks[i].weak != weak {
                return false;
            }
            let s = *strong.get_or_insert_with(|| strong_hash(window));
            blocks[i].strong == s
        };
        if let Some(p) = preferred.filter(|&p| p < self.full_blocks) {
            if matches(p) {
                return Some(p);
            }
        }
        for _ in 0..MAX_CHAIN {
            if matches(candidate) {
                return Some(candidate);
            }
            candidate = self.next[candidate];
            if candidate == NO_BLOCK {
                break;
            }
        }
        None
    }

    /// Reads `source` to its end once, passing ops in order to `sink`. Errors from the
    /// source or the sink abort the encoding and are returned as they are.
    pub fn encode<R, F>(&self, mut source: R, sink: F) -> io::Result<DeltaSummary>
    where
        R: Read,
        F: FnMut(Op) -> io::Result<()>,
    {
        let bs = self.sig.block_size() as usize;
        let seed = self.sig.seed();
        let mut out = Emitter {
            sink,
            pending_copy: None,
            stats: DeltaStats::default(),
        };
        let mut hasher = blake3::Hasher::new();
        let mut source_len = 0u64;
        // Holds [pending literal][window][read-ahead]; never grows past this capacity.
        let cap = MAX_LITERAL + bs + READ_CHUNK;
        let mut buf: Vec<u8> = Vec::with_capacity(cap);
        let mut lit_start = 0usize;
        let mut pos = 0usize;
        let mut eof = false;
        let mut rolling = Rolling::new(seed, bs);
        // Byte that left the window on the last slide; None means rehash the window.
        let mut pending_out: Option<u8> = None;
        let mut preferred: Option<usize> = None;

        loop {
            if buf.len() < pos + bs && !eof {
                buf.drain(..lit_start);
                pos -= lit_start;
                lit_start = 0;
                while buf.len() < pos + bs && !eof {
                    let old = buf.len();
                    let want = READ_CHUNK.min(cap - old);
                    buf.resize(old + want, 0);
                    let n = loop {
                        match source.read(&mut buf[old..]) {
                            Ok(n) => break n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                buf.truncate(old);
                                return Err(e);
                            }
                        }
                    };
                    buf.truncate(old + n);
                    hasher.update(&buf[old..]);
                    source_len += n as u64;
                    eof = n == 0;
                }
                out.stats.max_buffered = out.stats.max_buffered.max(buf.len());
            }
            if buf.len() < pos + bs {
                break;
            }
            let window = &buf[pos..pos + bs];
            match pending_out.take() {
                Some(old) => rolling.roll(old, window[bs - 1]),
                None => rolling.reset(window),
            }
            if let Some(block) = self.find(rolling.weak(), window, preferred) {
                out.literal(&buf[lit_start..pos])?;
                out.copy(block as u64, bs as u64)?;
                preferred = Some(block + 1);
                pos += bs;
                lit_start = pos;
                continue;
            }
            pending_out = Some(buf[pos]);
            pos += 1;
            if pos - lit_start >= MAX_LITERAL {
                out.literal(&buf[lit_start..pos])?;
                lit_start = pos;
            }
        }

        // Fewer than one block left: it can only match the basis's short last block.
        let rest = &buf[pos..];
        let tail_match = self.tail.filter(|&t| {
            let b = &self.sig.blocks()[t];
            self.sig.block_len(t as u64) == Some(rest.len() as u64)
                && Rolling::weak_of(seed, rest) == b.weak
                && strong_hash(rest) == b.strong
        });
        match tail_match {
            Some(t) => {
                out.literal(&buf[lit_start..pos])?;
                out.copy(t as u64, rest.len() as u64)?;
            }
            None => out.literal(&buf[lit_start..])?,
        }
        out.flush_copy()?;
        Ok(DeltaSummary {
            source_len,
            source_hash: *hasher.finalize().as_bytes(),
            stats: out.stats,
        })
    }

    /// Encodes into a vector of ops; convenient for small inputs and tests.
    pub fn encode_to_vec(&self, source: impl Read) -> io::Result<(Vec<Op>, DeltaSummary)> {
        let mut ops = Vec::new();
        let summary = self.encode(source, |op| {
            ops.push(op);
            Ok(())
        })?;
        Ok((ops, summary))
    }
}
