//! `uphold init`: the cluster CA and member certificates that authenticate every
//! connection between members.

use crate::cli::InitArgs;
use crate::EXIT_CONFIG;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use uphold_core::NodeName;

pub fn main(args: InitArgs) -> ExitCode {
    let (dirs, cluster, members) = match plan(&args) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // With a `{node}` template every member has its own directory holding a copy of
    // the CA: only that layout is used by the demo and tests on one host.
    let ca_dir = dirs[0].clone();
    if let Err(e) = uphold_proto::pki::init_ca(&ca_dir, &cluster, args.force) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    for (dir, member) in dirs.iter().zip(members.iter()) {
        if let Err(e) = uphold_proto::pki::issue_member_cert(&ca_dir, &cluster, member) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        if dir != &ca_dir {
            if let Err(e) = copy_member_files(&ca_dir, dir, member) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        println!("certificate for {member} in {}", dir.display());
    }
    println!(
        "cluster CA for {cluster} in {}\ncopy ca.pem and each member's <name>.pem and <name>-key.pem to that member's tls_dir; keep ca-key.pem off the members if you can",
        ca_dir.display()
    );
    ExitCode::SUCCESS
}

/// Per member the directory its files go to, the cluster name, the members.
type Plan = (Vec<PathBuf>, String, Vec<NodeName>);

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
        return Ok((dirs, cluster.name.clone(), members));
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
    Ok((dirs, cluster, members))
}

/// Gives a member's directory its certificate, key and the CA certificate, but
/// not the CA key: members sign nothing.
fn copy_member_files(from: &Path, to: &Path, member: &NodeName) -> Result<(), String> {
    use uphold_proto::pki::{ca_cert_path, member_cert_path, member_key_path};
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    for (src, dst) in [
        (ca_cert_path(from), ca_cert_path(to)),
        (member_cert_path(from, member), member_cert_path(to, member)),
        (member_key_path(from, member), member_key_path(to, member)),
    ] {
        std::fs::copy(&src, &dst)
            .map_err(|e| format!("cannot copy {} to {}: {e}", src.display(), dst.display()))?;
    }
    Ok(())
}
