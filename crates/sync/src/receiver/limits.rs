//! How much one peer may hold open on this receiver: streams at once, how long
//! an idle stream is kept, how many bytes of temporary files a set may have
//! announced at once, and how much free space a transfer must leave on the
//! target filesystem. Decided here, without a socket, a clock or a disk; the
//! receiver counts and measures.

// Decides only: no clock, disk, socket or thread (clippy.toml).
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

use super::access::Refusal;
use std::time::Duration;
use uphold_core::NodeName;

/// Streams open at once from one peer; more are refused until some finish.
pub const MAX_TRANSFERS_PER_PEER: usize = 8;
/// A stream without a chunk for this long is abandoned (the sender died).
pub const TRANSFER_IDLE: Duration = Duration::from_secs(120);

/// Bytes that the open streams of one set may announce together. One stream
/// alone may always be as large as its file (free space permitting).
pub const TEMP_BUDGET_PER_SET: u64 = 4 * 1024 * 1024 * 1024;
/// Space every transfer leaves free on the target filesystem, for the services
/// that write there too.
pub const FREE_SPACE_FLOOR: u64 = 256 * 1024 * 1024;

/// May a stream of `size` bytes begin in `set`, whose open streams already
/// announced `reserved` bytes?
pub fn may_reserve(set: &str, reserved: u64, size: u64) -> Result<(), Refusal> {
    if reserved > 0 && reserved.saturating_add(size) > TEMP_BUDGET_PER_SET {
        return Err(Refusal::TempBudget {
            set: set.to_string(),
            reserved,
            size,
            budget: TEMP_BUDGET_PER_SET,
        });
    }
    Ok(())
}

/// Does a stream of `size` bytes fit on a filesystem with `available` bytes
/// free, leaving [`FREE_SPACE_FLOOR`]?
pub fn leaves_room(set: &str, available: u64, size: u64) -> Result<(), Refusal> {
    if available < size.saturating_add(FREE_SPACE_FLOOR) {
        return Err(Refusal::NoSpace {
            set: set.to_string(),
            available,
            size,
            floor: FREE_SPACE_FLOOR,
        });
    }
    Ok(())
}

/// `peer` has `open` streams here: may it begin another?
pub fn may_begin(peer: &NodeName, open: usize) -> Result<(), Refusal> {
    if open >= MAX_TRANSFERS_PER_PEER {
        return Err(Refusal::TooManyTransfers {
            peer: peer.clone(),
            open,
            limit: MAX_TRANSFERS_PER_PEER,
        });
    }
    Ok(())
}

/// A stream unused for `idle` is abandoned and its temporary file removed.
pub fn abandoned(idle: Duration) -> bool {
    idle > TRANSFER_IDLE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_a_bounded_number_of_streams_each_dropped_when_idle_too_long() {
        let peer = NodeName::new("alpha").unwrap();
        assert_eq!(may_begin(&peer, MAX_TRANSFERS_PER_PEER - 1), Ok(()));
        assert_eq!(
            may_begin(&peer, MAX_TRANSFERS_PER_PEER),
            Err(Refusal::TooManyTransfers {
                peer: peer.clone(),
                open: MAX_TRANSFERS_PER_PEER,
                limit: MAX_TRANSFERS_PER_PEER
            })
        );
        assert!(!abandoned(TRANSFER_IDLE));
        assert!(abandoned(TRANSFER_IDLE + Duration::from_millis(1)));
    }

    #[test]
    fn one_stream_may_be_large_but_streams_together_stay_within_the_budget() {
        let big = TEMP_BUDGET_PER_SET * 2;
        assert_eq!(may_reserve("www", 0, big), Ok(()));
        assert_eq!(may_reserve("www", 1, TEMP_BUDGET_PER_SET - 1), Ok(()));
        assert_eq!(
            may_reserve("www", 1, TEMP_BUDGET_PER_SET),
            Err(Refusal::TempBudget {
                set: "www".into(),
                reserved: 1,
                size: TEMP_BUDGET_PER_SET,
                budget: TEMP_BUDGET_PER_SET,
            })
        );
    }

    #[test]
    fn a_stream_must_leave_the_floor_free() {
        assert_eq!(leaves_room("www", FREE_SPACE_FLOOR + 10, 10), Ok(()));
        let refusal = leaves_room("www", FREE_SPACE_FLOOR + 10, 11).unwrap_err();
        assert!(refusal.to_string().contains("free"), "{refusal}");
        assert!(leaves_room("www", 0, u64::MAX).is_err());
    }
}
