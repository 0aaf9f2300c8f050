//! `sms-sim`: see `sim::cli` for the commands.

fn main() -> anyhow::Result<()> {
    sim::cli::main()
}
