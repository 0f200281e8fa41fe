//! `dd_log2source --declare-source` with real users in a throw-away vhost: a source reads its
//! own `log_<source>` with dd_log; binding to another source's exchange or to `log` is refused
//! by the broker, and dd_log says so in one line and exits non-zero.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;

#[tokio::test]
async fn a_source_reads_only_its_own_exchange() {
    let _ = connect().await;
    let id = unique("perm").replace('.', "-");
    let sandbox = Sandbox::new(&id, vec![format!("{id}-a"), format!("{id}-b")]).await;
    let admin = url("guest", "guest", &sandbox.vhost);
    let dir = tempfile::tempdir().unwrap();
    declare_sources(
        &admin,
        &[
            (sandbox.users[0].as_str(), "pw-A-1"),
            (sandbox.users[1].as_str(), "pw-B-2"),
        ],
        dir.path(),
    );
    let (a, b) = (&sandbox.users[0], &sandbox.users[1]);
    let a_url = url(a, "pw-A-1", &sandbox.vhost);

    // A reads its own exchange: start a durable capture queue, then the admin publishes
    let queue = "own";
    let out = dd_log()
        .env("DD_BROKER", &a_url)
        .args([
            "--exchange",
            &format!("log_{a}"),
            "--queue",
            queue,
            "-n",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (key, headers, body) = v02_messages(&sim_records(1, 1)).remove(0);
    let msg = (key.clone(), headers.clone(), body.clone());
    publish_on(&admin, &format!("log_{a}"), vec![msg]).await;
    let out = dd_log()
        .env("DD_BROKER", &a_url)
        .args([
            "--exchange",
            &format!("log_{a}"),
            "--queue",
            queue,
            "-n",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        expected_line(&key, &headers, &body) + "\n"
    );

    // A may not read B's exchange, nor the common log
    for forbidden in [format!("log_{b}"), "log".to_string()] {
        let out = Command::new(env!("CARGO_BIN_EXE_dd_log"))
            .env("DD_BROKER", &a_url)
            .args(["--exchange", &forbidden, "-n", "1"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "reading {forbidden}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("ACCESS_REFUSED") && err.contains(&forbidden),
            "{err}"
        );
        assert!(!err.contains("pw-A-1"), "{err}");
    }
}
