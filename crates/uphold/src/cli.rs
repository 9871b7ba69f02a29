//! Command-line syntax. Names of commands and flags are part of the user-facing
//! contract: scripts and runbooks call them, so they are not renamed.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

pub const DEFAULT_CONFIG: &str = "/etc/uphold/uphold.toml";

#[derive(Parser, Debug)]
#[command(
    name = "uphold",
    version,
    about = "High availability you can roll in: floating IPs and services with quorum-backed failover"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon in the foreground with every section of the config.
    Run(RunArgs),
    /// Validate a config file; exit 2 on errors.
    Check(CheckArgs),
    /// Show members, quorum, leader and groups, as seen by the local daemon.
    Status(StatusArgs),
    /// Create the cluster CA and one certificate per member.
    Init(InitArgs),
    /// A self-contained 3-node cluster on loopback that fails over before your eyes.
    Demo(DemoArgs),
    /// File sync: `uphold sync once SET` brings the targets up to date and exits.
    #[command(subcommand)]
    Sync(SyncCommand),
    /// Balancer: take a server out gently (drain), at once (disable), back (enable),
    /// or change its weight, without a restart.
    #[command(subcommand)]
    Balance(BalanceCommand),
    /// The tiny service the demo floats between its nodes.
    #[command(hide = true)]
    DemoService(DemoServiceArgs),
    /// Internal: the process that removes addresses if the daemon dies.
    #[command(hide = true)]
    Guard(GuardArgs),
}

#[derive(clap::Args, Debug)]
pub struct GuardArgs {
    /// The node's guard lock (in the state directory): held for the guard's
    /// whole life, so a new guard waits for an old one still undoing.
    #[arg(long)]
    pub lock: Option<std::path::PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
pub enum SyncCommand {
    /// Compare the whole set with its targets, send the differences with a progress
    /// line, and exit (0 when every target is identical). A replacement for a
    /// hand-run rsync; the targets must be running `uphold run`.
    Once(SyncOnceArgs),
}

#[derive(clap::Subcommand, Debug)]
pub enum BalanceCommand {
    /// No new connections or requests (clients with a persistence cookie still get
    /// through); open ones finish.
    Drain(BalanceTarget),
    /// No new connections at all; open ones finish.
    Disable(BalanceTarget),
    /// Back in service.
    Enable(BalanceTarget),
    /// Set the weight (0-256; 0 takes no new traffic).
    Weight(BalanceWeight),
}

#[derive(Args, Debug)]
pub struct BalanceTarget {
    #[command(flatten)]
    pub select: NodeSelect,
    /// FRONTEND/SERVER, or SERVER when only one frontend has it.
    pub server: String,
}

#[derive(Args, Debug)]
pub struct BalanceWeight {
    #[command(flatten)]
    pub select: NodeSelect,
    /// FRONTEND/SERVER, or SERVER when only one frontend has it.
    pub server: String,
    pub weight: u32,
}

#[derive(Args, Debug)]
pub struct SyncOnceArgs {
    #[command(flatten)]
    pub select: NodeSelect,
    /// The `[[sync]]` set's name.
    pub set: String,
    /// Only this target (repeatable); default: every member that receives the set.
    #[arg(long = "to")]
    pub to: Vec<String>,
    /// Send even though this member does not run the set's group (or the daemon
    /// cannot say whether it does).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct NodeSelect {
    /// Config file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Which member this is (default: $UPHOLD_NODE, then the short hostname).
    #[arg(long, env = "UPHOLD_NODE")]
    pub node: Option<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub select: NodeSelect,
    /// Log filter (tracing syntax), e.g. `info` or `uphold_cluster=debug`.
    #[arg(long, env = "UPHOLD_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Also print a systemd drop-in that makes the whole file system read-only
    /// for the daemon except the paths this config writes (state directories,
    /// sync targets, the admin socket's directory).
    #[arg(long)]
    pub systemd: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub select: NodeSelect,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Take the cluster name, members and tls_dir from this config.
    #[arg(long, short, conflicts_with_all = ["dir", "cluster", "members"])]
    pub config: Option<PathBuf>,
    /// Directory for the CA and certificates.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long)]
    pub cluster: Option<String>,
    /// Comma-separated member names.
    #[arg(long, value_delimiter = ',')]
    pub members: Vec<String>,
    /// Replace an existing CA (every member then needs its new certificate).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Working directory (default: a new temporary directory, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DemoServiceArgs {
    #[command(subcommand)]
    pub action: DemoServiceAction,
}

#[derive(Subcommand, Debug)]
pub enum DemoServiceAction {
    /// Serve "hello from NODE" on ADDR until killed.
    Serve {
        #[arg(long)]
        listen: String,
    },
    /// Start `serve` in the background and write its pid.
    Start {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        pidfile: PathBuf,
    },
    /// Stop the service started with `start`.
    Stop {
        #[arg(long)]
        pidfile: PathBuf,
    },
    /// Exit 0 if the service answers.
    Check {
        #[arg(long)]
        addr: String,
    },
}
