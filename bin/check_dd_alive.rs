//! `check_dd_alive`: the Nagios / Monitoring Plugins check of ddmon's own daemons (see
//! `ddmon::nagios::alive`). A usage error is UNKNOWN (exit 3), as the plugin guidelines want.

use clap::Parser;

fn main() -> std::process::ExitCode {
    match ddmon::nagios::alive::AliveArgs::try_parse() {
        Ok(args) => ddmon::nagios::alive::main(args),
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
            let usage = ddmon::nagios::alive::AliveOutcome::only(
                ddmon::nagios::Status::Unknown,
                &format!("usage: {first}"),
            );
            println!("{}", usage.text);
            std::process::ExitCode::from(3)
        }
    }
}
