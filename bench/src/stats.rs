//! Latency samples and the report lines every scenario prints.

use std::fmt::Write as _;
use std::time::Duration;

/// Latency samples in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies(Vec<u32>);

impl Latencies {
    /// Records one sample.
    pub fn push(&mut self, d: Duration) {
        self.0.push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    /// Takes in another set of samples.
    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `q` quantile (0..=1) in milliseconds, nearest-rank; NaN with no samples.
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        f64::from(self.0[rank - 1]) / 1000.0
    }

    /// "p50 / p99 / max" in milliseconds.
    pub fn summary(&mut self) -> String {
        format!(
            "{:.2} / {:.2} / {:.2} ms",
            self.quantile_ms(0.5),
            self.quantile_ms(0.99),
            self.quantile_ms(1.0)
        )
    }
}

/// What one scenario measured against one server: named figures, in order.
#[derive(Debug, Clone)]
pub struct Report {
    /// Scenario and its parameters, e.g. `fanout 10x10@20Hz`.
    pub scenario: String,
    /// Server name.
    pub target: String,
    /// (figure, value) pairs.
    pub rows: Vec<(String, String)>,
    /// Problems the reader must know about (the tool was the bottleneck, updates were lost…).
    pub warnings: Vec<String>,
}

impl Report {
    /// An empty report.
    pub fn new(scenario: impl Into<String>, target: impl Into<String>) -> Self {
        Self {
            scenario: scenario.into(),
            target: target.into(),
            rows: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Adds a figure.
    pub fn row(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.rows.push((name.into(), value.into()));
    }

    /// Adds a warning.
    pub fn warn(&mut self, warning: impl Into<String>) {
        self.warnings.push(warning.into());
    }

    /// Warns when the tool itself used most of a core over `wall`: then the latencies measure
    /// the tool, not the server.
    pub fn check_own_cpu(&mut self, own: Duration, wall: Duration) {
        let share = own.as_secs_f64() / wall.as_secs_f64().max(1e-9);
        self.row("tool CPU", format!("{:.0}% of one core", share * 100.0));
        if share > 0.8 {
            self.warn(format!(
                "the tool used {:.0}% of a core: it may be the bottleneck; latency figures are upper bounds",
                share * 100.0
            ));
        }
    }

    /// Plain text, one figure per line.
    pub fn text(&self) -> String {
        let mut out = format!("== {} — {}\n", self.scenario, self.target);
        for (k, v) in &self.rows {
            let _ = writeln!(out, "  {k:<34} {v}");
        }
        for w in &self.warnings {
            let _ = writeln!(out, "  WARNING: {w}");
        }
        out
    }
}

/// Formats microseconds with sensible precision.
pub fn us(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v < 10.0 {
        format!("{v:.2} µs")
    } else if v < 10_000.0 {
        format!("{v:.1} µs")
    } else {
        format!("{:.1} ms", v / 1000.0)
    }
}

/// Formats a byte count.
pub fn bytes(v: f64) -> String {
    if v.abs() < 10.0 * 1024.0 {
        format!("{:.2} KiB", v / 1024.0)
    } else if v.abs() < 10.0 * 1024.0 * 1024.0 {
        format!("{:.0} KiB", v / 1024.0)
    } else {
        format!("{:.1} MiB", v / 1024.0 / 1024.0)
    }
}
