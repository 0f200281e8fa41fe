//! `dd_web`: live speedometers, a live tail the broker authorises, Prometheus metrics. See
//! `ddmon::web`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ddmon::web::main(ddmon::web::Args::parse())
}
