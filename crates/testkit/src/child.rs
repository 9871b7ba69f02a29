//! Child processes that a test starts and must never leave behind: killed with
//! SIGKILL and reaped when dropped, also when the test fails half-way.

use std::process::{Child, Command, Output};

/// A child process killed and reaped on drop.
#[derive(Debug)]
pub struct KilledOnDrop(pub Child);

impl KilledOnDrop {
    /// Spawns `command`; panics with the program's name when it cannot start.
    pub fn spawn(command: &mut Command) -> KilledOnDrop {
        match command.spawn() {
            Ok(child) => KilledOnDrop(child),
            Err(e) => panic!("cannot start {:?}: {e}", command.get_program()),
        }
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `command` to its end and panics with its stderr unless it succeeded.
pub fn run_ok(command: &mut Command) -> Output {
    let out = match command.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run {:?}: {e}", command.get_program()),
    };
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        command.get_program(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
