//! `uphold check`: validate a config file and say exactly what is wrong.

use crate::cli::CheckArgs;
use crate::EXIT_CONFIG;
use std::process::ExitCode;

pub fn main(args: CheckArgs) -> ExitCode {
    match uphold_config::load(&args.config) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            let summary = match &loaded.config.cluster {
                Some(c) => format!(
                    "cluster {}: {} members, {} groups",
                    c.name,
                    c.members.len(),
                    c.groups.len()
                ),
                None => "no cluster section".to_string(),
            };
            let sets = loaded.config.sync.len();
            let summary = match sets {
                0 => summary,
                1 => format!("{summary}, 1 sync set"),
                n => format!("{summary}, {n} sync sets"),
            };
            let summary = match loaded.config.balance.len() {
                0 => summary,
                1 => format!("{summary}, 1 balance frontend"),
                n => format!("{summary}, {n} balance frontends"),
            };
            println!("{}: OK ({summary})", args.config.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_config_errors(&errors);
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

pub fn print_config_errors(errors: &uphold_config::ConfigErrors) {
    for error in errors.iter() {
        eprintln!("error: {error}");
    }
    eprintln!(
        "{} error{} in configuration",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
}
