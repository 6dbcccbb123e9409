//! Reading the services from outside: memory, Prometheus counters and Kafka traffic.
//!
//! - [`rss_mb`]: `VmRSS` from `/proc/<pid>/status`, the memory the process holds in RAM.
//! - [`scrape`]: a service's own Prometheus counters (`/metrics`).
//! - [`kafka_bytes`]: the bytes a process has exchanged with the Kafka broker, from the
//!   kernel's per-socket TCP counters (`ss -tinp`, `tcp_info.bytes_received` and
//!   `bytes_acked`). This is independent of Crier's own counters: it sees every fetch the
//!   consumer makes (live reader, catch-up readers, the subscription store), on the wire,
//!   as compressed record batches plus protocol overhead.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Resident set size of `pid`, in MiB.
pub(crate) fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line")?;
    Ok(kb / 1024.0)
}

/// CPU time (user + system, every thread) `pid` has used so far, in seconds, from
/// `/proc/<pid>/stat` (in USER_HZ ticks, which Linux fixes at 100 per second).
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the ')' (state is 0).
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short stat")?.parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Every sample on a Prometheus endpoint, summed over labels: name → value.
pub(crate) async fn scrape(addr: SocketAddr) -> anyhow::Result<HashMap<String, f64>> {
    let body = tokio::time::timeout(Duration::from_secs(5), async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        anyhow::Ok(body)
    })
    .await
    .context("metrics endpoint timed out")??;
    let Some((head, text)) = body.split_once("\r\n\r\n") else {
        bail!("malformed HTTP response from {addr}");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("metrics endpoint {addr} answered {head}");
    }
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if let Ok(v) = value.parse::<f64>() {
            *out.entry(name.to_owned()).or_insert(0.0) += v;
        }
    }
    Ok(out)
}

/// The value of `name` in a scrape, 0 when absent (a counter never incremented).
pub(crate) fn counter(scrape: &HashMap<String, f64>, name: &str) -> f64 {
    scrape.get(name).copied().unwrap_or(0.0)
}

/// TCP byte counters of one process's connections to the broker, per local address.
#[derive(Debug, Clone, Default)]
pub(crate) struct KafkaBytes {
    /// local address → (bytes received from the broker, bytes sent and acknowledged).
    sockets: HashMap<String, (u64, u64)>,
}

/// Traffic between two snapshots.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Traffic {
    pub(crate) received: u64,
    pub(crate) sent: u64,
    /// Connections open at the first snapshot and gone at the second: their traffic in
    /// between is not counted (catch-up readers that came and went).
    pub(crate) closed: usize,
    /// Connections that appeared between the snapshots (counted from zero).
    pub(crate) opened: usize,
}

impl KafkaBytes {
    /// What `later` adds to `self`.
    pub(crate) fn until(&self, later: &KafkaBytes) -> Traffic {
        let mut t = Traffic::default();
        for (sock, (rx, tx)) in &later.sockets {
            let (rx0, tx0) = match self.sockets.get(sock) {
                Some(before) => *before,
                None => {
                    t.opened += 1;
                    (0, 0)
                }
            };
            t.received += rx.saturating_sub(rx0);
            t.sent += tx.saturating_sub(tx0);
        }
        t.closed = self
            .sockets
            .keys()
            .filter(|s| !later.sockets.contains_key(*s))
            .count();
        t
    }
}

/// Snapshot of `pid`'s established TCP connections to port `kafka_port`, or an error when
/// `ss` (iproute2) is missing or its output cannot be read.
pub(crate) async fn kafka_bytes(pid: u32, kafka_port: u16) -> anyhow::Result<KafkaBytes> {
    let out = tokio::process::Command::new("ss")
        .args(["-tinpH", "state", "established", "dport", "=", &format!(":{kafka_port}")])
        .output()
        .await
        .context("cannot run ss (iproute2)")?;
    if !out.status.success() {
        bail!("ss failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(parse_ss(&String::from_utf8_lossy(&out.stdout), pid))
}

/// `ss -tinpH` prints each socket on one line (with `users:((...,pid=N,...))`) and its
/// `tcp_info` on the next, indented line.
fn parse_ss(text: &str, pid: u32) -> KafkaBytes {
    let needle = format!("pid={pid},");
    let mut sockets = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            current = line.contains(&needle).then(|| {
                // Columns (with state filtered, -H): Recv-Q Send-Q Local Peer Process
                line.split_whitespace().nth(2).unwrap_or_default().to_owned()
            });
            continue;
        }
        let Some(local) = current.take() else {
            continue;
        };
        let field = |key: &str| -> u64 {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        sockets.insert(local, (field("bytes_received:"), field("bytes_acked:")));
    }
    KafkaBytes { sockets }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss_output_is_read_per_socket_of_the_given_process() {
        let text = "0 0 127.0.0.1:40000 127.0.0.1:19092 users:((\"crier-consumer\",pid=42,fd=9))\n\
            \t cubic wscale:7,7 bytes_sent:300 bytes_acked:301 bytes_received:1000 segs_out:3\n\
            0 0 127.0.0.1:40001 127.0.0.1:19092 users:((\"crier-producer\",pid=43,fd=9))\n\
            \t cubic bytes_acked:5 bytes_received:7\n";
        let before = parse_ss(text, 42);
        assert_eq!(before.sockets["127.0.0.1:40000"], (1000, 301));
        assert_eq!(before.sockets.len(), 1);
        let later = parse_ss(&text.replace("bytes_received:1000", "bytes_received:1500"), 42);
        let t = before.until(&later);
        assert_eq!((t.received, t.sent, t.closed, t.opened), (500, 0, 0, 0));
    }
}
