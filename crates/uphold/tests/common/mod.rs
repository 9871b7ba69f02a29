//! What the binary's integration tests share: the binary under test.

use std::process::Command;

/// The `uphold` binary this test crate was built with.
pub fn uphold() -> Command {
    Command::new(env!("CARGO_BIN_EXE_uphold"))
}
