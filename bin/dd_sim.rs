//! `dd_sim`: play a data pump, publishing log records. See `ddmon::sim`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ddmon::sim::main(ddmon::sim::Args::parse())
}
