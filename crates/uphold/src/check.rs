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
            if args.systemd {
                print!("{}", systemd_drop_in(&args.config, &loaded.config));
            } else {
                println!("{}: OK ({summary})", args.config.display());
            }
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

/// The paths the daemon writes under `config`: every member's state directory
/// (the admin socket and the guard's lock live there), every sync set's target
/// and the balancer's admin socket directory when there is no cluster. With
/// `{node}` in a path every member's expansion is listed, so one drop-in fits
/// every host.
fn written_paths(config: &uphold_config::Config) -> Vec<std::path::PathBuf> {
    let mut paths = std::collections::BTreeSet::new();
    let members: Vec<&uphold_core::NodeName> = config
        .cluster
        .iter()
        .flat_map(|c| c.members.iter().map(|m| &m.name))
        .collect();
    match &config.cluster {
        Some(cluster) => {
            for member in &members {
                paths.insert(cluster.state_dir_for(member));
            }
        }
        None => {
            if let Some(dir) = config.balancer.admin_socket.parent() {
                paths.insert(dir.to_path_buf());
            }
        }
    }
    for set in &config.sync {
        for member in &members {
            paths.insert(set.target_for(member));
        }
    }
    paths.into_iter().collect()
}

/// A drop-in for `uphold.service` that tightens `ProtectSystem=full` (the
/// example unit's setting) to `strict` and names what stays writable.
fn systemd_drop_in(file: &std::path::Path, config: &uphold_config::Config) -> String {
    let mut out = format!(
        "# uphold.service drop-in for {} (uphold check --systemd).\n\
         # Save as /etc/systemd/system/uphold.service.d/paths.conf and run\n\
         # systemctl daemon-reload. Everything else becomes read-only for the daemon\n\
         # and the commands it runs; create these paths before the daemon starts\n\
         # (a missing one is skipped, and the daemon then cannot create it).\n\
         [Service]\nProtectSystem=strict\n",
        file.display()
    );
    for path in written_paths(config) {
        let path = path.display().to_string();
        // systemd splits the list at whitespace; a quoted path stays whole.
        if path.contains(char::is_whitespace) || path.contains(['"', '\\']) {
            let quoted = path.replace('\\', "\\\\").replace('"', "\\\"");
            out.push_str(&format!("ReadWritePaths=\"-{quoted}\"\n"));
        } else {
            out.push_str(&format!("ReadWritePaths=-{path}\n"));
        }
    }
    out
}
