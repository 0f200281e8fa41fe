//! `dd_speedo`: speedometers per client and per source (see `ddmon::speedo`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    ddmon::speedo::main(ddmon::speedo::Args::parse())
}
