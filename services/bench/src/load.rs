//! Load-generation building blocks shared by the phases: the measurement window, the
//! open-loop scheduler, outcome counters and latency histograms.
//!
//! Two ways of offering load are used, on purpose:
//! - **closed loop** (throughput): N callers, each sending its next request when the last
//!   is answered; the figure is acknowledged events per second inside the window.
//! - **open loop** (latency): requests start at fixed intervals whatever happens to earlier
//!   ones, and latency is measured from the *scheduled* start. A stall then shows up in the
//!   percentiles instead of silently slowing the sender (no coordinated omission).

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

/// The part of a phase that counts: after a warm-up, for a fixed duration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) measure_from: Instant,
    pub(crate) until: Instant,
}

impl Window {
    /// Starts now: `warmup` not counted, then `duration` counted.
    pub(crate) fn starting_now(warmup: Duration, duration: Duration) -> Self {
        let now = Instant::now();
        Self {
            measure_from: now + warmup,
            until: now + warmup + duration,
        }
    }

    /// True when something completed at `at` counts.
    pub(crate) fn counts(&self, at: Instant) -> bool {
        at >= self.measure_from && at < self.until
    }

    /// True once the window has ended.
    pub(crate) fn over(&self) -> bool {
        Instant::now() >= self.until
    }

    /// `n` completions in the window, per second.
    pub(crate) fn per_second(&self, n: u64) -> f64 {
        n as f64 / (self.until - self.measure_from).as_secs_f64()
    }
}

/// What happened to the requests of a phase.
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    /// Events Crier (or Kafka, for the baseline) acknowledged inside the window.
    pub(crate) counted: AtomicU64,
    /// Every acknowledged event, in or out of the window.
    pub(crate) ok: AtomicU64,
    /// Events answered `duplicate = true` (must stay 0: every id is fresh).
    pub(crate) duplicates: AtomicU64,
    /// Events refused or failed.
    pub(crate) errors: AtomicU64,
    /// Errors by kind (the text before the first ": ", such as a gRPC code), each with
    /// its count and the first message seen, for the report.
    pub(crate) error_kinds: Mutex<BTreeMap<String, (u64, String)>>,
}

impl Outcomes {
    pub(crate) fn ok(&self, window: &Window, at: Instant, n: u64) {
        self.ok.fetch_add(n, Ordering::Relaxed);
        if window.counts(at) {
            self.counted.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn error(&self, n: u64, what: impl FnOnce() -> String) {
        self.errors.fetch_add(n, Ordering::Relaxed);
        let what = what();
        let kind = what.split_once(": ").map_or(what.as_str(), |(k, _)| k);
        let mut kinds = self.error_kinds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((count, _)) = kinds.get_mut(kind) {
            *count += n;
        } else {
            kinds.insert(kind.to_owned(), (n, what));
        }
    }

    /// A one-line summary for the log.
    pub(crate) fn summary(&self) -> String {
        let kinds = self.error_kinds.lock().unwrap_or_else(|p| p.into_inner());
        let kinds: Vec<String> = kinds
            .values()
            .map(|(count, first)| format!("{count} × {first}"))
            .collect();
        format!(
            "ok {} (in window {}), duplicates {}, errors {}{}",
            self.ok.load(Ordering::Relaxed),
            self.counted.load(Ordering::Relaxed),
            self.duplicates.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({})", kinds.join("; "))
            }
        )
    }
}

/// The slowest latency in each second of a schedule: whether a tail is one stall (a few
/// bad seconds) or steady queueing (every second alike), which percentiles cannot tell.
/// Beside each second it keeps the hypervisor's steal in that second, so a slow second can
/// be told apart from one in which the machine itself was taken away (this is a VM), and
/// how late the load generator itself started each call, which counts in the figure.
#[derive(Debug)]
pub(crate) struct Seconds {
    start: Instant,
    max_us: Vec<AtomicU64>,
    /// From each call's scheduled instant to its task's first poll, in the load generator.
    late: Mutex<Histogram<u64>>,
    /// Steal in each second, in tenths of a percent of one core (`u64::MAX`: not sampled).
    steal_permille: Vec<AtomicU64>,
}

impl Seconds {
    /// Seconds from `start` for `duration`; a thread samples each second's steal.
    pub(crate) fn new(start: Instant, duration: Duration) -> Arc<Self> {
        let n = duration.as_secs_f64().ceil() as usize;
        let seconds = Arc::new(Self {
            start,
            max_us: (0..n).map(|_| AtomicU64::new(0)).collect(),
            late: Mutex::new(histogram()),
            steal_permille: (0..n).map(|_| AtomicU64::new(u64::MAX)).collect(),
        });
        let sampled = seconds.clone();
        std::thread::spawn(move || sampled.sample_steal());
        seconds
    }

    fn sample_steal(&self) {
        let steal = || crate::probe::machine_seconds().map(|(_, steal)| steal);
        let sleep_until =
            |at: Instant| std::thread::sleep(at.saturating_duration_since(Instant::now()));
        sleep_until(self.start);
        let mut before = steal();
        for (i, slot) in self.steal_permille.iter().enumerate() {
            sleep_until(self.start + Duration::from_secs(i as u64 + 1));
            let now = steal();
            if let (Some(a), Some(b)) = (before, now) {
                slot.store(
                    ((b - a) * 1000.0).round().max(0.0) as u64,
                    Ordering::Relaxed,
                );
            }
            before = now;
        }
    }

    /// Something scheduled at `scheduled` took `latency`.
    pub(crate) fn record(&self, scheduled: Instant, latency: Duration) {
        let second = scheduled.saturating_duration_since(self.start).as_secs() as usize;
        if let Some(max) = self.max_us.get(second) {
            max.fetch_max(latency.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// A call scheduled at `scheduled` (in the window) has started, now.
    pub(crate) fn started(&self, scheduled: Instant) {
        let mut late = self.late.lock().unwrap_or_else(|p| p.into_inner());
        record(&mut late, scheduled.elapsed());
    }

    /// The median and worst of the seconds' slowest, and how many seconds had one above 50 ms.
    pub(crate) fn summary(&self) -> String {
        let maxes: Vec<u64> = self
            .max_us
            .iter()
            .map(|m| m.load(Ordering::Relaxed))
            .collect();
        let mut sorted = maxes.clone();
        sorted.sort_unstable();
        let Some(&median) = sorted.get(sorted.len() / 2) else {
            return "no seconds measured".into();
        };
        let (worst_at, worst) = maxes
            .iter()
            .enumerate()
            .max_by_key(|(_, m)| **m)
            .map_or((0, 0), |(i, m)| (i, *m));
        format!(
            "slowest in each second of the schedule: median {:.1} ms, worst {:.1} ms (second \
             {worst_at}), {} of {} seconds above 50 ms; {}; {}",
            median as f64 / 1000.0,
            worst as f64 / 1000.0,
            maxes.iter().filter(|m| **m > 50_000).count(),
            maxes.len(),
            self.steal_summary(&maxes),
            self.late_summary()
        )
    }

    fn late_summary(&self) -> String {
        let late = self.late.lock().unwrap_or_else(|p| p.into_inner());
        let q = |q| percentile_ms(&late, q).map_or("n/a".into(), |v| format!("{v:.2}"));
        format!(
            "the load generator started each call p50 {} / p99 {} / p99.9 {} ms after its \
             schedule",
            q(50.0),
            q(99.0),
            q(99.9)
        )
    }

    /// "hypervisor steal in % of one core: median second …, the 3 slowest seconds …", with
    /// "?" for a second not sampled (no `/proc/stat`, or the phase ended first).
    fn steal_summary(&self, maxes: &[u64]) -> String {
        let steal: Vec<Option<u64>> = self
            .steal_permille
            .iter()
            .map(|s| Some(s.load(Ordering::Relaxed)).filter(|&v| v != u64::MAX))
            .collect();
        let mut all: Vec<u64> = steal.iter().flatten().copied().collect();
        all.sort_unstable();
        let median = all.get(all.len() / 2).copied();
        let mut by_latency: Vec<usize> = (0..maxes.len()).collect();
        by_latency.sort_by_key(|&i| std::cmp::Reverse(maxes[i]));
        let pct = |v: Option<u64>| v.map_or("?".to_owned(), |v| format!("{:.0}%", v as f64 / 10.0));
        let slowest: Vec<String> = by_latency
            .iter()
            .take(3)
            .map(|&i| format!("{} (second {i})", pct(steal.get(i).copied().flatten())))
            .collect();
        format!(
            "hypervisor steal in % of one core: median second {}, the 3 slowest seconds {}",
            pct(median),
            slowest.join(", ")
        )
    }
}

/// A latency histogram in microseconds, 1 µs to 10 minutes, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        // The bounds above are valid constants; this branch cannot be taken.
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

/// Records `d` (saturating at the histogram's top).
pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(us);
}

/// Percentile `q` (0–100) of `h`, in milliseconds; `None` when empty.
pub(crate) fn percentile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q / 100.0) as f64 / 1000.0)
}

/// Set when the task holding it unwinds, so [`open_loop`] can fail as joining would have.
struct PanicFlag(Arc<AtomicBool>);

impl Drop for PanicFlag {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// How many tasks [`open_loop`] starts at `rate` for `duration`.
pub(crate) fn scheduled(rate: f64, duration: Duration) -> u64 {
    (rate * duration.as_secs_f64()).round() as u64
}

/// Starts `task(seq, scheduled)` at `rate` per second for `duration`, each at its scheduled
/// instant, and waits for every task to finish. Returns how many were started.
///
/// The schedule runs on its own thread with `std::thread::sleep`: tokio's timer has a 1 ms
/// resolution, too coarse for the 200 µs between requests at 5,000/s. A scheduler that falls
/// behind starts the late requests at once; their latency still counts from the schedule.
///
/// Tasks are tracked, not joined one by one: a task's memory is held until its
/// `JoinHandle` is dropped, and holding 115,000 handles to the end kept every finished
/// call's future, about 4 KiB each, so the load generator grew by 100 MB every 5 s and
/// spent a tenth of its time in the kernel zeroing fresh pages (PERFORMANCE.md, session 9).
pub(crate) async fn open_loop<F, Fut>(rate: f64, duration: Duration, task: F) -> anyhow::Result<u64>
where
    F: Fn(u64, Instant) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    let total = scheduled(rate, duration);
    let tracker = tokio_util::task::TaskTracker::new();
    let panicked = Arc::new(AtomicBool::new(false));
    let (spawner, flag) = (tracker.clone(), panicked.clone());
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        for seq in 0..total {
            let scheduled = start + Duration::from_secs_f64(seq as f64 / rate);
            let now = Instant::now();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            let (call, guard) = (task(seq, scheduled), PanicFlag(flag.clone()));
            spawner.spawn_on(
                async move {
                    let _guard = guard;
                    call.await;
                },
                &handle,
            );
        }
    })
    .await?;
    tracker.close();
    tracker.wait().await;
    anyhow::ensure!(!panicked.load(Ordering::Relaxed), "a load task panicked");
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_seconds_are_named_slowest_first_with_the_load_generators_lateness() {
        let start = Instant::now();
        let seconds = Seconds::new(start, Duration::from_secs(3));
        seconds.record(start, Duration::from_millis(5));
        seconds.record(
            start + Duration::from_millis(1_500),
            Duration::from_millis(7),
        );
        seconds.record(
            start + Duration::from_millis(2_500),
            Duration::from_millis(90),
        );
        seconds.started(start);
        let summary = seconds.summary();
        assert!(
            summary.contains("worst 90.0 ms (second 2), 1 of 3 seconds above 50 ms"),
            "{summary}"
        );
        let slowest = summary
            .split("the 3 slowest seconds ")
            .nth(1)
            .unwrap_or_default();
        let order: Vec<&str> = slowest.matches("(second ").collect();
        assert_eq!(order.len(), 3, "{summary}");
        let named: Vec<usize> = slowest
            .split("(second ")
            .skip(1)
            .filter_map(|s| s.split(')').next()?.parse().ok())
            .collect();
        assert_eq!(named, vec![2, 1, 0], "{summary}");
        assert!(
            summary.contains("the load generator started each call p50"),
            "{summary}"
        );
    }
}
