//! Reading the services from outside: memory, Prometheus counters and Kafka traffic.
//!
//! - [`rss_mb`]: `VmRSS` from `/proc/<pid>/status`, the memory the process holds in RAM.
//! - [`scrape`]: a service's own Prometheus counters (`/metrics`).
//! - [`kafka_bytes`]: the bytes a process has exchanged with the Kafka broker, from the
//!   kernel's per-socket TCP counters (`ss -tie`, `tcp_info.bytes_received` and
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
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the ')' (state is 0).
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short stat")?.parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Every sample on a Prometheus endpoint (see [`samples`]).
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
    Ok(samples(text))
}

/// The samples of a Prometheus text exposition, summed over labels, except a summary's
/// quantiles, which are kept apart as `name{quantile="q"}`.
fn samples(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        let key = match series.split_once("quantile=\"") {
            Some((_, rest)) => {
                let q = rest.split('"').next().unwrap_or(rest);
                format!("{name}{{quantile=\"{q}\"}}")
            }
            None => name.to_owned(),
        };
        if let Ok(v) = value.parse::<f64>() {
            *out.entry(key).or_insert(0.0) += v;
        }
    }
    out
}

/// Quantile `q` of summary `name` in a scrape, in milliseconds (the summary in seconds).
pub(crate) fn quantile_ms(scrape: &HashMap<String, f64>, name: &str, q: &str) -> Option<f64> {
    scrape
        .get(&format!("{name}{{quantile=\"{q}\"}}"))
        .map(|s| s * 1000.0)
}

/// The value of `name` in a scrape, 0 when absent (a counter never incremented).
pub(crate) fn counter(scrape: &HashMap<String, f64>, name: &str) -> f64 {
    scrape.get(name).copied().unwrap_or(0.0)
}

/// TCP byte counters of connections to the broker, per local address, with the owning pid.
#[derive(Debug, Clone, Default)]
pub(crate) struct KafkaBytes {
    /// local address → (pid, bytes received from the broker, bytes sent and acknowledged).
    sockets: HashMap<String, (u32, u64, u64)>,
}

/// Traffic of one process between the start and the end of a tracked interval.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Traffic {
    pub(crate) received: u64,
    pub(crate) sent: u64,
    /// Connections that appeared after the first sample.
    pub(crate) opened: usize,
    /// Connections that disappeared before the last sample.
    pub(crate) closed: usize,
}

/// Follows every connection to the broker across repeated samples, so that connections
/// that open and close in between (catch-up readers) are still counted, up to their last
/// sample. A connection shorter than the sampling interval is missed, and the traffic of
/// a connection after its last sample too: the totals are lower bounds when connections
/// churn, exact when they do not.
#[derive(Debug, Default)]
pub(crate) struct WireTracker {
    /// local address → the connection.
    sockets: HashMap<String, Followed>,
    latest: Vec<String>,
    samples: usize,
}

/// One connection as followed by [`WireTracker`].
#[derive(Debug)]
struct Followed {
    pid: u32,
    /// (rx, tx) it is counted from: its value at the first sample, or zero if it opened later.
    from: (u64, u64),
    /// (rx, tx) at its last sample.
    last: (u64, u64),
    opened_later: bool,
}

impl WireTracker {
    /// Takes a sample. Connections present at the first sample count from their value
    /// then; later ones count from zero.
    pub(crate) fn add(&mut self, snapshot: &KafkaBytes) {
        let first_sample = self.samples == 0;
        for (local, (pid, rx, tx)) in &snapshot.sockets {
            let start = if first_sample { (*rx, *tx) } else { (0, 0) };
            let entry = self.sockets.entry(local.clone()).or_insert(Followed {
                pid: *pid,
                from: start,
                last: (*rx, *tx),
                opened_later: !first_sample,
            });
            entry.last = (*rx, *tx);
        }
        self.latest = snapshot.sockets.keys().cloned().collect();
        self.samples += 1;
    }

    /// What process `pid` exchanged with the broker over the tracked interval.
    pub(crate) fn traffic(&self, pid: u32) -> Traffic {
        let mut t = Traffic::default();
        for (local, c) in &self.sockets {
            if c.pid != pid {
                continue;
            }
            t.received += c.last.0.saturating_sub(c.from.0);
            t.sent += c.last.1.saturating_sub(c.from.1);
            if c.opened_later {
                t.opened += 1;
            }
            if !self.latest.contains(local) {
                t.closed += 1;
            }
        }
        t
    }
}

/// Which process owns which socket, by inode, for the processes watched.
///
/// `ss -p` would say, but it reads every file descriptor of every process on the machine
/// to find out (Kafka alone holds hundreds), and sampled every 250 ms that was about a
/// third of the load generator's CPU in the fan-out phase, taken from what it measures.
/// Reading only the watched processes' descriptors, and only when a socket is new, costs
/// next to nothing.
#[derive(Debug)]
pub(crate) struct Owners {
    pids: Vec<u32>,
    /// `None` for a socket none of them held when last looked for (another client of the
    /// broker), so it is not looked for at every sample.
    by_inode: HashMap<u64, Option<u32>>,
}

impl Owners {
    /// Owners among `pids`.
    pub(crate) fn new(pids: Vec<u32>) -> Self {
        Self {
            pids,
            by_inode: HashMap::new(),
        }
    }

    /// The watched process holding socket `inode`, rereading their descriptors once if it
    /// is not known yet.
    fn of(&mut self, inode: u64) -> Option<u32> {
        if !self.by_inode.contains_key(&inode) {
            for &pid in &self.pids {
                let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                    continue;
                };
                for found in fds.flatten().filter_map(|fd| socket_inode(&fd.path())) {
                    self.by_inode.insert(found, Some(pid));
                }
            }
            self.by_inode.entry(inode).or_insert(None);
        }
        self.by_inode.get(&inode).copied().flatten()
    }
}

/// The inode of the socket file descriptor `fd` (`/proc/<pid>/fd/<n>`, a link to
/// `socket:[<inode>]`); `None` for anything else.
fn socket_inode(fd: &std::path::Path) -> Option<u64> {
    let target = std::fs::read_link(fd).ok()?;
    let inode = target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?;
    inode.parse().ok()
}

/// Every established TCP connection to port `kafka_port` held by one of `owners`, from `ss`
/// (iproute2); an error when `ss` is missing or fails.
pub(crate) async fn kafka_bytes(
    kafka_port: u16,
    owners: &mut Owners,
) -> anyhow::Result<KafkaBytes> {
    let out = tokio::process::Command::new("ss")
        .args([
            "-tieH",
            "state",
            "established",
            "dport",
            "=",
            &format!(":{kafka_port}"),
        ])
        .output()
        .await
        .context("cannot run ss (iproute2)")?;
    if !out.status.success() {
        bail!("ss failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(parse_ss(&String::from_utf8_lossy(&out.stdout), |inode| {
        owners.of(inode)
    }))
}

/// The pid listening on local TCP `port` (the Kafka broker), from `ss -ltnp`.
pub(crate) async fn listener_pid(port: u16) -> Option<u32> {
    let out = tokio::process::Command::new("ss")
        .args(["-ltnpH", "sport", "=", &format!(":{port}")])
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("pid=")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A warning when the broker `kafka_pid` and this process are in different scheduler
/// autogroups. With autogroups on, CFS shares the cores between groups (one per session)
/// before threads, so a broker started in a session of its own had its collector and
/// request threads wait 100-300 ms for a core under load (PERFORMANCE.md, session 10).
pub(crate) fn autogroup_warning(kafka_pid: u32) -> Option<String> {
    let enabled = std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled").ok()?;
    let group = |pid: &str| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/autogroup")).ok()?;
        text.split_whitespace().next().map(str::to_owned)
    };
    let (kafka, bench) = (group(&kafka_pid.to_string())?, group("self")?);
    (enabled.trim() == "1" && kafka != bench).then(|| {
        format!(
            "warning: Kafka (pid {kafka_pid}) runs in scheduler autogroup {kafka} and the bench \
             in {bench}, so the cores are shared between the groups first; Kafka's latency \
             figures suffer for it (PERFORMANCE.md, session 10). Start Kafka from this shell \
             (deploy/kafka.sh start), or let deploy/bench.sh start it"
        )
    })
}

/// `ss -tieH` prints each socket on one line (with `ino:N`, its inode) and its `tcp_info`
/// on the next, indented line; `owner` says which process holds an inode, if any watched.
fn parse_ss(text: &str, mut owner: impl FnMut(u64) -> Option<u32>) -> KafkaBytes {
    let mut sockets = HashMap::new();
    let mut current: Option<(String, u32)> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            // Columns (state filtered, no header): Recv-Q Send-Q Local Peer, then details.
            let local = line
                .split_whitespace()
                .nth(2)
                .unwrap_or_default()
                .to_owned();
            let inode = line
                .split_whitespace()
                .find_map(|f| f.strip_prefix("ino:"))
                .and_then(|i| i.parse().ok());
            current = inode.and_then(&mut owner).map(|pid| (local, pid));
            continue;
        }
        let Some((local, pid)) = current.take() else {
            continue;
        };
        let field = |key: &str| -> u64 {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        sockets.insert(
            local,
            (pid, field("bytes_received:"), field("bytes_acked:")),
        );
    }
    KafkaBytes { sockets }
}

/// The machine's busy seconds so far (all CPUs, everything but idle and iowait, steal
/// included) and, of those, the hypervisor's steal, from `/proc/stat`.
pub(crate) fn machine_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some(((total - idle) / 100.0, ticks.get(7)? / 100.0))
}

/// CPU time used so far by the whole machine and by some processes.
#[derive(Debug, Clone)]
pub(crate) struct Cpu {
    at: std::time::Instant,
    /// Busy seconds of all CPUs (everything but idle and iowait), steal included.
    machine: f64,
    /// Seconds the hypervisor ran something else while a CPU of this VM wanted to run.
    steal: f64,
    procs: Vec<(&'static str, f64)>,
}

impl Cpu {
    /// Samples the machine and each `(name, pid)`.
    pub(crate) fn sample(procs: &[(&'static str, u32)]) -> Self {
        let (machine, steal) = machine_seconds().unwrap_or((0.0, 0.0));
        Self {
            at: std::time::Instant::now(),
            machine,
            steal,
            procs: procs
                .iter()
                .map(|(name, pid)| (*name, cpu_seconds(*pid).unwrap_or(0.0)))
                .collect(),
        }
    }

    /// "CPU (% of one core) ..." between `self` and `later` (same processes).
    pub(crate) fn note(&self, later: &Cpu) -> String {
        let mut span = CpuSpan::default();
        span.add(self, later);
        span.note()
    }
}

/// CPU used over one or more intervals, each between two samples of the same processes:
/// the alternating rounds of the throughput phases add theirs up.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuSpan {
    secs: f64,
    machine: f64,
    steal: f64,
    procs: Vec<(&'static str, f64)>,
}

impl CpuSpan {
    /// Adds the interval from `earlier` to `later`.
    pub(crate) fn add(&mut self, earlier: &Cpu, later: &Cpu) {
        self.secs += (later.at - earlier.at).as_secs_f64();
        self.machine += later.machine - earlier.machine;
        self.steal += later.steal - earlier.steal;
        if self.procs.is_empty() {
            self.procs = earlier.procs.iter().map(|(name, _)| (*name, 0.0)).collect();
        }
        for ((_, used), ((_, a), (_, b))) in self
            .procs
            .iter_mut()
            .zip(earlier.procs.iter().zip(&later.procs))
        {
            *used += b - a;
        }
    }

    /// "CPU in % of one core over Ns: ..." for the intervals added.
    pub(crate) fn note(&self) -> String {
        let secs = self.secs.max(1e-9);
        let pct = |v: f64| 100.0 * v / secs;
        let mut parts = Vec::new();
        let mut named = 0.0;
        for (name, used) in &self.procs {
            named += used;
            parts.push(format!("{name} {:.0}%", pct(*used)));
        }
        parts.push(format!(
            "everything else on the machine {:.0}% (of which steal by the hypervisor {:.0}%)",
            pct((self.machine - named).max(0.0)),
            pct(self.steal)
        ));
        format!(
            "CPU in % of one core over {secs:.0}s: {}; machine busy {:.0}% of {}%",
            parts.join(", "),
            pct(self.machine),
            100 * std::thread::available_parallelism().map_or(1, usize::from)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_over_labels_but_a_summarys_quantiles_are_kept_apart() {
        let text = "# TYPE crier_acks_total counter\n\
                    crier_acks_total{org=\"a\"} 3\n\
                    crier_acks_total{org=\"b\"} 4\n\
                    crier_lag_seconds{quantile=\"0.5\"} 0.002\n\
                    crier_lag_seconds{quantile=\"0.99\"} 0.25\n\
                    crier_lag_seconds_count 9\n";
        let s = samples(text);
        assert_eq!(counter(&s, "crier_acks_total"), 7.0);
        assert_eq!(quantile_ms(&s, "crier_lag_seconds", "0.99"), Some(250.0));
        assert_eq!(quantile_ms(&s, "crier_lag_seconds", "0.5"), Some(2.0));
        assert_eq!(quantile_ms(&s, "crier_lag_seconds", "0.9"), None);
        assert_eq!(counter(&s, "crier_lag_seconds_count"), 9.0);
    }

    #[test]
    fn a_socket_is_found_among_the_watched_processes_descriptors_and_others_are_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|fd| socket_inode(&fd.path()))
            .max()
            .expect("this process holds a socket");
        let me = std::process::id();
        let mut watching_me = Owners::new(vec![me]);
        assert_eq!(watching_me.of(inode), Some(me));
        assert_eq!(watching_me.of(u64::MAX), None);
        // Remembered as held by no watched process, rather than looked for again.
        assert_eq!(watching_me.by_inode.get(&u64::MAX), Some(&None));
        assert_eq!(Owners::new(vec![]).of(inode), None);
        drop(listener);
    }

    #[test]
    fn connections_are_followed_across_samples_per_process() {
        let text = "0 0 127.0.0.1:40000 127.0.0.1:19092 ino:900 sk:1 cgroup:/ <->\n\
            \t cubic wscale:7,7 bytes_sent:300 bytes_acked:301 bytes_received:1000 segs_out:3\n\
            0 0 127.0.0.1:40001 127.0.0.1:19092 ino:901 sk:2 cgroup:/ <->\n\
            \t cubic bytes_acked:5 bytes_received:7\n\
            0 0 127.0.0.1:40009 127.0.0.1:19092 ino:999 sk:3 cgroup:/ <->\n\
            \t cubic bytes_acked:5 bytes_received:70000\n";
        // 999 belongs to a process not watched.
        let owner = |inode| match inode {
            900 | 902 => Some(42),
            901 => Some(43),
            _ => None,
        };
        let parse_ss = |text: &str| parse_ss(text, owner);
        let first = parse_ss(text);
        assert_eq!(first.sockets.len(), 2);
        assert_eq!(first.sockets["127.0.0.1:40000"], (42, 1000, 301));
        let mut tracker = WireTracker::default();
        tracker.add(&first);
        // A catch-up connection comes and goes; the first one reads 500 more bytes.
        let second = text.replace("bytes_received:1000", "bytes_received:1500")
            + "0 0 127.0.0.1:40002 127.0.0.1:19092 ino:902 sk:4 cgroup:/ <->\n\
               \t bytes_acked:10 bytes_received:200\n";
        tracker.add(&parse_ss(&second));
        tracker.add(&parse_ss(
            &text.replace("bytes_received:1000", "bytes_received:1600"),
        ));
        let t = tracker.traffic(42);
        assert_eq!((t.received, t.sent, t.opened, t.closed), (800, 10, 1, 1));
        assert_eq!(tracker.traffic(43).received, 0);
    }
}
