//! `lifeboat-appliance`: parses arguments and hands over to the library.

mod run;
mod tools;

use clap::{Parser, Subcommand};
use lifeboat_appliance::config::ApplianceConfig;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "lifeboat-appliance",
    version,
    about = "Lifeboat appliance: configuration server, process server, master target"
)]
struct Cli {
    /// Log JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the roles the configuration turns on.
    Run {
        /// The appliance configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Creates a one-time registration passphrase for an agent and prints it.
    Passphrase {
        /// The appliance configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Prints the appliance CA fingerprint agents pin at registration.
    Fingerprint {
        /// The appliance configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Lists recovery points (JSON), optionally of one machine.
    Points {
        /// The appliance configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Machine id.
        #[arg(long)]
        machine: Option<lifeboat_wire::MachineId>,
    },
    /// Lists consistency-group points (JSON): each with its members and whether every
    /// member's point is at the target (`complete`).
    GroupPoints {
        /// The appliance configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Group name.
        #[arg(long)]
        group: Option<String>,
    },
    /// Lists the write-churn profiles agents reported (`lifeboat-agent churn --report`)
    /// with the link bandwidth they need (JSON).
    Churn {
        /// The appliance configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Machine id.
        #[arg(long)]
        machine: Option<lifeboat_wire::MachineId>,
        /// The link's bandwidth in megabits per second: says whether the peak fits.
        #[arg(long)]
        link_mbps: Option<f64>,
    },
    /// Prints the one-time setup token that `POST /api/v1/setup` (the web wizard's first
    /// step, `lifeboat setup`) needs, while no administrator exists; fails after setup.
    SetupToken {
        /// The appliance configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Prints the appliance's counters (bytes received, shipped, applied …) as JSON.
    Stats {
        /// The appliance configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Prints the sha256 of a disk as it was at a recovery point (materialises it at
    /// the target, reads it back, removes the copy).
    PointChecksum {
        /// The appliance configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Point id (from `points`).
        #[arg(long)]
        point: String,
        /// Disk index.
        #[arg(long, default_value_t = 0)]
        disk: u32,
    },
    /// After losing the appliance of the source site: reads the catalogue it kept at the
    /// target (sealed under the recovery passphrase: LIFEBOAT_RECOVERY_PASSPHRASE or
    /// standard input) and imports it into this fresh appliance, which can then fail the
    /// machines over. Prints the machines and their newest points (JSON).
    Recover {
        /// The appliance configuration file (the same target as the lost appliance).
        #[arg(long, short)]
        config: PathBuf,
        /// Only read and print the catalogue; import nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Prints the qemu command that boots a VM of the local target (its spec file,
    /// `<root>/vms/<vm>.json`), the serial console on standard output.
    QemuCommand {
        /// The VM spec file.
        spec: PathBuf,
        /// Accelerator: `tcg` (software) or `kvm`.
        #[arg(long, default_value = "tcg")]
        accel: String,
        /// Put every interface on qemu's user network instead of its mapped bridge
        /// (a host without the target networks).
        #[arg(long)]
        user_net: bool,
        /// Print a JSON array of the arguments instead of a shell line.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let level = if matches!(cli.cmd, Cmd::Run { .. }) { "info" } else { "warn" };
    lifeboat_common::logging::init_with_default(cli.log_json, level);
    let load = |p: &PathBuf| {
        ApplianceConfig::load(p).unwrap_or_else(|e| {
            eprintln!("lifeboat-appliance: {e}");
            std::process::exit(2)
        })
    };
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| {
        eprintln!("lifeboat-appliance: cannot start the async runtime: {e}");
        std::process::exit(1)
    });
    let r = match &cli.cmd {
        Cmd::Run { config } => rt.block_on(run::run(load(config))),
        Cmd::Passphrase { config } => tools::passphrase(load(config)),
        Cmd::Fingerprint { config } => tools::fingerprint(load(config)),
        Cmd::Points { config, machine } => tools::points(load(config), *machine),
        Cmd::Stats { config } => tools::stats(load(config)),
        Cmd::SetupToken { config } => tools::setup_token(load(config)),
        Cmd::Churn { config, machine, link_mbps } => {
            tools::churn(load(config), *machine, *link_mbps)
        }
        Cmd::GroupPoints { config, group } => tools::group_points(load(config), group.as_deref()),
        Cmd::PointChecksum { config, point, disk } => {
            rt.block_on(tools::point_checksum(load(config), point, *disk))
        }
        Cmd::Recover { config, dry_run } => rt.block_on(tools::recover(load(config), *dry_run)),
        Cmd::QemuCommand { spec, accel, user_net, json } => {
            lifeboat_appliance::master_target::qemu::print_command(spec, accel, *user_net, *json)
                .map_err(anyhow::Error::from)
        }
    };
    if let Err(e) = r {
        eprintln!("lifeboat-appliance: error: {e:#}");
        std::process::exit(1);
    }
}
