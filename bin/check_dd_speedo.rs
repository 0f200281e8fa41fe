//! `check_dd_speedo`: the Nagios / Monitoring Plugins check of dd_speedo (see
//! `ddmon::nagios`). A usage error is UNKNOWN (exit 3), as the plugin guidelines want.

fn main() -> std::process::ExitCode {
    ddmon::nagios::plugin_main(ddmon::nagios::main, ddmon::nagios::Outcome::only)
}
