//! `uphold init`: the cluster CA and member certificates that authenticate every
//! connection between members.

use crate::cli::InitArgs;
use crate::EXIT_CONFIG;
use std::path::PathBuf;
use std::process::ExitCode;
use uphold_core::NodeName;

pub fn main(args: InitArgs) -> ExitCode {
    let (dirs, ca_dir, cluster, members) = match plan(&args) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // With a `{node}` template every member has a directory of its own on this
    // host (the demo, tests): the CA and every issued key stay in a directory
    // of their own, and each member's gets only its bundle. Without one, the
    // configured directory serves this host as before, and each member's bundle
    // is also put in `bundles/<member>/`, ready to copy to that member: the
    // operator never has to pick files out of a directory that holds the CA key.
    let single_dir = ca_dir.is_none();
    let ca_dir = ca_dir.unwrap_or_else(|| dirs[0].clone());
    if let Err(e) = uphold_proto::pki::init_ca(&ca_dir, &cluster, args.force) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    for (dir, member) in dirs.iter().zip(members.iter()) {
        if let Err(e) = uphold_proto::pki::issue_member_cert(&ca_dir, &cluster, member) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        let bundle = if single_dir {
            ca_dir.join(BUNDLES_DIR).join(member.as_str())
        } else {
            dir.clone()
        };
        if let Err(e) = uphold_proto::pki::copy_member_bundle(&ca_dir, &bundle, member) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        println!("certificate for {member} in {}", bundle.display());
    }
    if single_dir {
        println!(
            "cluster CA for {cluster} in {dir}
             copy each member's bundle ({dir}/{BUNDLES_DIR}/<name>/: ca.pem, <name>.pem, <name>-key.pem) \
             into that member's tls_dir; ca-key.pem stays here, on no member if you can",
            dir = ca_dir.display()
        );
    } else {
        println!(
            "cluster CA for {cluster} in {} (its key is in no member's directory)",
            ca_dir.display()
        );
    }
    ExitCode::SUCCESS
}

/// Where, in a single directory, each member's bundle is put to be copied.
const BUNDLES_DIR: &str = "bundles";

/// What `{node}` becomes in the CA's own directory: no member can have this
/// name (member names are lowercase letters, digits and `-`).
const CA_DIR_NODE: &str = "_ca";

/// Per member the directory its files go to, the CA's own directory when the
/// members' differ, the cluster name, the members.
type Plan = (Vec<PathBuf>, Option<PathBuf>, String, Vec<NodeName>);

fn plan(args: &InitArgs) -> Result<Plan, String> {
    if let Some(path) = &args.config {
        let loaded = uphold_config::load(path).map_err(|e| {
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        let cluster = loaded
            .config
            .cluster
            .ok_or_else(|| format!("{} has no [cluster] section", path.display()))?;
        let members: Vec<NodeName> = cluster.members.iter().map(|m| m.name.clone()).collect();
        let dirs = members.iter().map(|m| cluster.tls_dir_for(m)).collect();
        let ca_dir = cluster
            .tls_dir
            .contains("{node}")
            .then(|| PathBuf::from(cluster.tls_dir.replace("{node}", CA_DIR_NODE)));
        return Ok((dirs, ca_dir, cluster.name.clone(), members));
    }
    let dir = args
        .dir
        .clone()
        .ok_or("give --config FILE, or --dir, --cluster and --members")?;
    let cluster = args
        .cluster
        .clone()
        .ok_or("--cluster is required with --dir")?;
    if args.members.is_empty() {
        return Err("--members is required with --dir (e.g. --members alpha,beta,gamma)".into());
    }
    let members = args
        .members
        .iter()
        .map(|m| NodeName::new(m.trim()).map_err(|e| format!("--members: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let dirs = members.iter().map(|_| dir.clone()).collect();
    Ok((dirs, None, cluster, members))
}
