//! `dd_status`: list every running ddmon daemon. See `ddmon::status`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ddmon::status::main(ddmon::status::Args::parse())
}
