//! `lifeboat-agent`: parses the command line and hands over to the library. Exit codes: 0 ok,
//! 2 bad configuration or arguments, 1 failure at run time.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lifeboat_agent::config::AgentConfig;
use lifeboat_agent::registration::{self, RegisterOptions, RegisterOutcome};
use lifeboat_agent::run::{self, RunOptions};

/// Lifeboat agent: protects this machine's disks by shipping their changes to a Lifeboat
/// appliance.
#[derive(Debug, Parser)]
#[command(name = "lifeboat-agent", version, about)]
struct Cli {
    /// Log JSON lines instead of human-readable lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register this machine with an appliance (once; --force to register again).
    Register {
        /// The appliance's configuration server, https://HOST[:PORT].
        #[arg(long)]
        appliance: String,
        /// The appliance CA fingerprint shown by the appliance (sha256:...).
        #[arg(long)]
        fingerprint: String,
        /// The one-time registration passphrase (or set LIFEBOAT_PASSPHRASE).
        #[arg(long, env = "LIFEBOAT_PASSPHRASE", hide_env_values = true)]
        passphrase: String,
        /// Where the agent keeps its state; must match state_dir in the configuration.
        #[arg(long, default_value = "/var/lib/lifeboat-agent")]
        state_dir: PathBuf,
        /// Register again even if this machine is registered (its replication starts over).
        #[arg(long)]
        force: bool,
    },
    /// Protect the configured disks: cycles every interval_secs, until stopped.
    Run {
        /// The agent's configuration file.
        #[arg(long, default_value = "/etc/lifeboat/agent.toml")]
        config: PathBuf,
        /// Run one cycle, wait until the appliance acknowledged everything, and exit.
        #[arg(long)]
        once: bool,
    },
    /// Measure how fast the configured disks are written (MB/s, IOPS, write sizes), to size
    /// the link and the process server before protecting the machine. Needs root; needs no
    /// registration; does not replicate anything.
    Churn {
        /// The agent's configuration file (its `disks`).
        #[arg(long, default_value = "/etc/lifeboat/agent.toml")]
        config: PathBuf,
        /// How long to measure, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Seconds per sample.
        #[arg(long, default_value_t = 5)]
        every: u64,
        /// One JSON object per line (samples, then one summary per disk).
        #[arg(long)]
        json: bool,
        /// Send the profile to the appliance this agent is registered with
        /// (`lifeboat-appliance churn` lists it with the bandwidth it needs).
        #[arg(long)]
        report: bool,
    },
    /// Renews the agent's certificate now (and updates the trusted CAs); the running agent
    /// does it by itself before expiry and after a CA rotation.
    Renew {
        /// The agent's configuration file (its state_dir).
        #[arg(long, default_value = "/etc/lifeboat/agent.toml")]
        config: PathBuf,
    },
    /// After a failover (`lifeboat reprotect`, `lifeboat failback`): brings this machine's
    /// disks to what the failed-over disks hold, moving only the blocks that differ. Stop
    /// `lifeboat-agent run` first; start it again once failback is done.
    Reprotect {
        /// The agent's configuration file.
        #[arg(long, default_value = "/etc/lifeboat/agent.toml")]
        config: PathBuf,
        /// Keep making passes (every --every seconds) until failback's final one is done.
        #[arg(long)]
        watch: bool,
        /// Seconds between passes with --watch.
        #[arg(long, default_value_t = 60)]
        every: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match cli.command {
        Command::Register { appliance, fingerprint, passphrase, state_dir, force } => {
            let opts = RegisterOptions {
                appliance_url: appliance,
                fingerprint,
                passphrase,
                state_dir,
                force,
                hostname: None,
            };
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => return fail(1, &format!("cannot start the async runtime: {e}")),
            };
            match runtime.block_on(registration::register(&opts)) {
                Ok(RegisterOutcome::Registered(reg)) => {
                    println!(
                        "registered as machine {}; data goes to {}; state in {}",
                        reg.record.machine_id,
                        reg.record.process_server_url,
                        opts.state_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Ok(RegisterOutcome::AlreadyRegistered(rec)) => {
                    println!(
                        "already registered as machine {} with {} (state in {}); nothing to do. Use --force to register again (replication of this machine then starts over)",
                        rec.machine_id,
                        rec.appliance_url,
                        opts.state_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(if e.is_usage() { 2 } else { 1 }, &e.to_string()),
            }
        }
        Command::Churn { config, seconds, every, json, report } => {
            let cfg = match AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(2, &e.to_string()),
            };
            if every == 0 || seconds == 0 {
                return fail(2, "--seconds and --every must be at least 1");
            }
            let samples = lifeboat_agent::churn::profile(
                &cfg.disks,
                std::time::Duration::from_secs(seconds),
                std::time::Duration::from_secs(every),
                |s, path| {
                    if json {
                        println!("{}", serde_json::json!({"sample": s}));
                    } else {
                        println!("{}", s.line(path));
                    }
                },
            );
            match samples {
                Ok(samples) => {
                    for (i, path) in cfg.disks.iter().enumerate() {
                        let sum = lifeboat_agent::churn::summarize(i, &samples);
                        if json {
                            println!("{}", serde_json::json!({"summary": sum}));
                        } else {
                            println!(
                                "disk {i} {}: mean {:.1} MB/s ({:.0} Mbit/s before compression), peak {:.1} MB/s; mean {:.0} IOPS, peak {:.0}",
                                path.display(),
                                sum.mean_mb_per_s,
                                sum.mean_mb_per_s * 8.0,
                                sum.peak_mb_per_s,
                                sum.mean_iops,
                                sum.peak_iops
                            );
                        }
                    }
                    if report {
                        let r =
                            lifeboat_agent::churn::to_report(&cfg.disks, &samples, seconds as f64);
                        if let Err(e) = lifeboat_agent::churn::send_report(&cfg.state_dir, &r) {
                            return fail(
                                1,
                                &format!("cannot report the profile to the appliance: {e}"),
                            );
                        }
                        eprintln!(
                            "profile reported to the appliance (lifeboat-appliance churn lists it)"
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, &e),
            }
        }
        Command::Renew { config } => {
            let cfg = match AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(2, &e.to_string()),
            };
            match lifeboat_agent::renew::renew_now(&cfg.state_dir) {
                Ok(r) => {
                    println!(
                        "certificate renewed{}; a running agent picks it up at its next check or restart",
                        if r.trust { ", trusted CAs updated" } else { "" }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, &format!("{e:#}")),
            }
        }
        Command::Reprotect { config, watch, every } => {
            let cfg = match AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(2, &e.to_string()),
            };
            match lifeboat_agent::reverse::reprotect(
                &cfg,
                watch,
                std::time::Duration::from_secs(every.max(1)),
            ) {
                Ok(r) => {
                    println!(
                        "{} reverse pass(es): {} MiB compared, {} MiB received{}",
                        r.passes,
                        r.compared_bytes >> 20,
                        r.received_bytes >> 20,
                        if r.failed_back {
                            "; that was failback's final pass: once `lifeboat failback` is done, start `lifeboat-agent run` again"
                        } else {
                            ""
                        }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, &format!("{e:#}")),
            }
        }
        Command::Run { config, once } => {
            let cfg = match AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(2, &e.to_string()),
            };
            match run::run(&cfg, &config, RunOptions { once }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e.exit_code(), &e.to_string()),
            }
        }
    }
}

/// Logging as every Lifeboat binary does it (`lifeboat_common::logging`), except that on a
/// terminal log lines go through the progress bar's writer so they print above the bar.
fn init_logging(json: bool) {
    use std::io::IsTerminal as _;
    if json || !std::io::stderr().is_terminal() {
        lifeboat_common::logging::init(json);
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(lifeboat_agent::progress::LogWriter)
        .try_init();
}

fn fail(code: u8, message: &str) -> ExitCode {
    tracing::error!("{message}");
    eprintln!("lifeboat-agent: {message}");
    ExitCode::from(code)
}
