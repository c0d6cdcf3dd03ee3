//! node-agent: bootstraps one host of a private geth Clique chain on AWS and supervises its role.

mod cli;
mod config;
mod genesis;
mod identity;
mod logs;
mod plan;
mod run;
mod secrets;
mod storage;
mod supervisor;
mod sys;
mod version;

use clap::Parser;
use std::process::ExitCode;

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("NODE_AGENT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // journald stamps every line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
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
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::Run(args) => run::run(&args).await,
            cli::Command::Check { host, json } => run::check(&host, json).await,
            cli::Command::Version { json } => {
                version::print(json);
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node-agent: error: {}", identity::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
