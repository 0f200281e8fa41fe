//! A RabbitMQ node of a test's own, from the installed `rabbitmq-server`: its own name, ports,
//! data directory and cookie (HOME), no plugins; stopped (with its process group) when dropped.
//! It can be stopped and started again on the same data (durable queues and persistent
//! messages survive), as an operator restarts a broker.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, stop_group};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// One node.
pub struct RabbitNode {
    /// Its Erlang node name.
    pub name: String,
    /// Its AMQP port.
    pub port: u16,
    dir: PathBuf,
    home: PathBuf,
    dist: u16,
    child: Option<Child>,
}

impl RabbitNode {
    /// Configure a node `name` in `dir` (its config: the AMQP listener, then `extra_conf`),
    /// with `home` holding the Erlang cookie (share it between nodes of one cluster).
    pub fn new(dir: &Path, home: &Path, name: &str, extra_conf: &str) -> RabbitNode {
        assert!(
            Path::new(SERVER).exists(),
            "NO RABBITMQ SERVER at {SERVER}: scripts/broker-up installs it"
        );
        let (port, dist) = (free_port(), free_port());
        let nd = dir.join(name.split('@').next().unwrap_or(name));
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(nd.join(sub)).unwrap();
        }
        std::fs::create_dir_all(home).unwrap();
        std::fs::write(
            nd.join("rabbitmq.conf"),
            format!("listeners.tcp.default = {port}\n{extra_conf}"),
        )
        .unwrap();
        std::fs::write(nd.join("enabled_plugins"), "[].\n").unwrap();
        RabbitNode {
            name: name.to_string(),
            port,
            dir: nd,
            home: home.to_path_buf(),
            dist,
            child: None,
        }
    }

    /// Start the node's process (not waiting for it).
    pub fn spawn(&mut self) {
        let nd = &self.dir;
        let child = Command::new(SERVER)
            .current_dir(nd)
            .env("HOME", &self.home)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_DIST_PORT", self.dist.to_string())
            .env("RABBITMQ_CONFIG_FILE", nd.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", nd.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", nd.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", nd.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", nd.join("pid"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(nd.join("out")).unwrap())
            .stderr(std::fs::File::create(nd.join("err")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Wait until the node accepts AMQP connections.
    pub async fn wait_up(&self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.ctl(&["status"]).status.success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not start within {secs}s: {}",
                self.name,
                std::fs::read_to_string(self.dir.join("out")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Enable these plugins when the node starts (before `spawn`).
    pub fn enable_plugins(&self, plugins: &[&str]) {
        std::fs::write(
            self.dir.join("enabled_plugins"),
            format!("[{}].\n", plugins.join(",")),
        )
        .unwrap();
    }

    /// Start a single node and wait for it.
    pub async fn start(dir: &Path, name: &str) -> RabbitNode {
        let mut n = RabbitNode::new(dir, &dir.join("home"), name, "");
        n.spawn();
        n.wait_up(120).await;
        n
    }

    /// `rabbitmqctl -n <node> ARGS`.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(CTL)
            .env("HOME", &self.home)
            .args(["-n", &self.name])
            .args(args)
            .output()
            .unwrap()
    }

    /// `rabbitmqctl ARGS`, which must succeed.
    pub fn ctl_ok(&self, args: &[&str]) {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The whole node stops (`rabbitmqctl stop`): its process exits.
    pub fn stop(&mut self) {
        self.ctl_ok(&["stop"]);
        if let Some(mut c) = self.child.take() {
            stop_group(&mut c, 30);
        }
    }

    /// The node's AMQP URL for `user` in `vhost` (URL-encoded by the caller).
    pub fn url(&self, vhost: &str) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", self.port)
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_group(&mut c, 30);
        }
    }
}
