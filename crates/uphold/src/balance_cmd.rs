//! `uphold balance drain|disable|enable|weight`: operator commands sent to the local
//! daemon's API, which applies them at once without a restart.

use crate::check::print_config_errors;
use crate::cli::{BalanceCommand, NodeSelect};
use crate::EXIT_CONFIG;
use std::process::ExitCode;

pub fn main(command: BalanceCommand) -> ExitCode {
    let (select, verb, body) = match command {
        BalanceCommand::Drain(t) => (t.select, "drain", t.server),
        BalanceCommand::Disable(t) => (t.select, "disable", t.server),
        BalanceCommand::Enable(t) => (t.select, "enable", t.server),
        BalanceCommand::Weight(w) => {
            if w.weight > 256 {
                eprintln!("error: weight {} is out of range (0 to 256)", w.weight);
                return ExitCode::from(EXIT_CONFIG);
            }
            (w.select, "weight", format!("{} {}", w.server, w.weight))
        }
    };
    send(&select, verb, &body)
}

fn send(select: &NodeSelect, verb: &str, body: &str) -> ExitCode {
    let loaded = match uphold_config::load(&select.config) {
        Ok(l) => l,
        Err(errors) => {
            print_config_errors(&errors);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (who, _, socket) =
        match crate::status::local_endpoints(&loaded.config, select.node.as_deref()) {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("error: {}: {e}", select.config.display());
                return ExitCode::from(EXIT_CONFIG);
            }
        };
    match crate::status::admin_request(&socket, "POST", &format!("/v1/balance/{verb}"), body) {
        Ok(answer) => {
            print!("{}", String::from_utf8_lossy(&answer));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {who}: {e}");
            ExitCode::FAILURE
        }
    }
}
