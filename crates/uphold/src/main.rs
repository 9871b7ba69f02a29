//! The `uphold` binary: command-line parsing and dispatch to the subcommands.
//! Each subcommand lives in its own module; the roles live in their crates.

mod balance_cmd;
mod check;
mod cli;
mod demo;
mod init;
mod run;
mod status;
mod sync_cmd;

use clap::Parser;
use std::process::ExitCode;

/// Exit code for a configuration or usage error (`uphold check` contract).
pub const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Run(args) => run::main(args),
        cli::Command::Check(args) => check::main(args),
        cli::Command::Status(args) => status::main(args),
        cli::Command::Init(args) => init::main(args),
        cli::Command::Demo(args) => demo::main(args),
        cli::Command::Sync(cli::SyncCommand::Once(args)) => sync_cmd::once(args),
        cli::Command::Balance(command) => balance_cmd::main(command),
        cli::Command::DemoService(args) => demo::service_main(args),
        cli::Command::Guard(args) => {
            guard_lock_memory();
            match uphold_os::guard::run_guard_process(args.lock.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("uphold-guard: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The guard is the safety net while the daemon is stopped or starved: it must
/// not wait for its own pages to come back from swap before releasing addresses.
/// It is small (a few MiB), so it locks regardless of the daemon's `lock_memory`.
/// Without root that is refused, as the daemon's own start line already reports;
/// only an unexpected failure is printed (to the stderr it shares with the daemon).
fn guard_lock_memory() {
    if let Err(e) = uphold_os::protect::lock_memory() {
        if !e.is_not_permitted() {
            eprintln!("uphold-guard: {e}; running without it");
        }
    }
}
