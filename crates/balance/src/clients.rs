//! Connections open per client address on one frontend, so that one address
//! (a runaway script, a flood) cannot take every connection the frontend has.
//! Counted at accept and on close, not per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Keyed per process at random: cheap on every accept, and an attacker who
/// picks source addresses cannot aim them at one bucket.
type Hasher = foldhash::fast::RandomState;

#[derive(Debug, Default)]
pub struct ClientSlots {
    open: Mutex<HashMap<IpAddr, u32, Hasher>>,
}

impl ClientSlots {
    /// A slot for `ip`, or `None` when it already holds `limit` connections.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, limit: u32) -> Option<ClientSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            slots: self.clone(),
            ip,
        })
    }

    /// Addresses with a connection open now.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One connection of a client, given back when dropped.
#[derive(Debug)]
pub struct ClientSlot {
    slots: Arc<ClientSlots>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_limit_and_gets_slots_back_on_close() {
        let slots = Arc::new(ClientSlots::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "::ffff:192.0.2.2".parse().unwrap();
        let first = slots.acquire(a, 2).unwrap();
        let _second = slots.acquire(a, 2).unwrap();
        assert!(slots.acquire(a, 2).is_none());
        let _other = slots.acquire(b, 2).unwrap();
        assert_eq!(slots.clients(), 2);
        drop(first);
        assert!(slots.acquire(a, 2).is_some());
        // An IPv4-mapped address counts as the IPv4 address.
        let _mapped = slots.acquire("192.0.2.2".parse().unwrap(), 2).unwrap();
        assert!(slots.acquire(b, 2).is_none());
    }
}
