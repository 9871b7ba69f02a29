//! How much one peer may hold open on this receiver: streams at once, and how
//! long an idle stream is kept. Decided here, without a socket or a clock; the
//! receiver counts and measures.

use super::access::Refusal;
use std::time::Duration;
use uphold_core::NodeName;

/// Streams open at once from one peer; more are refused until some finish.
pub const MAX_TRANSFERS_PER_PEER: usize = 8;
/// A stream without a chunk for this long is abandoned (the sender died).
pub const TRANSFER_IDLE: Duration = Duration::from_secs(120);

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
}
