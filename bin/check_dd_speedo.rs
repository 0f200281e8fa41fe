//! `check_dd_speedo`: the Nagios / Monitoring Plugins check of dd_speedo (see
//! `ddmon::nagios`). A usage error is UNKNOWN (exit 3), as the plugin guidelines want.

use clap::Parser;

fn main() -> std::process::ExitCode {
    match ddmon::nagios::Args::try_parse() {
        Ok(args) => ddmon::nagios::main(args),
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            let first = e.to_string();
            let first = first
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            let usage = ddmon::nagios::Outcome::only(
                ddmon::nagios::Status::Unknown,
                &format!("usage: {first}"),
            );
            println!("{}", usage.text);
            std::process::ExitCode::from(3)
        }
    }
}
