//! node-agent: bootstraps one host of a private geth Clique chain on AWS and supervises its role.

// Leaves: no crate module below them.
mod backoff;
mod clock;
mod error;
mod host;
mod out;
mod sys;

// What the host is and what it is told.
mod chain;
mod cli;
mod config;
mod imds;
mod plan;

// What the boot and the runtime act on.
mod backup;
mod lease;
mod logs;
mod privileges;
mod secrets;
mod status;
mod storage;

// The pipeline: boot → serve; and the other commands.
mod boot;
mod cmd;
mod serve;

use clap::Parser;
use std::process::ExitCode;

/// The agent's own lines at info; the AWS SDK's only with `NODE_AGENT_LOG` (e.g. `debug`): the agent
/// reports every failure itself, in the user's terms, while the SDK's warnings print its internal structs
/// (700 characters of `ProviderError(ProviderError { source: ... })` per retry).
const DEFAULT_LOG: &str = "node_agent=info";

fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{fmt, EnvFilter, Layer as _};
    let filter =
        EnvFilter::try_from_env("NODE_AGENT_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG));
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // journald stamps every line itself.
    let stderr = if std::env::var_os("JOURNAL_STREAM").is_some() {
        stderr.without_time().boxed()
    } else {
        stderr.boxed()
    };
    // The agent's own log file (shipped like a child's); its writer stamps each line.
    let file = fmt::layer()
        .with_writer(logs::AgentLog)
        .with_ansi(false)
        .with_target(false)
        .without_time();
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .init();
}

fn main() -> ExitCode {
    // No secret in a core dump: the agent holds secret values in memory, and so does geth (the sealer's
    // unlocked key).
    sys::no_core_dumps();
    let cli = cli::Cli::parse();
    init_tracing();
    // One thread: PR_SET_PDEATHSIG fires when the thread that forked a child exits, so children must be
    // spawned from a thread that lives as long as the agent.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("node-agent: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let cli::Command::Status(args) = &cli.command {
        return ExitCode::from(runtime.block_on(status::command(args)));
    }
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::Run(args) => boot::run(&args).await.map_err(|e| error::error_chain(&e)),
            cli::Command::Prepare(args) => boot::prepare(&args)
                .await
                .map_err(|e| error::error_chain(&e)),
            cli::Command::Check { host, json } => boot::check(&host, json)
                .await
                .map_err(|e| error::error_chain(&e)),
            cli::Command::Version { json } => {
                cmd::version::print(json).map_err(|e| error::error_chain(&e))
            }
            cli::Command::Status(_) => Ok(()),
            cli::Command::GetSecret(args) => cmd::getsecret::run(&args)
                .await
                .map_err(|e| error::error_chain(&e)),
            cli::Command::IamPolicy(args) => {
                cmd::iampolicy::run(&args).map_err(|e| error::error_chain(&e))
            }
            cli::Command::Install(args) => {
                cmd::install::run(&args).map_err(|e| error::error_chain(&e))
            }
            cli::Command::Backup(args) => cmd::backup::backup(&args)
                .await
                .map_err(|e| error::error_chain(&e)),
            cli::Command::Restore(args) => cmd::backup::restore(&args)
                .await
                .map_err(|e| error::error_chain(&e)),
            cli::Command::Cleanup { config } => boot::cleanup(config.as_deref())
                .await
                .map_err(|e| error::error_chain(&e)),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node-agent: error: {e}");
            ExitCode::FAILURE
        }
    }
}
