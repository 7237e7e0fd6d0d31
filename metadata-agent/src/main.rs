//! `metadata-agent`: process metadata for network policy.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use metadata_agent::{client, hook_command, inspect, policy, run};

#[derive(Debug, Parser)]
#[command(
    name = "metadata-agent",
    version,
    about = "Process metadata labels for network policy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: resolve processes, serve the HTTP API, follow policy changes.
    Run(run::RunArgs),
    /// Print the labels of one process, resolved once, without a daemon.
    Inspect(inspect::InspectArgs),
    /// Check policy files, or test them against labels or a process.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Ask a running agent about a process, container, pod or cgroup.
    Get(client::GetArgs),
    /// Print (or follow) a running agent's events.
    Events(client::EventsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Manage the pinned kernel hook (`hook.pin: true`).
    #[command(subcommand)]
    Hook(hook_command::HookCommand),
    /// Moved to its own binary, `imds-mock` (the `imds-mock` crate).
    #[command(hide = true, disable_help_flag = true)]
    ImdsMock {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    collectors::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("metadata-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await.map(|()| true),
            Command::Inspect(args) => inspect::run(args).await.map(|()| true),
            Command::Policy(command) => policy::run(command).await,
            Command::ImdsMock { .. } => Err(anyhow::anyhow!(
                "the IMDS mock is a binary of its own now: run `imds-mock` (cargo run -p \
                 imds-mock, or its image; docs/imds-mock.md)"
            )),
            Command::Hook(command) => hook_command::run(command).map(|()| true),
            Command::Get(args) => client::get(args).await.map(|()| true),
            Command::Events(args) => client::events(args).await.map(|()| true),
            Command::Completions { shell } => {
                use clap::CommandFactory;
                let mut command = Cli::command();
                clap_complete::generate(
                    shell,
                    &mut command,
                    "metadata-agent",
                    &mut std::io::stdout(),
                );
                Ok(true)
            }
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("metadata-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}
