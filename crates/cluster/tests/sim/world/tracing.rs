//! The trace: a ring of the last events, printed with a failing seed.

use super::*;

impl World {
    pub(super) fn trace(&mut self, member: Option<usize>, what: Tr) {
        let rec = TraceRec {
            t_us: self.now,
            member,
            local: member.map_or(0, |m| self.local(m)),
            what,
        };
        if let Some(full) = self.full_trace.as_mut() {
            full.push(rec.clone());
        }
        if self.ring.len() == RING {
            self.ring.pop_front();
        }
        self.ring.push_back(rec);
    }

    pub fn format_rec(&self, rec: &TraceRec) -> String {
        let who = rec
            .member
            .map_or_else(|| "--".to_string(), |m| self.members[m].name.clone());
        let what = match &rec.what {
            Tr::Fault(s) => format!("FAULT {s}"),
            Tr::Action(a) => format!("action {}", self.names(&format!("{a:?}"))),
            Tr::Done { cmd, result } => {
                format!(
                    "proposal done {} -> {result:?}",
                    self.names(&format!("{cmd:?}"))
                )
            }
            Tr::Commit { idx, cmd, result } => {
                format!(
                    "commit #{idx} {} -> {result:?}",
                    self.names(&format!("{cmd:?}"))
                )
            }
            Tr::Leader { leading, term } => {
                if *leading {
                    format!("became leader, term {term}")
                } else {
                    format!("stopped leading, term {term}")
                }
            }
            Tr::Active { group, on, why } => {
                format!(
                    "{group} {} ({why})",
                    if *on { "ACTIVE" } else { "inactive" }
                )
            }
            Tr::Engine(s) => format!("event {}", self.names(s)),
        };
        format!(
            "{:>10.3} ms  {:<3} local {:>10}  {what}",
            rec.t_us as f64 / MS as f64,
            who,
            rec.local
        )
    }

    /// Replaces node ids by member names in a formatted value.
    pub(super) fn names(&self, text: &str) -> String {
        let mut text = text.to_string();
        for mb in &self.members {
            text = text.replace(&mb.id.to_string(), &mb.name);
        }
        text
    }

    pub fn dump_trace(&self) -> String {
        self.dump_trace_since(0)
    }

    /// The full trace from real time `since_us` on, without renewals.
    pub fn dump_trace_since(&self, since_us: u64) -> String {
        let mut out = String::new();
        if let Some(full) = &self.full_trace {
            for rec in full
                .iter()
                .filter(|r| r.t_us >= since_us && !is_renewal(&r.what))
            {
                let _ = writeln!(out, "{}", self.format_rec(rec));
            }
        }
        out
    }

    /// A hash of the whole trace (full-trace mode), for determinism checks.
    pub fn trace_hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for rec in self.full_trace.iter().flatten() {
            for b in format!("{}|{:?}|{}|{:?}", rec.t_us, rec.member, rec.local, rec.what).bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h ^ self.obs.events
    }
}
