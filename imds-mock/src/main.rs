//! `imds-mock`: serves EC2, Azure and GCP instance metadata for CI pipelines and tests
//! (`docs/imds-mock.md`).

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "imds-mock",
    version,
    about = "A cloud instance metadata service (EC2, Azure, GCP) for CI pipelines and tests"
)]
struct Cli {
    #[command(flatten)]
    args: imds_mock::ImdsMockArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMDS_MOCK_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("imds-mock: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(imds_mock::run(cli.args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("imds-mock: {error:#}");
            ExitCode::FAILURE
        }
    }
}
