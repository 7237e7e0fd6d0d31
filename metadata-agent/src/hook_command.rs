//! `metadata-agent hook`: the pinned kernel hook, outside a running agent.

use std::path::PathBuf;

use anyhow::Context;

use crate::config::Config;

/// `hook` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum HookCommand {
    /// Remove the pinned programs and maps (`hook.pin: true`): enforcement stops once no agent
    /// holds them. Stop the agent first, or it keeps enforcing until it exits.
    Detach(DetachArgs),
}

/// Options of `hook detach`.
#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// Configuration file, for `hook.pinPath`.
    #[arg(long, value_name = "FILE", env = "METADATA_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// The pin directory (overrides `hook.pinPath`).
    #[arg(long, value_name = "DIR")]
    pub pin_path: Option<PathBuf>,
}

/// Runs a `hook` subcommand; prints what it did.
pub fn run(command: HookCommand) -> anyhow::Result<()> {
    match command {
        HookCommand::Detach(args) => {
            let pin_path = match args.pin_path {
                Some(path) => path,
                None => match &args.config {
                    Some(path) => Config::load(path)?.hook.pin_path,
                    None => Config::default().hook.pin_path,
                },
            };
            let removed = kernel_hook::Hook::remove_pins(&pin_path)
                .with_context(|| format!("cannot remove the pins at {}", pin_path.display()))?;
            if removed {
                println!("removed the pinned hook at {}", pin_path.display());
            } else {
                println!("nothing pinned at {}", pin_path.display());
            }
            Ok(())
        }
    }
}
