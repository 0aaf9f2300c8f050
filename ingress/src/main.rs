// A faster allocator: the webhook path allocates per request (form fields, JSON payload).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use ingress::cli::{self, Cli, Command};

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command.unwrap_or(Command::Serve);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli::runtime_threads(&command))
        .enable_all()
        .build()?
        .block_on(cli::run(command))
}
