//! Figures: latency percentiles, one JSON line per run, and a readable table over runs
//! (each run's value, the median and the spread).

use std::fmt::Write as _;

/// Latency samples in microseconds.
#[derive(Default, Clone)]
pub struct Latencies(pub Vec<u64>);

impl Latencies {
    pub fn push(&mut self, micros: u64) {
        self.0.push(micros);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// Nearest-rank percentile in milliseconds (`q` in 0..=1); NaN when empty.
    pub fn pct_ms(&mut self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1] as f64 / 1000.0
    }

    /// Adds `{prefix}_p50_ms`, `_p99_ms`, `_max_ms` to a record.
    pub fn add_to(&mut self, rec: &mut Record, prefix: &str) {
        rec.num(&format!("{prefix}_p50_ms"), self.pct_ms(0.50));
        rec.num(&format!("{prefix}_p90_ms"), self.pct_ms(0.90));
        rec.num(&format!("{prefix}_p99_ms"), self.pct_ms(0.99));
        rec.num(&format!("{prefix}_max_ms"), self.pct_ms(1.0));
    }
}

#[derive(Clone, Debug)]
pub enum Value {
    Num(f64),
    Text(String),
}

/// One run's figures, in the order they were added.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub fields: Vec<(String, Value)>,
}

impl Record {
    pub fn new(scenario: &str) -> Record {
        let mut r = Record::default();
        r.text("scenario", scenario);
        r
    }

    pub fn num(&mut self, key: &str, v: f64) {
        self.fields.push((key.to_owned(), Value::Num(v)));
    }

    pub fn int(&mut self, key: &str, v: u64) {
        self.num(key, v as f64);
    }

    pub fn text(&mut self, key: &str, v: impl Into<String>) {
        self.fields.push((key.to_owned(), Value::Text(v.into())));
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.fields.iter().find_map(|(k, v)| match v {
            Value::Num(n) if k == key => Some(*n),
            _ => None,
        })
    }

    /// The record as one JSON object on one line, fields in insertion order.
    pub fn json_line(&self) -> String {
        let mut s = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let key = serde_json::to_string(k).expect("string serialises");
            let val = match v {
                Value::Num(n) if n.is_finite() => {
                    if n.fract() == 0.0 && n.abs() < 1e15 {
                        format!("{}", *n as i64)
                    } else {
                        format!("{:.3}", n)
                    }
                }
                Value::Num(_) => "null".to_owned(),
                Value::Text(t) => serde_json::to_string(t).expect("string serialises"),
            };
            let _ = write!(s, "{key}:{val}");
        }
        s.push('}');
        s
    }
}

/// The median of sorted values (the mean of the two middle ones for an even count); NaN when
/// empty.
pub fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn fmt_num(n: f64) -> String {
    if !n.is_finite() {
        "-".to_owned()
    } else if n.fract() == 0.0 && n.abs() < 1e12 {
        format!("{}", n as i64)
    } else if n.abs() >= 100.0 {
        format!("{n:.0}")
    } else if n.abs() >= 1.0 {
        format!("{n:.2}")
    } else {
        format!("{n:.3}")
    }
}

/// A table of the numeric fields of several runs of one scenario: one row per figure, one
/// column per run, then median and spread (min–max).
pub fn table(runs: &[Record]) -> String {
    let Some(first) = runs.first() else {
        return String::new();
    };
    let mut out = String::new();
    let title: Vec<String> = first
        .fields
        .iter()
        .filter_map(|(k, v)| match v {
            Value::Text(t) => Some(format!("{k}={t}")),
            _ => None,
        })
        .collect();
    let _ = writeln!(out, "\n== {}", title.join(" "));
    let mut header = vec!["figure".to_owned()];
    for i in 0..runs.len() {
        header.push(format!("run {}", i + 1));
    }
    if runs.len() > 1 {
        header.push("median".into());
        header.push("spread (min-max)".into());
    }
    let mut rows: Vec<Vec<String>> = vec![header];
    for (key, v) in &first.fields {
        if !matches!(v, Value::Num(_)) {
            continue;
        }
        let vals: Vec<f64> = runs
            .iter()
            .map(|r| r.get(key).unwrap_or(f64::NAN))
            .collect();
        let mut row = vec![key.clone()];
        row.extend(vals.iter().map(|v| fmt_num(*v)));
        if runs.len() > 1 {
            let mut sorted: Vec<f64> = vals.iter().copied().filter(|v| v.is_finite()).collect();
            sorted.sort_by(|a, b| a.total_cmp(b));
            row.push(fmt_num(median(&sorted)));
            row.push(match (sorted.first(), sorted.last()) {
                (Some(lo), Some(hi)) => format!("{}-{}", fmt_num(*lo), fmt_num(*hi)),
                _ => "-".into(),
            });
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c == 0 {
                    format!("{s:<w$}", w = widths[c])
                } else {
                    format!("{s:>w$}", w = widths[c])
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  "));
        if i == 0 {
            let _ = writeln!(
                out,
                "{}",
                widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  ")
            );
        }
    }
    out
}

/// The median of one figure over runs (for the summary of `all`).
pub fn median_of(runs: &[Record], key: &str) -> f64 {
    let mut v: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.get(key))
        .filter(|v| v.is_finite())
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    median(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_lines() {
        let mut l = Latencies((1..=100).map(|i| i * 1000).collect());
        assert_eq!(l.pct_ms(0.5), 50.0);
        assert_eq!(l.pct_ms(0.99), 99.0);
        assert_eq!(l.pct_ms(1.0), 100.0);
        let mut r = Record::new("x");
        r.int("n", 3);
        r.num("f", 1.5);
        assert_eq!(r.json_line(), r#"{"scenario":"x","n":3,"f":1.500}"#);
        assert!(table(&[r.clone(), r]).contains("median"));
    }
}
