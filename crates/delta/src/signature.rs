//! The signature of a basis file: per-block weak and strong checksums, computed in one
//! streaming pass, plus its compact binary form (it travels from receiver to sender).
//!
//! Strong hash: blake3 truncated to [`STRONG_LEN`] = 16 bytes. A false block match needs
//! both a weak and a strong collision and would corrupt the rebuilt file until the
//! whole-file hash catches it, forcing a full resend. 128 bits keeps even a deliberate
//! collision (file content can be chosen by a web user uploading into a mirrored tree)
//! at ~2^64 work; 8 bytes would be a 2^32 birthday search, cheap enough to make one
//! file never sync by delta. Going from 8 to 16 bytes costs 8 bytes per block, which
//! [`block_size_for`] already accounts for.

use std::io::{self, Read, Write};

use crate::rolling::Rolling;

/// Bytes of truncated blake3 kept per block.
pub const STRONG_LEN: usize = 16;
/// Smallest block size [`block_size_for`] picks.
pub const MIN_BLOCK_SIZE: u32 = 1024;
/// Largest block size, chosen or accepted from the network.
pub const MAX_BLOCK_SIZE: u32 = 128 * 1024;
/// Smallest block size accepted from [`Signature::compute_with`] or the network; tiny
/// blocks only make sense in tests, but they are not unsafe.
pub const MIN_EXPLICIT_BLOCK_SIZE: u32 = 8;
/// Default cap on blocks when decoding a signature from the network (80 MiB of
/// signature, a 512 GiB basis at the largest block size).
pub const DEFAULT_MAX_BLOCKS: u64 = 1 << 22;

const MAGIC: &[u8; 4] = b"UPDS";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 1 + 4 + 8 + 8;
const ENTRY_LEN: usize = 4 + STRONG_LEN;

/// Block size for a basis of `len` bytes: `3 * sqrt(len)` rounded up to a multiple of
/// 1 KiB, clamped to [`MIN_BLOCK_SIZE`]..=[`MAX_BLOCK_SIZE`].
///
/// Why `3 * sqrt(len)`: a small change costs about `20 * len / B` bytes of signature
/// (20 bytes per block) plus up to `2 * B` of literal data (a change straddling a block
/// boundary spoils two blocks). That sum is smallest at `B = sqrt(10 * len)` ≈
/// `3.16 * sqrt(len)`, giving ~`12.7 * sqrt(len)` bytes in the worst case: about
/// 287 KiB for 512 MiB, 96 KiB for 64 MiB. rsync's plain `sqrt(len)` would send a
/// signature three times larger (450 KiB for 512 MiB with 16-byte strong hashes).
pub fn block_size_for(len: u64) -> u32 {
    let root = (len as f64).sqrt() * 3.0;
    let rounded = ((root / 1024.0).ceil() as u64).saturating_mul(1024);
    rounded.clamp(u64::from(MIN_BLOCK_SIZE), u64::from(MAX_BLOCK_SIZE)) as u32
}

/// Checksums of one basis block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSig {
    pub weak: u32,
    pub strong: [u8; STRONG_LEN],
}

/// The signature of a basis file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    seed: u64,
    block_size: u32,
    basis_len: u64,
    blocks: Vec<BlockSig>,
}

/// Why a signature from the network was rejected.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("signature: bad magic {found:02x?}, expected {MAGIC:02x?}")]
    BadMagic { found: [u8; 4] },
    #[error("signature: unsupported version {0} (this build speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("signature: strong hash length {0} is not {STRONG_LEN}")]
    BadStrongLen(u8),
    #[error("signature: block size {0} outside {MIN_EXPLICIT_BLOCK_SIZE}..={MAX_BLOCK_SIZE}")]
    BadBlockSize(u32),
    #[error("signature: basis of {basis_len} bytes needs {blocks} blocks, limit is {max}")]
    TooManyBlocks {
        basis_len: u64,
        blocks: u64,
        max: u64,
    },
    #[error("signature: truncated at byte {at} (needs {needed} bytes)")]
    Truncated { at: u64, needed: u64 },
    #[error("signature: {extra} trailing bytes after the last block")]
    TrailingBytes { extra: usize },
    #[error("signature: reading: {0}")]
    Io(#[from] io::Error),
}

/// Reads until `buf` is full or the reader is at EOF; returns the bytes read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// blake3 of `data`, truncated to [`STRONG_LEN`].
pub fn strong_hash(data: &[u8]) -> [u8; STRONG_LEN] {
    let full = blake3::hash(data);
    let mut out = [0u8; STRONG_LEN];
    out.copy_from_slice(&full.as_bytes()[..STRONG_LEN]);
    out
}

fn blocks_for(basis_len: u64, block_size: u32) -> u64 {
    basis_len.div_ceil(u64::from(block_size))
}

/// Builds a signature from bytes as they are written, so a receiver can keep the
/// signature of a file it just wrote and never read that file again to compute one.
#[derive(Debug)]
pub struct SignatureBuilder {
    seed: u64,
    block_size: u32,
    basis_len: u64,
    blocks: Vec<BlockSig>,
    partial: Vec<u8>,
}

impl SignatureBuilder {
    pub fn new(block_size: u32, seed: u64) -> io::Result<Self> {
        if !(MIN_EXPLICIT_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                SignatureError::BadBlockSize(block_size),
            ));
        }
        Ok(SignatureBuilder {
            seed,
            block_size,
            basis_len: 0,
            blocks: Vec::new(),
            partial: Vec::with_capacity(block_size as usize),
        })
    }

    pub fn update(&mut self, mut data: &[u8]) {
        let bs = self.block_size as usize;
        self.basis_len += data.len() as u64;
        while !data.is_empty() {
            let take = (bs - self.partial.len()).min(data.len());
            if self.partial.is_empty() && take == bs {
                self.blocks.push(Self::block(self.seed, &data[..bs]));
            } else {
                self.partial.extend_from_slice(&data[..take]);
                if self.partial.len() == bs {
                    self.blocks.push(Self::block(self.seed, &self.partial));
                    self.partial.clear();
                }
            }
            data = &data[take..];
        }
    }

    fn block(seed: u64, data: &[u8]) -> BlockSig {
        BlockSig {
            weak: Rolling::weak_of(seed, data),
            strong: strong_hash(data),
        }
    }

    pub fn finish(mut self) -> Signature {
        if !self.partial.is_empty() {
            self.blocks.push(Self::block(self.seed, &self.partial));
        }
        Signature {
            seed: self.seed,
            block_size: self.block_size,
            basis_len: self.basis_len,
            blocks: self.blocks,
        }
    }
}

impl Signature {
    /// Signature of `reader` with the block size [`block_size_for`] picks for
    /// `len_hint` (the expected length; a wrong hint only costs efficiency) and seed 0.
    pub fn compute(reader: impl Read, len_hint: u64) -> io::Result<Signature> {
        Self::compute_with(reader, block_size_for(len_hint), 0)
    }

    /// Signature with an explicit block size and rolling-hash seed. A random seed per
    /// signature defeats files crafted to collide with the weak checksum.
    pub fn compute_with(
        mut reader: impl Read,
        block_size: u32,
        seed: u64,
    ) -> io::Result<Signature> {
        if !(MIN_EXPLICIT_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                SignatureError::BadBlockSize(block_size),
            ));
        }
        let mut buf = vec![0u8; block_size as usize];
        let mut full_roll = Rolling::new(seed, block_size as usize);
        let mut blocks = Vec::new();
        let mut basis_len = 0u64;
        loop {
            let n = read_full(&mut reader, &mut buf)?;
            if n == 0 {
                break;
            }
            basis_len += n as u64;
            let data = &buf[..n];
            let weak = if n == buf.len() {
                full_roll.reset(data);
                full_roll.weak()
            } else {
                Rolling::weak_of(seed, data)
            };
            blocks.push(BlockSig {
                weak,
                strong: strong_hash(data),
            });
            if n < buf.len() {
                break;
            }
        }
        Ok(Signature {
            seed,
            block_size,
            basis_len,
            blocks,
        })
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }
    pub fn block_size(&self) -> u32 {
        self.block_size
    }
    pub fn basis_len(&self) -> u64 {
        self.basis_len
    }
    pub fn blocks(&self) -> &[BlockSig] {
        &self.blocks
    }

    /// Length of block `index` (the last one may be short); `None` past the end.
    pub fn block_len(&self, index: u64) -> Option<u64> {
        let start = index.checked_mul(u64::from(self.block_size))?;
        if start >= self.basis_len {
            return None;
        }
        Some((self.basis_len - start).min(u64::from(self.block_size)))
    }

    /// Size of [`Signature::to_bytes`].
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.blocks.len() * ENTRY_LEN
    }

    /// The compact binary form: a 26-byte header then 20 bytes per block.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        // Writing into a Vec cannot fail.
        let _ = self.write_to(&mut out);
        out
    }

    /// Writes the binary form to `w`.
    pub fn write_to(&self, mut w: impl Write) -> io::Result<()> {
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(MAGIC);
        header[4] = VERSION;
        header[5] = STRONG_LEN as u8;
        header[6..10].copy_from_slice(&self.block_size.to_le_bytes());
        header[10..18].copy_from_slice(&self.seed.to_le_bytes());
        header[18..26].copy_from_slice(&self.basis_len.to_le_bytes());
        w.write_all(&header)?;
        for b in &self.blocks {
            let mut entry = [0u8; ENTRY_LEN];
            entry[..4].copy_from_slice(&b.weak.to_le_bytes());
            entry[4..].copy_from_slice(&b.strong);
            w.write_all(&entry)?;
        }
        Ok(())
    }

    /// Decodes a signature that must fill `bytes` exactly.
    pub fn from_bytes(bytes: &[u8], max_blocks: u64) -> Result<Signature, SignatureError> {
        let mut cursor = io::Cursor::new(bytes);
        let sig = Self::read_from(&mut cursor, max_blocks)?;
        let used = cursor.position() as usize;
        if used != bytes.len() {
            return Err(SignatureError::TrailingBytes {
                extra: bytes.len() - used,
            });
        }
        Ok(sig)
    }

    /// Reads one signature from a stream, refusing more than `max_blocks` blocks
    /// (use [`DEFAULT_MAX_BLOCKS`] unless the caller knows better). Memory is allocated
    /// only as entries actually arrive, so a lying header cannot reserve gigabytes.
    pub fn read_from(mut r: impl Read, max_blocks: u64) -> Result<Signature, SignatureError> {
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut r, &mut header)?;
        if got < 4 || &header[..4] != MAGIC {
            let mut found = [0u8; 4];
            found[..got.min(4)].copy_from_slice(&header[..got.min(4)]);
            if got < 4 {
                return Err(SignatureError::Truncated {
                    at: got as u64,
                    needed: HEADER_LEN as u64,
                });
            }
            return Err(SignatureError::BadMagic { found });
        }
        if got < HEADER_LEN {
            return Err(SignatureError::Truncated {
                at: got as u64,
                needed: HEADER_LEN as u64,
            });
        }
        if header[4] != VERSION {
            return Err(SignatureError::UnsupportedVersion(header[4]));
        }
        if header[5] as usize != STRONG_LEN {
            return Err(SignatureError::BadStrongLen(header[5]));
        }
        let le4 = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let le8 = |s: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&s[..8]);
            u64::from_le_bytes(a)
        };
        let block_size = le4(&header[6..10]);
        if !(MIN_EXPLICIT_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(SignatureError::BadBlockSize(block_size));
        }
        let seed = le8(&header[10..18]);
        let basis_len = le8(&header[18..26]);
        let count = blocks_for(basis_len, block_size);
        if count > max_blocks {
            return Err(SignatureError::TooManyBlocks {
                basis_len,
                blocks: count,
                max: max_blocks,
            });
        }
        let mut blocks = Vec::with_capacity(count.min(4096) as usize);
        let total = HEADER_LEN as u64 + count * ENTRY_LEN as u64;
        for i in 0..count {
            let mut entry = [0u8; ENTRY_LEN];
            let got = read_full(&mut r, &mut entry)?;
            if got < ENTRY_LEN {
                return Err(SignatureError::Truncated {
                    at: HEADER_LEN as u64 + i * ENTRY_LEN as u64 + got as u64,
                    needed: total,
                });
            }
            let mut strong = [0u8; STRONG_LEN];
            strong.copy_from_slice(&entry[4..]);
            blocks.push(BlockSig {
                weak: le4(&entry[..4]),
                strong,
            });
        }
        Ok(Signature {
            seed,
            block_size,
            basis_len,
            blocks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_size_follows_sqrt_and_clamps() {
        assert_eq!(block_size_for(0), MIN_BLOCK_SIZE);
        assert_eq!(block_size_for(100_000), MIN_BLOCK_SIZE);
        assert_eq!(block_size_for(64 << 20), 24 * 1024);
        assert_eq!(block_size_for(512 << 20), 68 * 1024);
        assert_eq!(block_size_for(u64::MAX), MAX_BLOCK_SIZE);
    }

    #[test]
    fn signature_round_trips_and_counts_a_short_tail() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sig = Signature::compute_with(&data[..], 64, 9).unwrap();
        assert_eq!(sig.blocks().len(), 16);
        assert_eq!(sig.block_len(15), Some(1000 - 15 * 64));
        assert_eq!(sig.block_len(16), None);
        let bytes = sig.to_bytes();
        assert_eq!(bytes.len(), sig.encoded_len());
        assert_eq!(Signature::from_bytes(&bytes, 16).unwrap(), sig);
        assert!(matches!(
            Signature::from_bytes(&bytes, 15),
            Err(SignatureError::TooManyBlocks { blocks: 16, .. })
        ));
        assert!(matches!(
            Signature::from_bytes(&bytes[..bytes.len() - 1], 16),
            Err(SignatureError::Truncated { .. })
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            Signature::from_bytes(&longer, 16),
            Err(SignatureError::TrailingBytes { extra: 1 })
        ));
    }

    #[test]
    fn empty_basis_has_no_blocks() {
        let sig = Signature::compute(&[][..], 0).unwrap();
        assert_eq!(sig.blocks().len(), 0);
        assert_eq!(sig.basis_len(), 0);
        assert_eq!(Signature::from_bytes(&sig.to_bytes(), 0).unwrap(), sig);
    }

    #[test]
    fn bad_block_size_is_rejected() {
        assert!(Signature::compute_with(&b"abc"[..], 0, 0).is_err());
        assert!(Signature::compute_with(&b"abc"[..], MAX_BLOCK_SIZE + 1, 0).is_err());
    }
}
