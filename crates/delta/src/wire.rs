//! The network form of a delta: a stream of records (`Copy`, `Literal`, then one `End`
//! carrying the source length and hash), each a tag byte and fixed little-endian fields.
//!
//! Decoding trusts nothing: unknown tags, empty or oversized literals, zero-length
//! copies and streams cut mid-record are errors, and no record can make the decoder
//! allocate more than [`MAX_RECORD_LEN`] bytes.

use std::io::{self, Read, Write};

use crate::delta::{DeltaEnd, Op, MAX_LITERAL};
use crate::signature::read_full;

const TAG_COPY: u8 = 1;
const TAG_LITERAL: u8 = 2;
const TAG_END: u8 = 3;

/// The largest encoded record (a full literal).
pub const MAX_RECORD_LEN: usize = 1 + 4 + MAX_LITERAL;

/// One unit of the delta stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Op(Op),
    /// Always last: what the rebuilt file must be.
    End(DeltaEnd),
}

/// Why bytes from the network are not a valid delta record.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("delta wire: unknown record tag {0:#04x}")]
    UnknownTag(u8),
    #[error("delta wire: literal of {0} bytes exceeds the {MAX_LITERAL}-byte limit")]
    LiteralTooLarge(u64),
    #[error("delta wire: empty literal")]
    EmptyLiteral,
    #[error("delta wire: copy of zero blocks from block {0}")]
    ZeroCopy(u64),
    #[error("delta wire: stream ended inside a {what} record ({got} of {needed} bytes)")]
    Truncated {
        what: &'static str,
        got: usize,
        needed: usize,
    },
    #[error("delta wire: reading: {0}")]
    Io(#[from] io::Error),
}

/// Encoded size of `op`, for counting bytes on the wire without writing them.
pub fn op_len(op: &Op) -> usize {
    match op {
        Op::Copy { .. } => 17,
        Op::Literal(data) => 5 + data.len(),
    }
}

/// Encoded size of the `End` record.
pub const END_LEN: usize = 41;

/// Writes one op. Literals over [`MAX_LITERAL`] or empty are refused so a bug here
/// cannot produce a stream the peer will reject.
pub fn write_op(mut w: impl Write, op: &Op) -> io::Result<usize> {
    match op {
        Op::Copy { block_index, count } => {
            let mut b = [0u8; 17];
            b[0] = TAG_COPY;
            b[1..9].copy_from_slice(&block_index.to_le_bytes());
            b[9..17].copy_from_slice(&count.to_le_bytes());
            w.write_all(&b)?;
        }
        Op::Literal(data) => {
            if data.is_empty() || data.len() > MAX_LITERAL {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("delta wire: literal of {} bytes not encodable", data.len()),
                ));
            }
            let mut b = [0u8; 5];
            b[0] = TAG_LITERAL;
            b[1..5].copy_from_slice(&(data.len() as u32).to_le_bytes());
            w.write_all(&b)?;
            w.write_all(data)?;
        }
    }
    Ok(op_len(op))
}

/// Writes the closing `End` record.
pub fn write_end(mut w: impl Write, end: &DeltaEnd) -> io::Result<usize> {
    let mut b = [0u8; END_LEN];
    b[0] = TAG_END;
    b[1..9].copy_from_slice(&end.len.to_le_bytes());
    b[9..41].copy_from_slice(&end.hash);
    w.write_all(&b)?;
    Ok(END_LEN)
}

/// Writes any record.
pub fn write_record(w: impl Write, rec: &Record) -> io::Result<usize> {
    match rec {
        Record::Op(op) => write_op(w, op),
        Record::End(end) => write_end(w, end),
    }
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], what: &'static str) -> Result<(), WireError> {
    let got = read_full(r, buf)?;
    if got < buf.len() {
        return Err(WireError::Truncated {
            what,
            got: got + 1,
            needed: buf.len() + 1,
        });
    }
    Ok(())
}

/// Reads one record; `Ok(None)` on a clean end of stream before a record starts.
pub fn read_record(mut r: impl Read) -> Result<Option<Record>, WireError> {
    let mut tag = [0u8; 1];
    if read_full(&mut r, &mut tag)? == 0 {
        return Ok(None);
    }
    let rec = match tag[0] {
        TAG_COPY => {
            let mut b = [0u8; 16];
            read_exact_or(&mut r, &mut b, "copy")?;
            let mut i = [0u8; 8];
            i.copy_from_slice(&b[..8]);
            let mut c = [0u8; 8];
            c.copy_from_slice(&b[8..]);
            let (block_index, count) = (u64::from_le_bytes(i), u64::from_le_bytes(c));
            if count == 0 {
                return Err(WireError::ZeroCopy(block_index));
            }
            Record::Op(Op::Copy { block_index, count })
        }
        TAG_LITERAL => {
            let mut l = [0u8; 4];
            read_exact_or(&mut r, &mut l, "literal")?;
            let len = u32::from_le_bytes(l) as usize;
            if len == 0 {
                return Err(WireError::EmptyLiteral);
            }
            if len > MAX_LITERAL {
                return Err(WireError::LiteralTooLarge(len as u64));
            }
            let mut data = vec![0u8; len];
            let got = read_full(&mut r, &mut data)?;
            if got < len {
                return Err(WireError::Truncated {
                    what: "literal",
                    got: 5 + got,
                    needed: 5 + len,
                });
            }
            Record::Op(Op::Literal(data))
        }
        TAG_END => {
            let mut b = [0u8; END_LEN - 1];
            read_exact_or(&mut r, &mut b, "end")?;
            let mut l = [0u8; 8];
            l.copy_from_slice(&b[..8]);
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&b[8..]);
            Record::End(DeltaEnd {
                len: u64::from_le_bytes(l),
                hash,
            })
        }
        other => return Err(WireError::UnknownTag(other)),
    };
    Ok(Some(rec))
}

/// A writer that encodes ops and counts the bytes it put on the wire; its
/// [`WireWriter::write_op`] fits [`crate::DeltaEncoder::encode`]'s sink.
#[derive(Debug)]
pub struct WireWriter<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> WireWriter<W> {
    pub fn new(inner: W) -> Self {
        WireWriter { inner, bytes: 0 }
    }
    pub fn write_op(&mut self, op: &Op) -> io::Result<()> {
        self.bytes += write_op(&mut self.inner, op)? as u64;
        Ok(())
    }
    pub fn write_end(&mut self, end: &DeltaEnd) -> io::Result<()> {
        self.bytes += write_end(&mut self.inner, end)? as u64;
        self.inner.flush()
    }
    /// Bytes encoded so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }
    pub fn into_inner(self) -> W {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let recs = vec![
            Record::Op(Op::Copy {
                block_index: 3,
                count: 7,
            }),
            Record::Op(Op::Literal(vec![1, 2, 3])),
            Record::Op(Op::Literal(vec![9; MAX_LITERAL])),
            Record::End(DeltaEnd {
                len: 42,
                hash: [7; 32],
            }),
        ];
        let mut buf = Vec::new();
        for r in &recs {
            write_record(&mut buf, r).unwrap();
        }
        let mut cur = io::Cursor::new(&buf[..]);
        let mut back = Vec::new();
        while let Some(r) = read_record(&mut cur).unwrap() {
            back.push(r);
        }
        assert_eq!(back, recs);
    }

    #[test]
    fn malformed_records_are_named() {
        let err = |b: &[u8]| read_record(b).unwrap_err().to_string();
        assert!(err(&[9]).contains("unknown record tag 0x09"));
        assert!(err(&[TAG_COPY, 1, 2]).contains("inside a copy record"));
        assert!(err(&[TAG_LITERAL, 0, 0, 0, 0]).contains("empty literal"));
        assert!(err(&[TAG_LITERAL, 1, 0, 1, 0]).contains("exceeds"));
        assert!(err(&[TAG_LITERAL, 3, 0, 0, 0, 1]).contains("6 of 8"));
        let mut zero = vec![TAG_COPY];
        zero.extend_from_slice(&[0; 16]);
        assert!(err(&zero).contains("zero blocks"));
        assert!(write_op(Vec::new(), &Op::Literal(vec![0; MAX_LITERAL + 1])).is_err());
    }
}
