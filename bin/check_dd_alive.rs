//! `check_dd_alive`: the Nagios / Monitoring Plugins check of ddmon's own daemons (see
//! `ddmon::nagios::alive`). A usage error is UNKNOWN (exit 3), as the plugin guidelines want.

fn main() -> std::process::ExitCode {
    ddmon::nagios::plugin_main(ddmon::nagios::alive::main, ddmon::nagios::alive::only)
}
