//! Counters describing one delta, so callers can report bytes on the wire and saved.

/// What an encoding (or an application) moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeltaStats {
    /// Bytes sent verbatim in `Literal` ops.
    pub literal_bytes: u64,
    /// Bytes reproduced from the basis by `Copy` ops (not on the wire).
    pub copied_bytes: u64,
    pub literal_ops: u64,
    pub copy_ops: u64,
    /// Largest number of source bytes the encoder held at once; O(block size), never
    /// O(file). Zero when the stats come from the applier.
    pub max_buffered: usize,
}

impl DeltaStats {
    /// Length of the file the ops rebuild.
    pub fn output_len(&self) -> u64 {
        self.literal_bytes + self.copied_bytes
    }
}
