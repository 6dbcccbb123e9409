//! The figures a run produces: a readable table on stdout and the same figures as JSON.
//!
//! The JSON has exactly the keys the benchmark issue defines, in that order, so CI and the
//! comparison of runs can rely on them; a figure whose phase did not run is `null`. Detail
//! that explains a figure (error counts, sizes, CPU, how read amplification was measured)
//! goes in the notes under the table, not in the JSON.

use std::path::Path;

use serde_json::{Map, Value};

/// Every headline figure; `None` when its phase was not run.
#[derive(Debug, Default, Clone)]
pub(crate) struct Figures {
    pub(crate) baseline_eps: Option<f64>,
    pub(crate) stream_publish_eps: Option<f64>,
    pub(crate) unary_eps: Option<f64>,
    pub(crate) unary_p50_ms: Option<f64>,
    pub(crate) unary_p99_ms: Option<f64>,
    pub(crate) e2e_p50_ms: Option<f64>,
    pub(crate) e2e_p99_ms: Option<f64>,
    pub(crate) e2e_p999_ms: Option<f64>,
    pub(crate) subscriptions: Option<f64>,
    pub(crate) streams: Option<f64>,
    pub(crate) consumer_rss_mb: Option<f64>,
    pub(crate) producer_rss_mb: Option<f64>,
    pub(crate) idle_rss_mb: Option<f64>,
    pub(crate) read_amplification: Option<f64>,
}

/// How a figure is judged against its target.
#[derive(Debug, Clone, Copy)]
enum Target {
    None,
    AtLeast(f64),
    AtMost(f64),
}

impl Figures {
    pub(crate) fn stream_ratio(&self) -> Option<f64> {
        match (self.stream_publish_eps, self.baseline_eps) {
            (Some(s), Some(b)) if b > 0.0 => Some(s / b),
            _ => None,
        }
    }

    /// (key, value, unit, target), in the JSON's order.
    fn rows(&self) -> Vec<(&'static str, Option<f64>, &'static str, Target)> {
        vec![
            ("baseline_eps", self.baseline_eps, "events/s", Target::None),
            (
                "stream_publish_eps",
                self.stream_publish_eps,
                "events/s",
                Target::None,
            ),
            (
                "stream_ratio",
                self.stream_ratio(),
                "",
                Target::AtLeast(0.8),
            ),
            ("unary_eps", self.unary_eps, "events/s", Target::None),
            ("unary_p50_ms", self.unary_p50_ms, "ms", Target::None),
            (
                "unary_p99_ms",
                self.unary_p99_ms,
                "ms",
                Target::AtMost(10.0),
            ),
            ("e2e_p50_ms", self.e2e_p50_ms, "ms", Target::None),
            ("e2e_p99_ms", self.e2e_p99_ms, "ms", Target::AtMost(50.0)),
            ("e2e_p999_ms", self.e2e_p999_ms, "ms", Target::None),
            ("subscriptions", self.subscriptions, "", Target::None),
            ("streams", self.streams, "", Target::None),
            (
                "consumer_rss_mb",
                self.consumer_rss_mb,
                "MiB",
                Target::AtMost(512.0),
            ),
            ("producer_rss_mb", self.producer_rss_mb, "MiB", Target::None),
            ("idle_rss_mb", self.idle_rss_mb, "MiB", Target::AtMost(50.0)),
            (
                "read_amplification",
                self.read_amplification,
                "",
                Target::AtMost(1.0),
            ),
        ]
    }

    /// The JSON object with exactly the issue's keys.
    pub(crate) fn to_json(&self) -> Value {
        let mut map = Map::new();
        for (key, value, _, _) in self.rows() {
            let v = value.map_or(Value::Null, |v| {
                let rounded = if v.abs() >= 100.0 {
                    (v * 10.0).round() / 10.0
                } else {
                    (v * 1000.0).round() / 1000.0
                };
                if rounded.fract() == 0.0 && rounded.abs() < 1e15 {
                    Value::from(rounded as i64)
                } else {
                    serde_json::Number::from_f64(rounded).map_or(Value::Null, Value::Number)
                }
            });
            map.insert(key.to_owned(), v);
        }
        Value::Object(map)
    }

    /// Writes the JSON to `path`.
    pub(crate) fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&self.to_json())? + "\n")?;
        Ok(())
    }

    /// The table, with each target marked met or not met.
    pub(crate) fn table(&self, title: &str, notes: &[String]) -> String {
        let mut out = format!("\n{title}\n\n");
        out += &format!(
            "{:<20} {:>12} {:<9} {:<10} {}\n",
            "figure", "value", "unit", "target", "status"
        );
        out += &format!("{}\n", "-".repeat(64));
        for (key, value, unit, target) in self.rows() {
            let shown = match value {
                None => "-".to_owned(),
                Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
                Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
                Some(v) => format!("{v:.3}"),
            };
            let (target_text, status) = match (target, value) {
                (Target::None, _) => (String::new(), ""),
                (Target::AtLeast(t), v) => (
                    format!(">= {t}"),
                    match v {
                        None => "not run",
                        Some(v) if v >= t => "met",
                        Some(_) => "NOT MET",
                    },
                ),
                (Target::AtMost(t), v) => (
                    format!("<= {t}"),
                    match v {
                        None => "not run",
                        Some(v) if v <= t => "met",
                        Some(_) => "NOT MET",
                    },
                ),
            };
            out += &format!("{key:<20} {shown:>12} {unit:<9} {target_text:<10} {status}\n");
        }
        if !notes.is_empty() {
            out += "\nnotes:\n";
            for n in notes {
                out += &format!("  - {n}\n");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_has_exactly_the_issue_keys_in_order() {
        let f = Figures {
            baseline_eps: Some(1000.0),
            stream_publish_eps: Some(800.0),
            ..Default::default()
        };
        let json = f.to_json();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "baseline_eps",
                "stream_publish_eps",
                "stream_ratio",
                "unary_eps",
                "unary_p50_ms",
                "unary_p99_ms",
                "e2e_p50_ms",
                "e2e_p99_ms",
                "e2e_p999_ms",
                "subscriptions",
                "streams",
                "consumer_rss_mb",
                "producer_rss_mb",
                "idle_rss_mb",
                "read_amplification"
            ]
        );
        assert_eq!(json["stream_ratio"], 0.8);
        assert!(json["unary_eps"].is_null());
    }
}
