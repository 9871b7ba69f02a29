//! Free loopback ports for processes started on one host: the demo's three
//! members and the test suites' daemons and backends.

use std::net::TcpListener;
use std::sync::Mutex;

/// Ports handed out in this process: a released port is not handed out twice
/// (a "dead" server's port must not become another daemon's).
static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Where ports are picked: below the kernel's ephemeral range (32768 and up by
/// default), so outgoing connections cannot take one meanwhile.
pub const PORT_RANGE: std::ops::Range<u16> = 20000..32000;

/// The first of `n` consecutive loopback ports nobody listens on now (each
/// bound and released; the caller binds it again at once).
pub fn free_port_range(n: u16) -> std::io::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    let span = PORT_RANGE.end - PORT_RANGE.start - n.min(PORT_RANGE.end - PORT_RANGE.start - 1);
    for _ in 0..1000 {
        // std's per-process random keys: enough to spread processes over the range.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let base = PORT_RANGE.start + (random % u64::from(span)) as u16;
        let held: Vec<TcpListener> = (0..n)
            .filter_map(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == usize::from(n) && claim(base..base + n) {
            return Ok(base);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no {n} consecutive free loopback ports in {PORT_RANGE:?}"),
    ))
}

fn claim(ports: std::ops::Range<u16>) -> bool {
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if ports.clone().any(|p| given.contains(&p)) {
        return false;
    }
    given.extend(ports);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_consecutive_and_never_handed_out_twice() {
        let a = free_port_range(3).unwrap();
        let b = free_port_range(3).unwrap();
        assert!(PORT_RANGE.contains(&a) && PORT_RANGE.contains(&(a + 2)));
        assert!(a + 3 <= b || b + 3 <= a, "{a} and {b} overlap");
        for port in a..a + 3 {
            TcpListener::bind(("127.0.0.1", port)).expect("free");
        }
    }
}
