//! `dd_log`: print the pump's log messages, one line each, topic first. See `ddmon::log`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ddmon::log::main(ddmon::log::Args::parse())
}
