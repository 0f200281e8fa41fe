//! `dd_log2source`: route `log` into per-source `log_<source>` exchanges. See `ddmon::route`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ddmon::route::main(ddmon::route::Args::parse())
}
