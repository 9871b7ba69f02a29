//! How one file's content goes to a target: inline in an operation batch,
//! streamed whole, or as a delta against the target's older version.

use crate::protocol::{DELTA_MIN, INLINE_MAX};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Small: read at once and sent with the other operations of the batch.
    Inline,
    /// Streamed in chunks, whole.
    Stream,
    /// Streamed as a delta against the target's version, if the target can
    /// give its signature (otherwise whole).
    Delta,
}

/// `size` of the source file; `target_size` of the target's older version, if
/// it has one. A delta pays for a signature round trip and block hashing: only
/// worth it when both versions are large.
pub fn method(size: u64, target_size: Option<u64>) -> Method {
    if size <= INLINE_MAX {
        Method::Inline
    } else if size >= DELTA_MIN && target_size.is_some_and(|t| t >= DELTA_MIN) {
        Method::Delta
    } else {
        Method::Stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_go_inline_large_ones_as_deltas_against_a_large_basis() {
        assert_eq!(method(0, None), Method::Inline);
        assert_eq!(method(INLINE_MAX, Some(INLINE_MAX)), Method::Inline);
        assert_eq!(method(INLINE_MAX + 1, None), Method::Stream);
        assert_eq!(method(INLINE_MAX + 1, Some(DELTA_MIN - 1)), Method::Stream);
        assert_eq!(method(INLINE_MAX + 1, Some(DELTA_MIN)), Method::Delta);
        assert_eq!(method(u64::MAX, Some(u64::MAX)), Method::Delta);
    }
}
