//! Services and the broker as a user's deployment runs them: the real binaries as child
//! processes (so `kill -9` means what it says), and Kafka through `deploy/kafka.sh`.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{PKI, TOKEN_AUDIENCE, TOKEN_ISSUER, TRUST_DOMAIN};

/// The directory holding the built service binaries (`target/debug`), found from this test
/// executable's own path (`target/debug/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Which service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Producer,
    Consumer,
}

/// A service binary running as a child process.
#[derive(Debug)]
pub struct ServiceProcess {
    pub kind: Kind,
    pub port: u16,
    child: Option<Child>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl ServiceProcess {
    /// Starts `kind` on a fresh port with `kafka` settings and the agreements at `agreements`.
    pub fn start(
        kind: Kind,
        kafka: &crier_kafka::KafkaConfig,
        agreements: &Path,
        log_dir: &Path,
    ) -> Self {
        let port = free_port();
        let env: Vec<(String, String)> = vec![
            ("CRIER_GRPC__LISTEN".into(), format!("127.0.0.1:{port}")),
            (
                "CRIER_METRICS__LISTEN".into(),
                format!("127.0.0.1:{}", free_port()),
            ),
            (
                "CRIER_KAFKA__BOOTSTRAP_SERVERS".into(),
                kafka.bootstrap_servers.clone(),
            ),
            (
                "CRIER_KAFKA__EVENTS_TOPIC".into(),
                kafka.events_topic.clone(),
            ),
            (
                "CRIER_KAFKA__SUBSCRIPTIONS_TOPIC".into(),
                kafka.subscriptions_topic.clone(),
            ),
            ("CRIER_KAFKA__AUDIT_TOPIC".into(), kafka.audit_topic.clone()),
            (
                "CRIER_KAFKA__PARTITIONS".into(),
                kafka.partitions.to_string(),
            ),
            (
                "CRIER_KAFKA__DELIVERY_TIMEOUT_MS".into(),
                kafka.delivery_timeout_ms.to_string(),
            ),
            ("CRIER_AUTH__TRUST_DOMAIN".into(), TRUST_DOMAIN.into()),
            (
                "CRIER_AUTH__TLS__CERT".into(),
                PKI.join("server.pem").display().to_string(),
            ),
            (
                "CRIER_AUTH__TLS__KEY".into(),
                PKI.join("server.key").display().to_string(),
            ),
            (
                "CRIER_AUTH__TLS__CLIENT_CA".into(),
                PKI.join("ca.pem").display().to_string(),
            ),
            ("CRIER_AUTH__JWT__ISSUER".into(), TOKEN_ISSUER.into()),
            ("CRIER_AUTH__JWT__AUDIENCE".into(), TOKEN_AUDIENCE.into()),
            (
                "CRIER_AUTH__JWT__PUBLIC_KEY".into(),
                PKI.join("token-signing.pub.pem").display().to_string(),
            ),
            (
                "CRIER_AGREEMENTS__PATH".into(),
                agreements.display().to_string(),
            ),
            ("CRIER_SUBSCRIPTIONS__CURSOR_FLUSH_MS".into(), "200".into()),
            ("CRIER_LOG__FORMAT".into(), "json".into()),
        ];
        let name = match kind {
            Kind::Producer => "producer",
            Kind::Consumer => "consumer",
        };
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| kind == Kind::Consumer || !k.starts_with("CRIER_SUBSCRIPTIONS"))
            .collect();
        let log = log_dir.join(format!("{name}-{port}.log"));
        let mut me = Self {
            kind,
            port,
            child: None,
            env,
            log,
        };
        me.spawn();
        me
    }

    fn spawn(&mut self) {
        let bin = bin_dir().join(match self.kind {
            Kind::Producer => "crier-producer",
            Kind::Consumer => "crier-consumer",
        });
        assert!(
            bin.exists(),
            "{} not built: run `cargo build --bins` first",
            bin.display()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("CRIER_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// `kill -9`: no chance to flush, save or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `grace` for a clean exit; returns how long it took.
    pub fn terminate(&mut self, grace: Duration) -> Option<Duration> {
        let mut child = self.child.take()?;
        let started = std::time::Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        while started.elapsed() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Starts the same service again, on the same port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// Resident memory of the process, in MiB, from `/proc/<pid>/status`.
    pub fn rss_mib(&self) -> Option<f64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A Kafka broker of the test's own, through `deploy/kafka.sh`, on its own ports and data
/// directory, so stopping it disturbs no other test.
#[derive(Debug)]
pub struct Broker {
    port: u16,
    controller: u16,
    dir: PathBuf,
}

impl Broker {
    pub fn start(name: &str) -> Self {
        let me = Self {
            port: free_port(),
            controller: free_port(),
            dir: std::env::temp_dir().join(format!("crier-broker-{name}-{}", std::process::id())),
        };
        me.run("start");
        me
    }

    fn run(&self, action: &str) {
        let status = Command::new(repo_root().join("deploy/kafka.sh"))
            .arg(action)
            .env("CRIER_KAFKA_PORT", self.port.to_string())
            .env("CRIER_KAFKA_CONTROLLER_PORT", self.controller.to_string())
            .env("CRIER_KAFKA_DIR", &self.dir)
            .env("CRIER_KAFKA_HEAP", "-Xms128m -Xmx512m")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "kafka.sh {action} failed");
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&self) {
        self.run("stop");
    }

    pub fn restart(&self) {
        self.run("start");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.run("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
