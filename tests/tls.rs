//! TLS: a RabbitMQ node of the test's own with a TLS listener whose certificate is signed by a
//! CA the test makes (openssl). Every tool connects with `amqps://` and `--tls-ca`, verifying
//! the certificate; a wrong CA, the system's CAs, or a host name the certificate does not name
//! are refused at once with a clear one-line message (a daemon does not retry them).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::node::RabbitNode;
use common::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is needed to make the test CA");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>.pem`, `<name>.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN=ddmon test {name}"),
        ],
    );
}

/// A RabbitMQ node with a TLS listener whose certificate the test's CA signs.
struct TlsBroker {
    _node: RabbitNode,
    dir: PathBuf,
    tls_port: u16,
}

impl TlsBroker {
    async fn start(dir: &Path) -> TlsBroker {
        make_ca(dir, "ca");
        make_ca(dir, "other-ca");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        std::fs::write(
            dir.join("ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext",
            ],
        );
        let tls = free_port();
        let d = dir.display();
        let mut node = RabbitNode::new(
            dir,
            &dir.join("home"),
            &format!("ddmon-tls-{tls}@localhost"),
            &format!(
                "listeners.ssl.default = {tls}\n\
                 ssl_options.cacertfile = {d}/ca.pem\nssl_options.certfile = {d}/server.pem\n\
                 ssl_options.keyfile = {d}/server.key\nssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n"
            ),
        );
        node.spawn();
        node.wait_up(120).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", tls)).is_err() {
            assert!(Instant::now() < deadline, "the TLS listener did not open");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        TlsBroker {
            _node: node,
            dir: dir.to_path_buf(),
            tls_port: tls,
        }
    }

    fn url(&self, host: &str) -> String {
        format!("amqps://guest:guest@{host}:{}/%2f", self.tls_port)
    }

    fn ca(&self, name: &str) -> String {
        self.dir.join(format!("{name}.pem")).display().to_string()
    }
}

fn bin(name: &str) -> &'static str {
    match name {
        "dd_log" => env!("CARGO_BIN_EXE_dd_log"),
        "dd_sim" => env!("CARGO_BIN_EXE_dd_sim"),
        "dd_status" => env!("CARGO_BIN_EXE_dd_status"),
        "dd_speedo" => env!("CARGO_BIN_EXE_dd_speedo"),
        "dd_log2source" => env!("CARGO_BIN_EXE_dd_log2source"),
        "dd_watchdog" => env!("CARGO_BIN_EXE_dd_watchdog"),
        "dd_web" => env!("CARGO_BIN_EXE_dd_web"),
        "check_dd_speedo" => env!("CARGO_BIN_EXE_check_dd_speedo"),
        other => panic!("{other}"),
    }
}

fn over_tls(name: &str, url: &str, ca: &str) -> Command {
    let mut c = Command::new(bin(name));
    c.env("DD_BROKER", url)
        .env("DD_TLS_CA", ca)
        .env_remove("RUST_LOG")
        .env_remove("DD_SPEEDO_STATE")
        .env_remove("DD_WATCHDOG_JOURNAL");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_speaks_tls_and_refuses_a_certificate_it_cannot_verify() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TlsBroker::start(dir.path()).await;
    let url = broker.url("localhost");
    let ca = broker.ca("ca");

    // the daemons, over amqps:// with the test's CA
    let daemons: Vec<Running> = [
        (
            "dd_log",
            vec![
                "--service",
                "--queue",
                "cap",
                "--topic",
                "v02.#",
                "--output",
            ],
        ),
        ("dd_log2source", vec![]),
        ("dd_speedo", vec!["--interval", "1"]),
        ("dd_watchdog", vec![]),
        ("dd_web", vec!["--listen", "127.0.0.1:0", "--poll", "1"]),
    ]
    .into_iter()
    .map(|(name, mut args)| {
        let out = dir.path().join("capture");
        let out = out.to_str().unwrap().to_string();
        let mut c = over_tls(name, &url, &ca);
        if name == "dd_log" {
            args.push(&out);
            c.args(&args);
        } else {
            c.args(&args);
        }
        Running::spawn(c)
    })
    .collect();
    let cfg = ddmon::config::BrokerConfig {
        url: url.clone(),
        tls_ca: Some(PathBuf::from(&ca)),
        ..Default::default()
    };
    let conn = ddmon::broker::raw::connect(&cfg, "ddmon-test")
        .await
        .unwrap();
    for q in [
        "q_guest.dd_log.cap",
        "q_guest.dd_log2source.route",
        "q_guest.dd_speedo.log",
        "q_guest.dd_watchdog.log",
    ] {
        wait_for_consumers(&conn, q, 1).await;
    }

    // dd_sim publishes through TLS; dd_log reads it back
    let out = over_tls("dd_sim", &url, &ca)
        .args(["--count", "300", "--rate", "0", "-q"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let captured = || -> usize {
        std::fs::read_dir(dir.path().join("capture"))
            .into_iter()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .map(|t| t.lines().count())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while captured() < 300 {
        assert!(
            Instant::now() < deadline,
            "captured {} of 300 over TLS",
            captured()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(captured(), 300);

    // dd_status sees the daemons; check_dd_speedo gets dd_speedo's answer
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = over_tls("dd_status", &url, &ca)
            .args(["--wait", "1", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let tools: std::collections::BTreeSet<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["tool"].as_str().map(String::from))
            .collect();
        if ["dd_log", "dd_log2source", "dd_speedo", "dd_watchdog"]
            .iter()
            .all(|t| tools.contains(*t))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dd_status over TLS saw {tools:?}"
        );
    }
    // (a dd_speedo whose first interval has not ended yet says so: UNKNOWN, asked again)
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(bin("check_dd_speedo"))
            .args(["--broker", &url, "--tls-ca", &ca, "--client", "client00"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.code() != Some(3) {
            break;
        }
        assert!(Instant::now() < deadline, "UNKNOWN over TLS: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    for d in &daemons {
        d.terminate();
    }
    for d in daemons {
        let (code, _, err) = d.finish(20);
        assert_eq!(code, 0, "{err}");
    }

    // refused at once, in one line, by a daemon as by a command: another CA, the system's
    // CAs, a host name the certificate does not name
    let other = broker.ca("other-ca");
    let wrong_host = broker.url("127.0.0.2");
    for (what, url, ca, expect) in [
        ("another CA", &url, Some(other.as_str()), "UnknownIssuer"),
        ("the system CAs", &url, None, "UnknownIssuer"),
        (
            "a wrong host",
            &wrong_host,
            Some(ca.as_str()),
            "not valid for name",
        ),
    ] {
        for tool in ["dd_speedo", "dd_log"] {
            let mut c = Command::new(bin(tool));
            c.env("DD_BROKER", url)
                .env_remove("DD_TLS_CA")
                .env_remove("RUST_LOG");
            if let Some(ca) = ca {
                c.args(["--tls-ca", ca]);
            }
            let started = Instant::now();
            let out = c.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{tool} with {what}: {err}");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{tool} retried {what}"
            );
            let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
            assert_eq!(errors.len(), 1, "{tool} with {what}: {err}");
            assert!(!err.contains("retrying"), "{tool} retried {what}: {err}");
            assert!(
                err.contains("certificate") && err.contains(expect),
                "{tool} with {what}: {err}"
            );
            assert!(!err.contains("guest:guest"), "{err}");
        }
    }
    drop(broker);
}
