//! `dd_watchdog`: transfers in flight per node, and what a dead node lost (see
//! `ddmon::watchdog`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    ddmon::watchdog::main(ddmon::watchdog::Args::parse())
}
