//! Server selection: given a snapshot of the servers (weight, load, whether they may
//! take traffic) and the client's hash, pick one. Pure: no clock, no I/O; the random
//! algorithm takes its randomness from the caller.

use uphold_config::balance::Algorithm;

/// One server as selection sees it at this instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Effective weight (configured weight scaled by slow start and agent); 0 takes
    /// no new traffic.
    pub weight: u32,
    /// Connections (tcp) or requests (http) in flight.
    pub active: u32,
    /// Healthy and administratively enabled (draining servers are not available).
    pub available: bool,
    /// At its connection limit.
    pub full: bool,
    pub backup: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    Server(usize),
    /// Servers are available but every one is at its limit: wait in the queue.
    AllFull,
    /// No server may take traffic.
    NoServer,
}

/// Selection state of one backend pool.
#[derive(Clone, Debug)]
pub struct Selector {
    algorithm: Algorithm,
    /// Smooth weighted round-robin credit per server.
    credit: Vec<i64>,
    /// Rotates ties in least-connections so equal servers share the load.
    turn: usize,
}

impl Selector {
    pub fn new(algorithm: Algorithm, servers: usize) -> Self {
        Selector {
            algorithm,
            credit: vec![0; servers],
            turn: 0,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Picks a server. `client` is a hash of the client's address (source
    /// persistence), `random` two random words (the random algorithm), `exclude`
    /// servers already tried for this connection.
    pub fn pick(
        &mut self,
        servers: &[Candidate],
        client: u64,
        random: [u64; 2],
        exclude: &[usize],
    ) -> Pick {
        if self.credit.len() != servers.len() {
            self.credit = vec![0; servers.len()];
        }
        let usable = |i: usize, c: &Candidate| c.available && c.weight > 0 && !exclude.contains(&i);
        // Backups only when no regular server is usable at all (full ones count as
        // usable: they are up, the request waits for them).
        let regular = servers
            .iter()
            .enumerate()
            .any(|(i, c)| !c.backup && usable(i, c));
        let in_tier = |i: usize, c: &Candidate| usable(i, c) && c.backup != regular;
        if !servers.iter().enumerate().any(|(i, c)| in_tier(i, c)) {
            return Pick::NoServer;
        }
        let open: Vec<usize> = servers
            .iter()
            .enumerate()
            .filter(|(i, c)| in_tier(*i, c) && !c.full)
            .map(|(i, _)| i)
            .collect();
        if open.is_empty() {
            return Pick::AllFull;
        }
        let chosen = match self.algorithm {
            Algorithm::RoundRobin => self.round_robin(servers, &open),
            Algorithm::LeastConn => self.least_conn(servers, &open),
            Algorithm::Source => rendezvous(servers, &open, client),
            Algorithm::Random => random_of_two(servers, &open, random),
        };
        Pick::Server(chosen)
    }

    /// nginx's smooth weighted round-robin: every server earns its weight in credit,
    /// the richest is picked and pays the total. Spreads a weight-5 server's turns
    /// between the others' instead of sending it five in a row.
    fn round_robin(&mut self, servers: &[Candidate], open: &[usize]) -> usize {
        let mut total = 0i64;
        let mut best = open[0];
        for &i in open {
            let w = i64::from(servers[i].weight);
            self.credit[i] += w;
            total += w;
            if self.credit[i] > self.credit[best] {
                best = i;
            }
        }
        self.credit[best] -= total;
        best
    }

    fn least_conn(&mut self, servers: &[Candidate], open: &[usize]) -> usize {
        self.turn = self.turn.wrapping_add(1);
        let start = self.turn % open.len();
        let mut best = open[start];
        // Compare active/weight without division: a.active * b.weight < b.active * a.weight.
        for k in 1..open.len() {
            let i = open[(start + k) % open.len()];
            let (a, b) = (&servers[i], &servers[best]);
            if u64::from(a.active) * u64::from(b.weight) < u64::from(b.active) * u64::from(a.weight)
            {
                best = i;
            }
        }
        best
    }
}

/// Weighted rendezvous hashing: each (client, server) pair gets a score and the
/// highest wins, so when a server leaves only its own clients move.
fn rendezvous(servers: &[Candidate], open: &[usize], client: u64) -> usize {
    let mut best = open[0];
    let mut best_score = f64::MIN;
    for &i in open {
        let h = mix(client ^ mix(i as u64 + 1));
        // A uniform number in (0, 1); -ln(u) is exponential, divided by the weight.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = f64::from(servers[i].weight) / -u.ln();
        if score > best_score {
            best_score = score;
            best = i;
        }
    }
    best
}

fn random_of_two(servers: &[Candidate], open: &[usize], random: [u64; 2]) -> usize {
    let total: u64 = open.iter().map(|&i| u64::from(servers[i].weight)).sum();
    let by_weight = |r: u64| {
        let mut x = r % total;
        for &i in open {
            let w = u64::from(servers[i].weight);
            if x < w {
                return i;
            }
            x -= w;
        }
        open[open.len() - 1]
    };
    let (a, b) = (by_weight(random[0]), by_weight(random[1]));
    let (ca, cb) = (&servers[a], &servers[b]);
    if u64::from(cb.active) * u64::from(ca.weight) < u64::from(ca.active) * u64::from(cb.weight) {
        b
    } else {
        a
    }
}

/// SplitMix64's finaliser: a cheap, well-spread 64-bit hash.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hash of a client IP for source persistence (the port is left out: a client's
/// connections come from many ports).
pub fn client_hash(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(v4) => mix(u64::from(u32::from(v4))),
        std::net::IpAddr::V6(v6) => {
            let n = u128::from(v6);
            mix((n as u64) ^ mix((n >> 64) as u64))
        }
    }
}

#[cfg(test)]
mod tests;
