//! uphold-fuzz-targets: one entry point per parser that takes bytes from the
//! network or from a file, for the cargo-fuzz project in `fuzz/` (coverage-guided,
//! nightly) and for the stable corpus test in `tests/corpus.rs` (replay of the kept
//! corpus plus blind mutation, run by CI). Also the seed inputs of each target,
//! made with the real encoders.
//!
//! Every target feeds its bytes to the real decoder and must return whatever the
//! input: an error is the expected outcome of most inputs, a panic is a bug. Some
//! targets also assert what the decoder promises (a frame never exceeds the limit,
//! a delta never writes past its announced length); a broken promise panics too.

mod config;
mod http;
mod proto;
mod sync;

pub use config::config;
pub use http::http_request_head;
pub use proto::{frame, handshake, rpc};
pub use sync::{delta_apply, sync_protocol};

/// A fuzz target: its name (that of `fuzz/fuzz_targets/<name>.rs` and of its
/// corpus folders), its entry point, and its seed inputs.
#[derive(Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Seed inputs made with the real encoders, each with a file name for the corpus.
    pub seeds: fn() -> Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "frame",
        run: frame,
        seeds: proto::frame_seeds,
    },
    Target {
        name: "handshake",
        run: handshake,
        seeds: proto::handshake_seeds,
    },
    Target {
        name: "rpc",
        run: rpc,
        seeds: proto::rpc_seeds,
    },
    Target {
        name: "sync_protocol",
        run: sync_protocol,
        seeds: sync::sync_protocol_seeds,
    },
    Target {
        name: "config",
        run: config,
        seeds: config::config_seeds,
    },
    Target {
        name: "delta_apply",
        run: delta_apply,
        seeds: sync::delta_apply_seeds,
    },
    Target {
        name: "http_request_head",
        run: http_request_head,
        seeds: http::http_request_head_seeds,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Seeds listed with literal names.
fn named(seeds: Vec<(&str, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    seeds
        .into_iter()
        .map(|(name, bytes)| (name.to_string(), bytes))
        .collect()
}
