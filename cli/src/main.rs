//! `lifeboat`: the administrator's command line. Every command is one call of the
//! configuration server's API (docs/appliance.md, `GET /api/v1/openapi.json`).
//!
//! The session (appliance address, pinned CA fingerprint, token) is kept in
//! `$XDG_CONFIG_HOME/lifeboat/session.json` (or `~/.config/…`, or `--session`), mode 0600.
//! The password is read from `LIFEBOAT_PASSWORD` or, failing that, from the first line of
//! standard input: never from the command line, where other users could see it.
//!
//! Exit codes, for scripts: 0 done; 1 anything else (network, server error); 2 bad input
//! (usage, or the API answered 400); 3 not logged in or wrong credentials (401); 4 not found
//! (404); 5 conflict (409); 6 rate-limited (429).
//!
//! Requests and answers are the types of `lifeboat_api`; `--json` prints the API's answer
//! as its type encodes it. One module per group of commands; `client` holds the session and
//! the typed calls.

mod account;
mod ca;
mod client;
mod failover;
mod groups;
mod machines;
mod plans;
mod policies;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use client::{Failure, Output};

#[derive(Parser)]
#[command(name = "lifeboat", version, about = "Administer a Lifeboat appliance through its API.")]
struct Cli {
    /// Where the session is kept.
    #[arg(long, global = true, env = "LIFEBOAT_SESSION")]
    session: Option<PathBuf>,
    /// Print the API's JSON answer instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// First-run setup: creates the first administrator and logs in.
    Setup {
        #[command(flatten)]
        connect: Connect,
        /// The appliance's one-time setup token (shown on its console and by
        /// `lifeboat-appliance setup-token`), or LIFEBOAT_SETUP_TOKEN.
        #[arg(long, env = "LIFEBOAT_SETUP_TOKEN")]
        setup_token: String,
    },
    /// Logs in and keeps the session.
    Login(Connect),
    /// Ends the session.
    Logout,
    /// Who is logged in, until when.
    Whoami,
    /// Protected machines with their disks and newest point; `machines install` installs the
    /// agent on a machine over SSH.
    Machines {
        #[command(subcommand)]
        cmd: Option<MachinesCmd>,
    },
    /// A machine's recovery points.
    Points {
        /// Machine id (from `lifeboat machines`).
        machine: String,
    },
    /// Revokes a machine: its agent is refused from its next request on.
    Revoke {
        /// Machine id.
        machine: String,
    },
    /// Starts a test failover of a machine (an isolated copy at a point) and waits for it.
    TestFailover {
        /// Machine id.
        machine: String,
        /// `latest` (default: process what was received, then the newest point),
        /// `latest-processed`, `latest-app`, `latest-group`, or a point id.
        #[arg(long)]
        point: Option<String>,
        /// Return once the job started instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Fails a machine over (its source is taken to be lost) and waits for the VM. Again,
    /// before commit, to use another point.
    Failover {
        /// Machine id.
        machine: String,
        /// `latest` (default: process what was received, then the newest point),
        /// `latest-processed`, `latest-app`, `latest-group`, or a point id.
        #[arg(long)]
        point: Option<String>,
        /// Return once the job started instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Commits a failed-over machine: its recovery points are deleted, the VM stays.
    Commit {
        /// Machine id.
        machine: String,
        /// Return once the job started instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Reprotects a committed failover: the original machine's disks are brought to the
    /// failed-over ones (run `lifeboat-agent reprotect` there), or with `--to`, new disks
    /// at another target (failback then makes a VM there); waits for the first pass.
    Reprotect {
        /// Machine id.
        machine: String,
        /// Another loaded target plugin to fail back into (`vmware`), instead of the
        /// original machine.
        #[arg(long)]
        to: Option<String>,
        /// With `--to`: the new VM's name (default `lb-<machine id>`).
        #[arg(long, requires = "to")]
        vm_name: Option<String>,
        /// With `--to`: the network (port group) every interface of the new VM goes on
        /// (default: the machine's network mapping, `lifeboat vm-spec`).
        #[arg(long, requires = "to")]
        network: Option<String>,
        /// With `--to` and `--vm-name`: that VM exists (the machine's original VM, powered
        /// off); its own disks are written and failback starts it.
        #[arg(long, requires = "vm_name")]
        existing_vm: bool,
        /// Return once the job started instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Fails a reprotected machine back: stops the failed-over VM, waits for the final
    /// pass (the agent's, or into another target the appliance's own), and replicates
    /// forward again.
    Failback {
        /// Machine id.
        machine: String,
        /// Return once the job started instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Failovers and their states.
    Failovers,
    /// Alerts that hold now (RPO, silent agents, cache, CPU, memory, plugins).
    Alerts,
    /// The appliance's plugins, loaded and refused.
    Plugins,
    /// Consistency groups and their points.
    Groups,
    /// Defines or deletes a consistency group (the appliance owns membership: agents take
    /// part only in the group defined here).
    Group {
        #[command(subcommand)]
        cmd: GroupCmd,
    },
    /// Recovery plans: list, set from a JSON file, delete, run, continue a manual step.
    Plan {
        #[command(subcommand)]
        cmd: PlanCmd,
    },
    /// Replication policies: list, set, delete, assign to a machine.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// The VM a failover of a machine makes; with options, sets it (the options replace
    /// the earlier settings as a whole; what is not given comes from the agent's detection).
    VmSpec {
        /// Machine id.
        machine: String,
        /// `bios` or `uefi`.
        #[arg(long)]
        firmware: Option<String>,
        /// Virtual CPUs.
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory in MiB.
        #[arg(long)]
        memory_mib: Option<u64>,
        /// The disk index to boot from.
        #[arg(long)]
        boot_disk: Option<u32>,
        /// Network mapping, one per interface: `SOURCE=NETWORK[,ip=CIDR][,mac=MAC]`
        /// (replaces the whole mapping).
        #[arg(long = "nic")]
        nics: Vec<String>,
    },
    /// Removes a test failover's VM and disks and waits for it.
    Cleanup {
        /// Test failover id (from `lifeboat test-failovers`).
        id: String,
    },
    /// Test failovers, cleaned up or not.
    TestFailovers,
    /// Jobs, newest first, or one of them.
    Jobs {
        /// Job number.
        id: Option<u64>,
    },
    /// Registration passphrases.
    Passphrase {
        #[command(subcommand)]
        cmd: PassphraseCmd,
    },
    /// The appliance's name and the address agents are told to send data to; with options,
    /// sets them (what is not given stays).
    Appliance {
        /// The name the web UI shows.
        #[arg(long)]
        name: Option<String>,
        /// https://HOST:PORT where agents reach the process server (given to agents that
        /// register from now on).
        #[arg(long)]
        agent_url: Option<String>,
    },
    /// The one-line command that installs, registers and starts the agent on a Debian or
    /// Ubuntu machine (with the packages the appliance serves at /downloads/).
    InstallCommand {
        /// The address machines reach the appliance at, https://HOST[:PORT] (default: the
        /// one this session logged in to).
        #[arg(long)]
        origin: Option<String>,
        /// Also make a registration passphrase (the unused ones stop working) and put it in
        /// the command, for running it unattended.
        #[arg(long)]
        with_passphrase: bool,
    },
    /// The appliance's certificate authorities: status, and rotation without registering
    /// agents again (steady → introducing → retiring → steady).
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// The recovery passphrase the catalogue at the target is sealed under.
    RecoveryPassphrase {
        #[command(subcommand)]
        cmd: RecoveryCmd,
    },
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum MachinesCmd {
    /// Installs, registers and starts the agent on a machine over SSH (push install): the
    /// appliance logs in, checks the host key, the distribution, systemd and the disks,
    /// copies the agent's package and installs it. Without --host-key the appliance names
    /// the key the host presents and, on a terminal, asks whether to trust it.
    Install(InstallArgs),
}

#[derive(clap::Args)]
struct InstallArgs {
    /// USER@HOST: root, or a user who may sudo.
    #[arg(long, value_name = "USER@HOST")]
    ssh: String,
    /// SSH port.
    #[arg(long, default_value_t = 22)]
    port: u16,
    /// An OpenSSH private key file (its passphrase from LIFEBOAT_SSH_KEY_PASSPHRASE).
    #[arg(long, conflicts_with = "password_stdin")]
    key: Option<std::path::PathBuf>,
    /// Read the password (also given to sudo) from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// The host key's fingerprint, SHA256:… as `ssh-keygen -lf` prints it on the machine.
    #[arg(long)]
    host_key: Option<String>,
    /// A disk to protect (repeat); default: every whole disk of the machine.
    #[arg(long = "disk", value_name = "PATH")]
    disks: Vec<String>,
    /// Keep the credentials on the appliance (sealed) for later installs to this host.
    #[arg(long)]
    keep_credentials: bool,
    /// https://HOST[:PORT] the machine reaches this appliance at (default: the address this
    /// session uses).
    #[arg(long)]
    appliance_url: Option<String>,
}

#[derive(Subcommand)]
enum PassphraseCmd {
    /// How many passphrases are unused.
    Status,
    /// Makes a new one-time passphrase; the unused ones stop working.
    Rotate,
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Creates or replaces a group: its members cut points together, the coordinator runs
    /// the rounds (its agent's `[group]` table says `coordinator = true`).
    Set {
        /// Group name (the `[group] name` of the members' agents).
        name: String,
        /// The coordinating member's machine id.
        #[arg(long)]
        coordinator: String,
        /// A member's machine id (repeat; the coordinator may be listed or not).
        #[arg(long = "member", required = true)]
        members: Vec<String>,
    },
    /// Deletes a group: its members cut no more group points.
    Delete {
        /// Group name.
        name: String,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Every policy with the machines that use it.
    List,
    /// Creates or replaces a policy (what is not given takes its default).
    Set {
        /// Policy name (`default` is what machines use until given another).
        name: String,
        /// RPO warning threshold, e.g. 15m.
        #[arg(long)]
        rpo_warning: Option<String>,
        /// RPO critical threshold, e.g. 30m.
        #[arg(long)]
        rpo_critical: Option<String>,
        /// Alert once an agent is silent this long, e.g. 15m.
        #[arg(long)]
        silent: Option<String>,
        /// Interval between crash-consistent points (the agents' cycle), e.g. 5m.
        #[arg(long)]
        crash_interval: Option<String>,
        /// Compression level for the machine's data (zstd: -7 to 22).
        #[arg(long, allow_hyphen_values = true)]
        compression_level: Option<i32>,
        /// Interval between app-consistent points (agents with quiescers), e.g. 1h; 0 = every cut.
        #[arg(long)]
        app_interval: Option<String>,
        /// Network cap of the machines' agents in megabits per second (windows by time of
        /// day: PUT /api/v1/policies/{name} with `bandwidth.schedule`).
        #[arg(long)]
        bandwidth_mbps: Option<f64>,
        /// `on` (the default) or `off`: whether the machines' data is sealed by the cipher.
        #[arg(long)]
        encryption: Option<String>,
        /// Tiered retention, youngest first: EVERY:FOR pairs, e.g. `0:4h,1h:24h,1d:7d`
        /// (every point for 4 h, hourly for 24 h, daily for 7 days).
        #[arg(long)]
        retention: Option<String>,
    },
    /// Deletes a policy no machine uses.
    Delete {
        /// Policy name.
        name: String,
    },
    /// Gives a machine a policy.
    Assign {
        /// Machine id.
        machine: String,
        /// Policy name.
        policy: String,
    },
}

#[derive(Subcommand)]
enum PlanCmd {
    /// Every plan.
    List,
    /// Creates or replaces a plan from a JSON file (`{"groups": [{"machines": [...],
    /// "pre": [{"script": "..."}], "post": [{"plugin": "..."}, {"manual": "..."}]}]}`).
    Set {
        /// Plan name.
        name: String,
        /// The plan as JSON (`-` for standard input).
        file: PathBuf,
    },
    /// Deletes a plan.
    Delete {
        /// Plan name.
        name: String,
    },
    /// Runs a plan (a test failover unless --failover) and waits for it.
    Run {
        /// Plan name.
        name: String,
        /// A real failover instead of a test failover.
        #[arg(long)]
        failover: bool,
        /// The point choice for every machine (default latest).
        #[arg(long)]
        point: Option<String>,
        /// Return once the job started instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Confirms the manual step a plan's job waits on.
    Continue {
        /// The plan's job number.
        job: u64,
        /// The step's number (the job's message shows it): refused if the job waits on
        /// another one.
        #[arg(long)]
        step: Option<u32>,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// The CAs, the rotation phase, and each machine's certificate.
    Status,
    /// The next rotation step.
    Rotate {
        /// Retire the old CA even though some machines have not renewed (they are refused).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum RecoveryCmd {
    /// Whether one is set, and when the catalogue was last written at the target.
    Status,
    /// Sets it (from LIFEBOAT_RECOVERY_PASSPHRASE or the first line of standard input).
    Set,
}

#[derive(clap::Args)]
struct Connect {
    /// The configuration server, e.g. https://appliance.example:443.
    #[arg(long)]
    url: String,
    /// The appliance CA's fingerprint (`lifeboat-appliance fingerprint`), pinned.
    #[arg(long)]
    fingerprint: String,
    /// Administrator name.
    #[arg(long, default_value = "admin")]
    name: String,
}

/// Runs the command (all but `completions`).
fn run(cli: &Cli) -> Result<Output, Failure> {
    match &cli.cmd {
        Cmd::Setup { connect, setup_token } => account::setup(cli, connect, setup_token),
        Cmd::Login(c) => account::login(cli, c),
        Cmd::Logout => account::logout(cli),
        Cmd::Whoami => account::whoami(cli),
        Cmd::Machines { cmd: None } => machines::machines(cli),
        Cmd::Machines { cmd: Some(MachinesCmd::Install(args)) } => machines::install(cli, args),
        Cmd::Points { machine } => machines::points(cli, machine),
        Cmd::Revoke { machine } => machines::revoke(cli, machine),
        Cmd::TestFailover { machine, point, no_wait } => {
            failover::test_failover(cli, machine, point, *no_wait)
        }
        Cmd::Failover { machine, point, no_wait } => {
            failover::failover(cli, machine, point, *no_wait)
        }
        Cmd::Commit { machine, no_wait } => failover::commit(cli, machine, *no_wait),
        Cmd::Reprotect { machine, to, vm_name, network, existing_vm, no_wait } => {
            let body = lifeboat_api::ReprotectRequest {
                to: to.clone(),
                vm_name: vm_name.clone(),
                network: network.clone(),
                existing_vm: *existing_vm,
            };
            failover::reverse(cli, "reprotect", machine, Some(&body), *no_wait)
        }
        Cmd::Failback { machine, no_wait } => {
            failover::reverse(cli, "failback", machine, None, *no_wait)
        }
        Cmd::Failovers => failover::failovers(cli),
        Cmd::Alerts => policies::alerts(cli),
        Cmd::Plugins => machines::plugins(cli),
        Cmd::Groups => groups::groups(cli, None),
        Cmd::Group { cmd } => groups::groups(cli, Some(cmd)),
        Cmd::Plan { cmd } => plans::plan(cli, cmd),
        Cmd::Policy { cmd } => policies::policy(cli, cmd),
        Cmd::VmSpec { machine, firmware, cpus, memory_mib, boot_disk, nics } => machines::vm_spec(
            cli,
            machines::VmSpecArgs { machine, firmware, cpus, memory_mib, boot_disk, nics },
        ),
        Cmd::Cleanup { id } => failover::cleanup(cli, id),
        Cmd::TestFailovers => failover::test_failovers(cli),
        Cmd::Jobs { id } => failover::jobs(cli, *id),
        Cmd::Passphrase { cmd } => machines::passphrase(cli, cmd),
        Cmd::Appliance { name, agent_url } => {
            machines::appliance(cli, name.as_deref(), agent_url.as_deref())
        }
        Cmd::InstallCommand { origin, with_passphrase } => {
            machines::install_command(cli, origin.as_deref(), *with_passphrase)
        }
        Cmd::Ca { cmd } => ca::ca(cli, cmd),
        Cmd::RecoveryPassphrase { cmd } => ca::recovery_passphrase(cli, cmd),
        Cmd::Completions { .. } => unreachable!("handled before"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Completions { shell } = cli.cmd {
        clap_complete::generate(shell, &mut Cli::command(), "lifeboat", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    match run(&cli) {
        Ok(out) => {
            if cli.json {
                match out.json {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("lifeboat: {e}");
                        return ExitCode::from(1);
                    }
                }
            } else if !out.text.is_empty() {
                println!("{}", out.text);
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("lifeboat: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
