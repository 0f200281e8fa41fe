//! Passwords: from the URL, `--password-file` or `DD_PASSWORD`; never printed, logged (even at
//! -vv), shown by `--print-config` or visible in `ps`; a password file others may read gives a
//! warning; a password on the command line gives one too. Against the real broker, with a
//! real user made for the test in a throw-away vhost.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;

fn secret() -> String {
    format!("S3cret-{:016x}", ddmon::broker::random_u64())
}

fn dd_log_as(url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dd_log"));
    c.env("DD_BROKER", url)
        .env_remove("DD_PASSWORD")
        .env_remove("DD_PASSWORD_FILE")
        .env_remove("RUST_LOG");
    c
}

#[tokio::test]
async fn passwords_come_from_a_file_or_the_environment_and_are_never_shown() {
    let _ = connect().await;
    let id = unique("secret").replace('.', "-");
    let sb = Sandbox::new(&id, vec![id.clone()]).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = secret();
    declare_sources(
        &url("guest", "guest", &sb.vhost),
        &[(id.as_str(), &pw)],
        dir.path(),
    );
    let no_password = format!("amqp://{id}@127.0.0.1:5672/{}", sb.vhost);
    let exchange = format!("log_{id}");
    let file = dir.path().join("pw");
    std::fs::write(&file, format!("{pw}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();

    // --password-file: logs in (a durable queue of the user's own, read at once), at -vv
    let out = dd_log_as(&no_password)
        .args(["--password-file", file.to_str().unwrap()])
        .args(["--exchange", &exchange, "--queue", "a", "-n", "0", "-vv"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains(&pw), "the password was logged:\n{err}");
    assert!(!err.contains("readable by others"), "{err}");

    // DD_PASSWORD
    let out = dd_log_as(&no_password)
        .env("DD_PASSWORD", &pw)
        .args(["--exchange", &exchange, "--queue", "a", "-n", "0"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --print-config masks it, whichever way it came
    for args in [vec!["--password-file", file.to_str().unwrap()], vec![]] {
        let out = dd_log_as(&no_password)
            .env("DD_PASSWORD", &pw)
            .args(&args)
            .arg("--print-config")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0));
        assert!(text.contains(&format!("{id}:****@")), "{text}");
        assert!(!text.contains(&pw), "{text}");
    }

    // a wrong password: the broker's refusal in one line, no password in it
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-it\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = dd_log_as(&no_password)
        .args(["--password-file", wrong.to_str().unwrap()])
        .args(["--exchange", &exchange, "-n", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("refused") && !err.contains("not-it"), "{err}");

    // a file others may read: a warning naming it (and still used)
    let open = dir.path().join("open");
    std::fs::write(&open, format!("{pw}\n")).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = dd_log_as(&no_password)
        .args(["--password-file", open.to_str().unwrap()])
        .args(["--exchange", &exchange, "--queue", "a", "-n", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("readable by others") && err.contains("open"),
        "{err}"
    );
    assert!(!err.contains(&pw));

    // an empty or missing file is a configuration mistake (exit 2), in one line
    let out = dd_log_as(&no_password)
        .args(["--password-file", "/nonexistent/pw", "-n", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // ps: a running daemon's command line and its logs hold no password
    let mut tail = dd_log_as(&no_password);
    tail.args(["--password-file", file.to_str().unwrap()])
        .args(["--exchange", &exchange]);
    let running = Running::spawn(tail);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", running.child.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(&pw));
    running.terminate();
    let (code, _, err) = running.finish(15);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains(&pw));

    // a password on the command line works, with a warning that ps shows it
    let with_password = url(&id, &pw, &sb.vhost);
    let out = Command::new(env!("CARGO_BIN_EXE_dd_log"))
        .env_remove("DD_BROKER")
        .args(["--broker", &with_password])
        .args(["--exchange", &exchange, "--queue", "a", "-n", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("ps shows it"), "{err}");
    assert!(!err.contains(&pw), "{err}");
    drop(sb);
}

#[test]
fn check_dd_speedo_reads_a_password_file_too() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_check_dd_speedo"))
        .args(["--password-file", file.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "UNKNOWN: {text}");
    assert!(text.contains("is empty"), "{text}");
}

/// SPEC §4: a refused login is a mistake no retry can mend: every tool, daemons included,
/// says so in one line on stderr (check_dd_speedo: its UNKNOWN line) and exits non-zero at
/// once, with no password in what it says.
#[tokio::test]
async fn a_refused_login_ends_every_tool_at_once_in_one_line() {
    let _ = connect().await; // the broker is there: the refusal is the login's
    let pw = secret();
    let wrong = format!("amqp://guest:{pw}@127.0.0.1:5672/%2f");
    let tools: [(&str, &str, &[&str]); 8] = [
        ("dd_log", env!("CARGO_BIN_EXE_dd_log"), &["-n", "1"]),
        ("dd_log2source", env!("CARGO_BIN_EXE_dd_log2source"), &[]),
        ("dd_speedo", env!("CARGO_BIN_EXE_dd_speedo"), &[]),
        (
            "dd_watchdog",
            env!("CARGO_BIN_EXE_dd_watchdog"),
            &["--no-journal"],
        ),
        (
            "dd_web",
            env!("CARGO_BIN_EXE_dd_web"),
            &["--listen", "127.0.0.1:0"],
        ),
        ("dd_status", env!("CARGO_BIN_EXE_dd_status"), &[]),
        ("dd_sim", env!("CARGO_BIN_EXE_dd_sim"), &["--count", "10"]),
        (
            "check_dd_speedo",
            env!("CARGO_BIN_EXE_check_dd_speedo"),
            &[],
        ),
    ];
    for (name, bin, args) in tools {
        let mut c = Command::new(bin);
        c.env("DD_BROKER", &wrong)
            .env_remove("DD_PASSWORD")
            .env_remove("DD_PASSWORD_FILE")
            .env_remove("RUST_LOG")
            .env_remove("DD_SPEEDO_STATE")
            .args(args);
        let started = std::time::Instant::now();
        let run = Running::spawn(c);
        let (code, out, err) = run.finish(20);
        let out = out.join("\n");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{name} took {took:?}");
        let said = if name == "check_dd_speedo" {
            assert_eq!(code, 3, "{name}: {out}{err}");
            out
        } else {
            assert_eq!(code, 1, "{name}: {out}{err}");
            assert!(out.is_empty(), "{name} printed on stdout: {out}");
            err
        };
        // the refusal in one line (a daemon's start-up log lines, such as dd_speedo's "no
        // --state-file" warning, may come before it)
        let refusals: Vec<&str> = said.lines().filter(|l| l.contains("refused")).collect();
        assert_eq!(refusals.len(), 1, "{name}: {said}");
        assert!(
            said.lines()
                .all(|l| l == refusals[0] || l.contains(" WARN ") || l.contains(" INFO ")),
            "{name}: {said}"
        );
        assert!(!said.contains(&pw), "{name} shows the password: {said}");
    }
}
