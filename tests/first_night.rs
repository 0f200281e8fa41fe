//! Issue 17, "An operator's first night": each rough edge, tried as a new user would, on the
//! real broker. The error says what is wrong, names the object and how to mend it; nothing is
//! created when a check fails; the help says what a first reader needs.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `dd_log --print-config > f.toml; dd_log --config f.toml`: the masked password read back is
/// refused in one line (exit 2), not sent as a password; the printed file says where the
/// password came from, in a comment that reads back.
#[test]
fn a_masked_password_read_back_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.toml");
    let out = dd_log()
        .env_remove("DD_PASSWORD")
        .arg("--print-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("# broker password from the DD_BROKER URL (masked as ****"),
        "{text}"
    );
    assert!(text.contains("guest:****@127.0.0.1"), "{text}");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dd_log"))
        .env_remove("DD_BROKER")
        .env_remove("DD_PASSWORD")
        .env_remove("RUST_LOG")
        .args(["-n", "1", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "dd_log: error: invalid broker url: the password in the [broker] url of {} is ****, \
             the mask --print-config writes",
            file.display()
        )),
        "{err}"
    );
    // the real password given beside the file: it runs
    let out = Command::new(env!("CARGO_BIN_EXE_dd_log"))
        .env_remove("DD_BROKER")
        .env("DD_PASSWORD", "guest")
        .env_remove("RUST_LOG")
        .args(["--print-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("# broker password from DD_PASSWORD"));
}

/// A wrong `DD_PASSWORD` beside the right password in the URL: the refusal says the password
/// came from DD_PASSWORD (and a password file, from that file).
#[tokio::test]
async fn a_refusal_says_where_the_password_came_from() {
    let _ = connect().await;
    let out = dd_log()
        .env("DD_PASSWORD", "wrong-one")
        .args(["-n", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("ACCESS_REFUSED") && err.trim_end().ends_with("; password from DD_PASSWORD"),
        "{err}"
    );
    assert!(!err.contains("wrong-one"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "wrong-two\n").unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = dd_log()
        .env("DD_PASSWORD", "guest")
        .arg("--password-file")
        .arg(&file)
        .args(["-n", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.trim_end().ends_with(&format!(
            "; password from the password file {}",
            file.display()
        )),
        "{err}"
    );
    let out = dd_log()
        .env_remove("DD_PASSWORD")
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with("# broker password from the DD_BROKER URL")
    );
}

/// Run dd_log on `exchange` through queue `name` until it consumes `full`, then stop it.
async fn consume_then_stop(
    conn: &lapin::Connection,
    exchange: &str,
    name: &str,
    full: &str,
) -> (i32, Vec<String>, String) {
    let mut c = dd_log();
    c.args(["--exchange", exchange, "--queue", name]);
    let run = Running::spawn(c);
    wait_for_consumers(conn, full, 1).await;
    run.terminate();
    run.finish(10)
}

/// A mistyped `--exchange`: the exchange it had to declare is a warning at the default level.
#[tokio::test]
async fn declaring_a_missing_exchange_is_a_warning() {
    let conn = connect().await;
    let s = Scratch::new();
    let (name, full) = s.dd_log_queue();
    let (code, out, err) = consume_then_stop(&conn, &s.exchange, &name, &full).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty());
    let warned: Vec<&str> = err.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warned.len(), 1, "{err}");
    assert!(
        warned[0].contains(&format!(
            "exchange \"{}\" did not exist: declared it (a durable topic exchange); check the name if nothing arrives",
            s.exchange
        )),
        "{err}"
    );
    // the second time it exists: nothing said
    let (code, _, err) = consume_then_stop(&conn, &s.exchange, &name, &full).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "", "{err}");
}

/// dd_log against a port where no broker listens: after its first failed attempts it says it
/// keeps trying (with the URL); a stop before it ever connected exits 1, saying so.
#[test]
fn an_interactive_dd_log_says_it_keeps_trying_and_a_stop_before_connecting_fails() {
    let port = free_port();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let mut c = Command::new(env!("CARGO_BIN_EXE_dd_log"));
    c.env("DD_BROKER", &url)
        .env_remove("RUST_LOG")
        .args(["-n", "1"]);
    let run = Running::spawn(c);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !run.stderr.lock().unwrap().contains("keeps trying") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            run.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .args(["-INT", &run.child.id().to_string()])
        .status();
    let (code, out, err) = run.finish(10);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty());
    let masked = format!("amqp://guest:****@127.0.0.1:{port}/%2f");
    assert!(
        err.contains(&format!(
            "dd_log keeps trying to reach {masked} (waits up to 30 s between attempts) until it answers or is stopped (Ctrl-C)"
        )),
        "{err}"
    );
    assert!(
        err.trim_end().ends_with(&format!(
            "dd_log: error: stopped before the broker at {masked} was ever reached"
        )),
        "{err}"
    );
    assert!(!err.contains("guest:guest"), "{err}");
}

/// `--queue cap --quorum` on an existing classic queue: the error names the queue and says how
/// to mend it (and the other way round).
#[tokio::test]
async fn a_queue_with_other_arguments_is_named_with_the_fix() {
    let conn = connect().await;
    let s = Scratch::new();
    let (name, full) = s.dd_log_queue();
    let out = dd_log()
        .args(["--exchange", &s.exchange, "--queue", &name, "-n", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = dd_log()
        .args([
            "--exchange",
            &s.exchange,
            "--queue",
            &name,
            "--quorum",
            "-n",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "dd_log: error: cannot read exchange \"{}\" through queue \"{full}\": broker refused: PRECONDITION_FAILED",
            s.exchange
        )),
        "{err}"
    );
    assert!(
        err.trim_end().ends_with(&format!(
            "the queue \"{full}\" already exists with other arguments: delete it (rabbitmqctl delete_queue {full}, losing what it holds) or drop --quorum to use it as it is"
        )),
        "{err}"
    );
    // the queue is still there, as it was
    assert!(queue_counts(&conn, &full).await.is_some());
}

/// `--declare-source NAME` with no password file for a user that does not exist: checked
/// first, nothing created, the flag to give said (exit 2); with the management API down: its
/// URL, the cause, and how to enable it (exit 1), nothing created either.
#[tokio::test]
async fn declare_source_checks_before_it_creates() {
    let conn = connect().await;
    let id = unique("night").replace('.', "-");
    let sandbox = Sandbox::new(&id, vec![format!("{id}-src")]).await;
    let admin = url("guest", "guest", &sandbox.vhost);
    let source = &sandbox.users[0];
    let out = dd_log2source()
        .env("DD_BROKER", &admin)
        .args(["--declare-source", source])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.trim_end().ends_with(&format!(
            "dd_log2source: error: invalid --declare-source: the user \"{source}\" does not exist: give --source-password-file FILE (its first line the password) to create it"
        )),
        "{err}"
    );
    let port = free_port();
    let out = dd_log2source()
        .env("DD_BROKER", &admin)
        .args(["--declare-source", source])
        .args(["--management-url", &format!("http://127.0.0.1:{port}/api")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "dd_log2source: error: the management API at http://127.0.0.1:{port}/api does not answer ("
        )) && err.contains("Connection refused")
            && err.contains("enable it (rabbitmq-plugins enable rabbitmq_management) or give its address with --management-url"),
        "{err}"
    );
    // nothing was created: no exchange log_<source> in the vhost
    let vconn = connect_url(&admin).await;
    let ch = vconn.create_channel().await.unwrap();
    let passive = lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = ch
        .exchange_declare(
            format!("log_{source}").as_str().into(),
            lapin::ExchangeKind::Topic,
            passive,
            Default::default(),
        )
        .await;
    assert!(found.is_err(), "log_{source} was created");
    let _ = vconn.close(200, "OK".into()).await;
    drop(conn);
}

/// dd_sim refuses figures that make no pump (exit 2, one line); nothing is published.
#[test]
fn dd_sim_refuses_a_share_outside_0_to_1() {
    for (flag, value, said) in [
        (
            "--error-rate",
            "2",
            "invalid --error-rate: 2 is not a share between 0 and 1",
        ),
        (
            "--error-rate",
            "-0.1",
            "invalid --error-rate: -0.1 is not a share between 0 and 1",
        ),
        (
            "--rate",
            "-5",
            "invalid --rate: -5 is not a rate (0 or more a second)",
        ),
        (
            "--duration",
            "0",
            "invalid --duration: must be more than 0 seconds",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_dd_sim"))
            .env("DD_BROKER", "amqp://guest:guest@127.0.0.1:1/%2f")
            .args([&format!("{flag}={value}"), "--count", "1"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        assert_eq!(stderr(&out), format!("dd_sim: error: {said}\n"));
        assert!(out.stdout.is_empty());
    }
}

/// At -v (a daemon's default level) a command says which broker and vhost it uses and where
/// its password came from: a URL without a vhost is the default vhost `/`, said.
#[test]
fn a_url_without_a_vhost_is_said_at_v() {
    let out = Command::new(env!("CARGO_BIN_EXE_dd_status"))
        .env("DD_BROKER", "amqp://guest:guest@127.0.0.1:5672")
        .env_remove("RUST_LOG")
        .env_remove("DD_PASSWORD")
        .args(["-v", "--wait", "0.2", "--exchange", &unique("test.none")])
        .output()
        .unwrap();
    let err = stderr(&out);
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("using the broker"))
        .collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(
        said[0].contains(
            "using the broker (password from the DD_BROKER URL); the URL names no vhost: the default vhost / is used"
        ) && said[0].contains("vhost=/")
            && said[0].contains("guest:****@127.0.0.1:5672"),
        "{err}"
    );
    // without -v, a command says nothing of it
    let out = Command::new(env!("CARGO_BIN_EXE_dd_status"))
        .env("DD_BROKER", "amqp://guest:guest@127.0.0.1:5672")
        .env_remove("RUST_LOG")
        .args(["--wait", "0.2", "--exchange", &unique("test.none")])
        .output()
        .unwrap();
    assert!(!stderr(&out).contains("using the broker"));
}
