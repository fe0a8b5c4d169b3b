//! `mls-bench chart`: one SVG per (scenario, figure) from the JSON lines the scenarios print,
//! and from the labelled lines of `scripts/bench-postgres.sh` (`"store"`) and
//! `scripts/bench-peer.sh` (`"relay"`) and `scripts/bench-charts.sh` (`"relay"`: before or
//! after), because a curve shows how a cost grows at a glance
//! where a table does not.
//!
//! x is the scenario's size parameter (`--x` overrides), y one figure; one series per label
//! (`store`, else `relay`, or `--series`); each point is the median of the runs at that size
//! with a min–max whisker, the series at one size nudged apart so that no whisker hides
//! another. x is drawn on a log scale when the sizes span more than 10×.
//! Runs that differ in a text field (ingest `mode`, query `mix`/`shape`, …) are different
//! experiments, so each combination gets its own charts.

use crate::report::median;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use serde_json::{Map, Value};
use std::io::Read as _;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Clone, Debug)]
pub struct ChartOpts {
    /// Directory to write the SVG files into (created when missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Field for the x axis of every chart (default: the scenario's size parameter).
    #[arg(long)]
    pub x: Option<String>,
    /// Field whose values name the series (default: `store`, else `relay`, when present).
    #[arg(long)]
    pub series: Option<String>,
    /// Figure to draw; repeat for several (default: the scenario's headline figures).
    #[arg(long = "y")]
    pub figures: Vec<String>,
    /// JSON-lines files (`-` = stdin); lines that are not JSON objects with a `scenario`
    /// are skipped.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// One run: a JSON object with at least a text `scenario`.
pub type Line = Map<String, Value>;

/// The JSON objects with a text `scenario` among `text`'s lines, and how many other non-empty
/// lines were skipped (tables, log lines, arrays, objects from elsewhere).
pub fn parse_lines(text: &str) -> (Vec<Line>, usize) {
    let mut lines = Vec::new();
    let mut skipped = 0;
    for raw in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(m)) if m.get("scenario").is_some_and(Value::is_string) => {
                lines.push(m)
            }
            _ => skipped += 1,
        }
    }
    (lines, skipped)
}

/// What to plot for a scenario: size parameters in order of preference for x, and the
/// headline figures. An unknown scenario gets the generic sizes and every numeric field.
struct Profile {
    sizes: &'static [&'static str],
    figures: &'static [&'static str],
}

fn profile(scenario: &str) -> Profile {
    let (sizes, figures): (&'static [&'static str], &'static [&'static str]) = match scenario {
        // `target_rate` is null in max mode, so max-mode runs fall through to connections.
        "ingest" => (
            &["target_rate", "connections", "events"],
            &[
                "accepted_per_s",
                "ok_p50_ms",
                "ok_p99_ms",
                "relay_cpu_us_per_event",
            ],
        ),
        "query" => (
            &["stored", "connections", "window"],
            &[
                "reqs_per_s",
                "eose_p50_ms",
                "eose_p99_ms",
                "relay_cpu_us_per_req",
            ],
        ),
        "fanout" => (
            &["subscribers", "rate", "publishers", "events"],
            &[
                "delivery_p50_ms",
                "delivery_p99_ms",
                "lost",
                "deliveries_per_s",
                "relay_cpu_us_per_delivery",
            ],
        ),
        "connections" => (
            &["connections"],
            &[
                "bytes_per_connection",
                "relay_rss_after_mib",
                "opens_per_s",
                "open_p99_ms",
            ],
        ),
        // scripts/bench-postgres.sh: moving the stored events into PostgreSQL.
        "restore" => (
            &["stored", "lines"],
            &["import_lines_per_s", "import_s", "export_s", "database_mib"],
        ),
        // scripts/bench-peer.sh: nostr-bench's `event` and `req` against each relay.
        "event" | "req" => (&["connections"], &["per_s_median", "relay_cores"]),
        _ => (
            &[
                "stored",
                "connections",
                "subscribers",
                "members",
                "rate",
                "target_rate",
                "events",
            ],
            &[],
        ),
    };
    Profile { sizes, figures }
}

/// Fields that describe a run but are never a figure of their own.
const BOOKKEEPING: &[&str] = &["run", "busy_cores_before", "nofile_limit"];

fn num(line: &Line, field: &str) -> Option<f64> {
    line.get(field)
        .and_then(Value::as_f64)
        .filter(|v| v.is_finite())
}

/// A field's value as a label (text as is, numbers and booleans printed); None when missing.
fn label(line: &Line, field: &str) -> Option<String> {
    match line.get(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        v => Some(v.to_string()),
    }
}

/// One point of a series: the runs at one size.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub x: f64,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    /// Ordered by x.
    pub points: Vec<Point>,
}

/// One chart: one figure of one scenario (and one combination of its text fields).
#[derive(Clone, Debug)]
pub struct Chart {
    pub scenario: String,
    /// The text fields shared by every run in this chart (e.g. `mode=max`), sorted by name.
    pub variant: Vec<(String, String)>,
    pub x_field: String,
    pub series_field: Option<String>,
    pub figure: String,
    /// In order of first appearance in the input.
    pub series: Vec<Series>,
}

impl Chart {
    /// `scenario[-field=value…]-figure.svg`, with anything but `[A-Za-z0-9._=-]` as `_`.
    pub fn file_name(&self) -> String {
        let mut name = self.scenario.clone();
        for (k, v) in &self.variant {
            name.push_str(&format!("-{k}={v}"));
        }
        name.push_str(&format!("-{}", self.figure));
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._=-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{safe}.svg")
    }

    fn xs(&self) -> impl Iterator<Item = f64> + '_ {
        self.series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.x))
    }

    /// Log-scale x when every size is positive and they span more than 10×.
    pub fn log_x(&self) -> bool {
        let (lo, hi) = self
            .xs()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                (lo.min(x), hi.max(x))
            });
        lo > 0.0 && hi / lo > 10.0
    }
}

/// The median (middle value, or the mean of the two middle ones), min and max of `values`.
pub fn summarize(x: f64, values: &[f64]) -> Point {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    Point {
        x,
        median: median(&v),
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
        runs: v.len(),
    }
}

/// Groups the runs into charts; the second value lists what the reader should know (runs
/// without an x value, sizes pooled although another size parameter differs).
pub fn plan(
    lines: &[Line],
    x: Option<&str>,
    series: Option<&str>,
    figures: &[String],
) -> (Vec<Chart>, Vec<String>) {
    let mut notes = Vec::new();
    let mut charts = Vec::new();

    // Scenarios in order of first appearance.
    let mut scenarios: Vec<&str> = Vec::new();
    for l in lines {
        let s = l["scenario"]
            .as_str()
            .expect("parse_lines keeps text scenarios");
        if !scenarios.contains(&s) {
            scenarios.push(s);
        }
    }

    for scenario in scenarios {
        let runs: Vec<&Line> = lines
            .iter()
            .filter(|l| l["scenario"].as_str() == Some(scenario))
            .collect();
        let series_field: Option<String> = series.map(str::to_owned).or_else(|| {
            ["store", "relay"]
                .into_iter()
                .find(|f| runs.iter().any(|l| l.contains_key(*f)))
                .map(str::to_owned)
        });
        // Variants: the combinations of the other text fields.
        let variant_of = |l: &Line| -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> = l
                .iter()
                .filter(|(k, _)| {
                    k.as_str() != "scenario" && Some(k.as_str()) != series_field.as_deref()
                })
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect();
            v.sort();
            v
        };
        let mut variants: Vec<Vec<(String, String)>> = Vec::new();
        for l in &runs {
            let v = variant_of(l);
            if !variants.contains(&v) {
                variants.push(v);
            }
        }

        let prof = profile(scenario);
        for variant in variants {
            let group: Vec<&Line> = runs
                .iter()
                .copied()
                .filter(|l| variant_of(l) == variant)
                .collect();
            let what = describe(scenario, &variant);

            let x_field = match x {
                Some(f) => f.to_owned(),
                None => match pick_x(&group, prof.sizes) {
                    Some(f) => f.to_owned(),
                    None => {
                        notes.push(format!(
                            "{what}: no size field ({}) in every run; pass --x",
                            prof.sizes.join(", ")
                        ));
                        continue;
                    }
                },
            };
            let with_x: Vec<&Line> = group
                .iter()
                .copied()
                .filter(|l| num(l, &x_field).is_some())
                .collect();
            if with_x.len() < group.len() {
                notes.push(format!(
                    "{what}: {} run(s) without a number in {x_field} left out",
                    group.len() - with_x.len()
                ));
            }
            for size in prof.sizes.iter().filter(|s| **s != x_field) {
                let mut seen: Vec<f64> = with_x.iter().filter_map(|l| num(l, size)).collect();
                seen.sort_by(|a, b| a.total_cmp(b));
                seen.dedup();
                if seen.len() > 1 {
                    notes.push(format!(
                        "{what}: runs differ in {size} ({}) but are pooled by {x_field}",
                        seen.iter()
                            .map(|v| fmt_tick(*v))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }

            let figs: Vec<String> = if !figures.is_empty() {
                figures.to_vec()
            } else if !prof.figures.is_empty() {
                prof.figures.iter().map(|f| (*f).to_owned()).collect()
            } else {
                let mut all: Vec<String> = Vec::new();
                for l in &with_x {
                    for (k, v) in l.iter() {
                        if v.is_number()
                            && *k != x_field
                            && !prof.sizes.contains(&k.as_str())
                            && !BOOKKEEPING.contains(&k.as_str())
                            && !all.contains(k)
                        {
                            all.push(k.clone());
                        }
                    }
                }
                all
            };

            for figure in figs {
                let mut names: Vec<String> = Vec::new();
                // Per series name, the runs' values at each x.
                let mut values: Vec<Vec<(f64, Vec<f64>)>> = Vec::new();
                for l in &with_x {
                    let Some(y) = num(l, &figure) else { continue };
                    let xv = num(l, &x_field).expect("filtered above");
                    let name = match &series_field {
                        Some(f) => label(l, f).unwrap_or_else(|| format!("no {f}")),
                        None => "runs".to_owned(),
                    };
                    let i = match names.iter().position(|n| *n == name) {
                        Some(i) => i,
                        None => {
                            names.push(name);
                            values.push(Vec::new());
                            names.len() - 1
                        }
                    };
                    match values[i].iter_mut().find(|(x, _)| *x == xv) {
                        Some((_, ys)) => ys.push(y),
                        None => values[i].push((xv, vec![y])),
                    }
                }
                if names.is_empty() {
                    continue;
                }
                let series = names
                    .into_iter()
                    .zip(values)
                    .map(|(name, mut at)| {
                        at.sort_by(|a, b| a.0.total_cmp(&b.0));
                        Series {
                            name,
                            points: at.iter().map(|(x, ys)| summarize(*x, ys)).collect(),
                        }
                    })
                    .collect();
                charts.push(Chart {
                    scenario: scenario.to_owned(),
                    variant: variant.clone(),
                    x_field: x_field.clone(),
                    series_field: series_field.clone(),
                    figure,
                    series,
                });
            }
        }
    }
    (charts, notes)
}

/// The first size field with a number in every run that takes more than one value; else the
/// first with a number in every run.
fn pick_x<'a>(group: &[&Line], sizes: &[&'a str]) -> Option<&'a str> {
    let present: Vec<&'a str> = sizes
        .iter()
        .copied()
        .filter(|f| group.iter().all(|l| num(l, f).is_some()))
        .collect();
    present
        .iter()
        .copied()
        .find(|f| {
            let first = num(group[0], f);
            group.iter().any(|l| num(l, f) != first)
        })
        .or_else(|| present.first().copied())
}

fn describe(scenario: &str, variant: &[(String, String)]) -> String {
    let mut s = scenario.to_owned();
    for (k, v) in variant {
        s.push_str(&format!(" {k}={v}"));
    }
    s
}

/// The unit a field's name implies (the bench's naming: `_ms`, `_s`, `_per_s`, `_mib`,
/// `_us_per_…`, `bytes_…`, and the size parameters).
pub fn unit(field: &str) -> Option<&'static str> {
    if field.contains("_us_per_") {
        return Some("µs");
    }
    if field.ends_with("_per_s") || field.starts_with("per_s_") {
        return Some("per s");
    }
    let by_suffix = [
        ("_ms", "ms"),
        ("_s", "s"),
        ("_mib", "MiB"),
        ("_bytes", "bytes"),
        ("cores", "cores"),
    ];
    if let Some((_, u)) = by_suffix.iter().find(|(s, _)| field.ends_with(s)) {
        return Some(u);
    }
    if field.starts_with("bytes_") {
        return Some("bytes");
    }
    Some(match field {
        "stored" => "events stored",
        "connections" => "connections",
        "subscribers" | "members" => "members",
        "rate" | "target_rate" => "events/s",
        "events" | "lines" => "events",
        "publishers" => "publishers",
        "lost" | "delivered" | "expected_deliveries" | "duplicates" => "deliveries",
        "window" => "requests in flight",
        _ => return None,
    })
}

/// `field (unit)`, or the field alone when no unit is known (or the unit is the field).
pub fn axis_label(field: &str) -> String {
    match unit(field) {
        Some(u) if u != field => format!("{field} ({u})"),
        _ => field.to_owned(),
    }
}

/// A tick label: 10k, 1.5k, 1.25M, 0.25, 64.
pub fn fmt_tick(v: f64) -> String {
    fn trim(s: String) -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    }
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if a >= 1e3 {
        format!("{}k", trim(format!("{:.1}", v / 1e3)))
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        trim(format!("{v:.2}"))
    } else {
        trim(format!("{v:.3}"))
    }
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// The x axis: the measured sizes as ticks, linear or log10 between `lo` and `hi`.
struct SizeAxis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
}

impl SizeAxis {
    fn scale(&self, v: f64) -> f64 {
        if self.log {
            v.log10()
        } else {
            v
        }
    }
}

impl Ranged for SizeAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let (a, b) = (self.scale(self.lo), self.scale(self.hi));
        let t = (self.scale(*v) - a) / (b - a);
        limit.0 + (t * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Bold ticks only, at the sizes that were measured.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// Share of the x axis between neighbouring series at one size: the points of several series
/// measured at the same sizes (before/after, two stores) sit side by side instead of on top of
/// each other, so each whisker stays visible.
const DODGE: f64 = 0.012;

/// Where series `i` of `n` draws its point at size `x` on an axis from `lo` to `hi`: nudged
/// sideways by `DODGE` of the axis per series (in the axis' own scale, so the nudge looks the
/// same on a log axis), the series centred on `x`; `x` itself when there is one series.
fn dodged(x: f64, i: usize, n: usize, (lo, hi): (f64, f64), log: bool) -> f64 {
    let shift = (i as f64 - (n as f64 - 1.0) / 2.0) * DODGE;
    if log {
        x * 10f64.powf(shift * (hi / lo).log10())
    } else {
        x + shift * (hi - lo)
    }
}

/// Draws `chart` as an SVG file at `path`.
pub fn render(chart: &Chart, path: &Path) -> Result<(), String> {
    let log = chart.log_x();
    let mut xs: Vec<f64> = chart.xs().collect();
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.dedup();
    let (first, last) = (xs[0], xs[xs.len() - 1]);
    // A margin of 6% of the span (in the axis' own scale) either side.
    let (lo, hi) = if log {
        let pad = ((last / first).log10() * 0.06).max(0.05);
        (first / 10f64.powf(pad), last * 10f64.powf(pad))
    } else if last > first {
        let pad = (last - first) * 0.06;
        (first - pad, last + pad)
    } else {
        let pad = first.abs().max(1.0) * 0.1;
        (first - pad, last + pad)
    };
    // Ticks at the measured sizes (at most 12 of them).
    let step = xs.len().div_ceil(12);
    let ticks: Vec<f64> = xs.iter().step_by(step).copied().collect();
    let x_axis = SizeAxis { lo, hi, log, ticks };
    let (n_series, axis) = (chart.series.len(), (lo, hi));

    let points = chart.series.iter().flat_map(|s| s.points.iter());
    let y_min = points.clone().map(|p| p.min).fold(0.0, f64::min);
    let mut y_max = points.map(|p| p.max).fold(f64::NEG_INFINITY, f64::max);
    if y_max <= y_min {
        y_max = y_min + 1.0;
    }
    // Headroom above the highest whisker for the legend, which sits top left.
    let y_hi = y_max + (y_max - y_min) * (0.08 + 0.07 * chart.series.len() as f64);

    let mut caption = format!(
        "{}: {} by {}",
        describe(&chart.scenario, &chart.variant),
        chart.figure,
        chart.x_field
    );
    if let Some(f) = &chart.series_field {
        caption.push_str(&format!(", one line per {f}"));
    }
    let x_desc = if log {
        format!("{}, log scale", axis_label(&chart.x_field))
    } else {
        axis_label(&chart.x_field)
    };
    let y_desc = axis_label(&chart.figure);
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());

    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut ctx = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x_axis, y_min..y_hi)
        .map_err(|e| err(&e))?;
    ctx.configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| fmt_tick(*v))
        .y_label_formatter(&|v| fmt_tick(*v))
        .draw()
        .map_err(|e| err(&e))?;

    for (i, s) in chart.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let runs: Vec<usize> = s.points.iter().map(|p| p.runs).collect();
        let (lo, hi) = (
            runs.iter().min().copied().unwrap_or(0),
            runs.iter().max().copied().unwrap_or(0),
        );
        let legend = match (lo == hi, hi) {
            (true, 1) => format!("{} (1 run per size)", s.name),
            (true, n) => format!("{} (median of {n} runs, min–max)", s.name),
            (false, _) => format!("{} (median of {lo}–{hi} runs, min–max)", s.name),
        };
        let x_of = |p: &Point| dodged(p.x, i, n_series, axis, log);
        let line: Vec<(f64, f64)> = s.points.iter().map(|p| (x_of(p), p.median)).collect();
        ctx.draw_series(std::iter::once(PathElement::new(
            line,
            color.stroke_width(2),
        )))
        .map_err(|e| err(&e))?
        .label(legend)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        ctx.draw_series(s.points.iter().map(|p| {
            ErrorBar::new_vertical(x_of(p), p.min, p.median, p.max, color.stroke_width(2), 10)
        }))
        .map_err(|e| err(&e))?;
        ctx.draw_series(
            s.points
                .iter()
                .map(|p| Circle::new((x_of(p), p.median), 4, color.filled())),
        )
        .map_err(|e| err(&e))?;
    }
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn read_input(path: &Path) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("stdin: {e}"))?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Reads the files, writes the charts into `--out`, prints each file written on stdout and
/// what was skipped or pooled on stderr; returns the files written.
pub fn run(opts: &ChartOpts) -> Result<Vec<PathBuf>, String> {
    let mut lines = Vec::new();
    for f in &opts.files {
        let (mut l, skipped) = parse_lines(&read_input(f)?);
        if skipped > 0 {
            eprintln!(
                "chart: {}: skipped {skipped} line(s) that are not JSON objects with a scenario",
                f.display()
            );
        }
        lines.append(&mut l);
    }
    let (charts, notes) = plan(
        &lines,
        opts.x.as_deref(),
        opts.series.as_deref(),
        &opts.figures,
    );
    for n in &notes {
        eprintln!("chart: {n}");
    }
    if charts.is_empty() {
        return Err(format!(
            "no chart to draw from {} run(s): no runs, or none has the figures asked for",
            lines.len()
        ));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let mut written = Vec::new();
    for c in &charts {
        let path = opts.out.join(c.file_name());
        render(c, &path)?;
        println!("{}", path.display());
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made-up lines in the shapes the scenarios and scripts print (not measurements).
    const SAMPLE: &str = include_str!("../testdata/sample.jsonl");

    fn sample() -> Vec<Line> {
        parse_lines(SAMPLE).0
    }

    fn find<'a>(charts: &'a [Chart], file: &str) -> &'a Chart {
        charts
            .iter()
            .find(|c| c.file_name() == file)
            .unwrap_or_else(|| {
                let names: Vec<String> = charts.iter().map(Chart::file_name).collect();
                panic!("no chart {file} among {names:?}")
            })
    }

    fn pt(x: f64, median: f64, min: f64, max: f64, runs: usize) -> Point {
        Point {
            x,
            median,
            min,
            max,
            runs,
        }
    }

    #[test]
    fn keeps_json_objects_with_a_scenario_and_counts_the_rest() {
        let (lines, skipped) = parse_lines(SAMPLE);
        // 34 non-empty lines: two text lines, an array, an object without a scenario, one
        // whose scenario is a number and a cut-off object are skipped.
        assert_eq!((lines.len(), skipped), (28, 6));
        assert!(lines.iter().all(|l| l["scenario"].is_string()));
        assert!(lines.iter().all(|l| l.get("no_scenario").is_none()));
        assert_eq!(parse_lines("\n  \n").1, 0, "blank lines are not counted");
    }

    #[test]
    fn median_and_min_max_whisker_per_series_and_size() {
        let (charts, _) = plan(&sample(), None, None, &[]);
        let c = find(&charts, "query-mix=notes-shape=mixed-reqs_per_s.svg");
        assert_eq!(c.x_field, "stored");
        assert_eq!(c.series_field.as_deref(), Some("store"));
        // Series in order of first appearance, points ordered by size.
        let names: Vec<&str> = c.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["embedded", "postgres"]);
        assert_eq!(
            c.series[0].points,
            [
                pt(10_000.0, 12_500.0, 12_000.0, 13_100.0, 3),
                pt(100_000.0, 11_000.0, 10_500.0, 11_800.0, 3),
                pt(1_000_000.0, 9_000.0, 8_700.0, 9_600.0, 3),
            ]
        );
        // Two runs: the median is their mean. At 1M one postgres run lacks the figure and
        // one has it null: only the third counts.
        assert_eq!(
            c.series[1].points,
            [
                pt(10_000.0, 4_200.0, 4_000.0, 4_400.0, 2),
                pt(100_000.0, 3_800.0, 3_700.0, 3_900.0, 2),
                pt(1_000_000.0, 3_000.0, 3_000.0, 3_000.0, 1),
            ]
        );
        assert!(c.log_x(), "10k to 1M spans 100x");
    }

    #[test]
    fn a_missing_figure_drops_the_run_from_that_chart_only() {
        let (charts, _) = plan(&sample(), None, None, &[]);
        let c = find(&charts, "query-mix=notes-shape=mixed-eose_p99_ms.svg");
        let pg_1m = c.series[1].points.last().expect("postgres at 1M");
        assert_eq!(*pg_1m, pt(1_000_000.0, 32.0, 30.0, 34.0, 3));
        // A figure no run has makes no chart; a figure some variants lack is drawn for the
        // others only.
        assert!(!charts.iter().any(|c| c.figure == "deliveries_per_s"));
        let (asked, _) = plan(&sample(), None, None, &["relay_cpu_us_per_req".to_owned()]);
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].series[1].points.len(), 3);
        assert_eq!(asked[0].series[1].points[2].runs, 1);
    }

    #[test]
    fn x_is_the_size_that_varies_and_text_fields_split_the_charts() {
        let (charts, notes) = plan(&sample(), None, None, &[]);
        assert!(notes.is_empty(), "{notes:?}");
        let max = find(&charts, "ingest-mode=max-accepted_per_s.svg");
        assert_eq!(
            max.x_field, "connections",
            "target_rate is null in max mode"
        );
        let xs: Vec<f64> = max.series[0].points.iter().map(|p| p.x).collect();
        assert_eq!(xs, [1.0, 8.0, 64.0]);
        assert_eq!(max.series[0].name, "runs", "no label field: one series");
        assert!(max.log_x());
        let rate = find(&charts, "ingest-mode=fixed-rate-ok_p99_ms.svg");
        assert_eq!(rate.x_field, "target_rate");
        assert_eq!(rate.series[0].points[1], pt(5000.0, 73.8, 73.8, 73.8, 1));
        assert!(!rate.log_x(), "1k to 5k is linear");
        let fan = find(&charts, "fanout-group=gated-delivery_p99_ms.svg");
        assert_eq!(fan.x_field, "subscribers");
        let peer = find(&charts, "event-per_s_median.svg");
        assert_eq!(peer.x_field, "connections");
        assert_eq!(peer.series_field.as_deref(), Some("relay"));
        assert_eq!(peer.series[0].name, "mls-gateway");
        assert_eq!(
            peer.series[0].points,
            [pt(64.0, 25_000.0, 24_000.0, 26_000.0, 2)]
        );
        assert_eq!(
            peer.series[1].points,
            [pt(64.0, 8_500.0, 8_000.0, 9_000.0, 2)]
        );
        assert_eq!(charts.len(), 4 + 4 + 4 + 3 + 2);
    }

    #[test]
    fn x_and_series_can_be_chosen() {
        let lines = parse_lines(
            r#"{"scenario":"query","stored":1000,"connections":8,"reqs_per_s":100}
{"scenario":"query","stored":1000,"connections":64,"reqs_per_s":300}
{"scenario":"query","stored":1000,"connections":64,"reqs_per_s":500}
{"scenario":"query","stored":2000,"connections":64,"reqs_per_s":400}
{"scenario":"query","stored":2000,"reqs_per_s":900}"#,
        )
        .0;
        // By default x is stored, and the runs at other connection counts are pooled: said.
        let (charts, notes) = plan(&lines, None, None, &["reqs_per_s".into()]);
        assert_eq!(charts[0].x_field, "stored");
        assert!(
            notes.iter().any(|n| n.contains("differ in connections")),
            "{notes:?}"
        );
        // x = connections: the run without connections is left out, and said so.
        let (charts, notes) = plan(&lines, Some("connections"), None, &["reqs_per_s".into()]);
        assert_eq!(
            charts[0].series[0].points,
            [
                pt(8.0, 100.0, 100.0, 100.0, 1),
                pt(64.0, 400.0, 300.0, 500.0, 3)
            ]
        );
        assert!(
            notes.iter().any(|n| n.contains("1 run(s) without")),
            "{notes:?}"
        );
        // One series per stored size, named by the value; a run without it is its own series.
        let (charts, _) = plan(
            &lines,
            Some("connections"),
            Some("stored"),
            &["reqs_per_s".into()],
        );
        let names: Vec<&str> = charts[0].series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["1000", "2000"]);
        assert_eq!(
            charts[0].series[1].points,
            [pt(64.0, 400.0, 400.0, 400.0, 1)]
        );
    }

    #[test]
    fn series_at_one_size_sit_side_by_side() {
        // One series: at the size itself.
        assert_eq!(dodged(64.0, 0, 1, (1.0, 100.0), true), 64.0);
        assert_eq!(dodged(5000.0, 0, 1, (760.0, 5240.0), false), 5000.0);
        // Two series on a linear axis of span 4480: 1.2% of it apart, centred on the size.
        let (a, b) = (
            dodged(5000.0, 0, 2, (760.0, 5240.0), false),
            dodged(5000.0, 1, 2, (760.0, 5240.0), false),
        );
        assert!(a < 5000.0 && 5000.0 < b, "{a} {b}");
        assert!(((b - a) - 0.012 * 4480.0).abs() < 1e-9, "{a} {b}");
        assert!(((a + b) / 2.0 - 5000.0).abs() < 1e-9, "{a} {b}");
        // On a log axis the same share of the axis, in decades: 10k to 1M padded to 2.4
        // decades, so two series are 0.0288 decades apart at every size.
        let axis = (10_000.0 / 10f64.powf(0.2), 1_000_000.0 * 10f64.powf(0.2));
        for x in [10_000.0, 1_000_000.0] {
            let lo = dodged(x, 0, 2, axis, true);
            let hi = dodged(x, 1, 2, axis, true);
            assert!(((hi / lo).log10() - 0.012 * 2.4).abs() < 1e-9, "{lo} {hi}");
            assert!(((lo * hi).sqrt() / x - 1.0).abs() < 1e-9, "centred on {x}");
        }
        // Three series: the middle one on the size.
        assert_eq!(dodged(100.0, 1, 3, (0.0, 200.0), false), 100.0);
    }

    #[test]
    fn units_and_tick_labels() {
        assert_eq!(axis_label("reqs_per_s"), "reqs_per_s (per s)");
        assert_eq!(
            axis_label("relay_cpu_us_per_event"),
            "relay_cpu_us_per_event (µs)"
        );
        assert_eq!(axis_label("ok_p99_ms"), "ok_p99_ms (ms)");
        assert_eq!(axis_label("import_s"), "import_s (s)");
        assert_eq!(
            axis_label("bytes_per_connection"),
            "bytes_per_connection (bytes)"
        );
        assert_eq!(
            axis_label("relay_rss_after_mib"),
            "relay_rss_after_mib (MiB)"
        );
        assert_eq!(axis_label("stored"), "stored (events stored)");
        assert_eq!(axis_label("per_s_median"), "per_s_median (per s)");
        assert_eq!(axis_label("mystery"), "mystery");
        assert_eq!(axis_label("connections"), "connections");
        let ticks: Vec<String> = [
            10_000.0,
            100_000.0,
            1_000_000.0,
            1_250_000.0,
            1_500.0,
            64.0,
            0.25,
            7.5,
        ]
        .iter()
        .map(|v| fmt_tick(*v))
        .collect();
        assert_eq!(
            ticks,
            ["10k", "100k", "1M", "1.25M", "1.5k", "64", "0.25", "7.5"]
        );
    }

    #[test]
    fn writes_svgs_with_series_names_and_axis_labels() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("charts");
        let opts = ChartOpts {
            out: out.clone(),
            x: None,
            series: None,
            figures: Vec::new(),
            files: vec![PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/testdata/sample.jsonl"
            ))],
        };
        let written = run(&opts).expect("charts written");
        assert_eq!(written.len(), 17);
        let svg = std::fs::read_to_string(out.join("query-mix=notes-shape=mixed-reqs_per_s.svg"))
            .expect("query chart");
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        let texts = svg_texts(&svg);
        for text in [
            "embedded (median of 3 runs, min–max)",
            "postgres (median of 1–2 runs, min–max)",
            "stored (events stored), log scale",
            "reqs_per_s (per s)",
            "query mix=notes shape=mixed: reqs_per_s by stored, one line per store",
            "10k",
            "100k",
            "1M",
        ] {
            assert!(texts.iter().any(|t| t == text), "{text:?} not in {texts:?}");
        }
        let peer = svg_texts(
            &std::fs::read_to_string(out.join("event-per_s_median.svg")).expect("peer chart"),
        );
        for text in [
            "mls-gateway (median of 2 runs, min–max)",
            "rnostr (median of 2 runs, min–max)",
            "connections",
            "per_s_median (per s)",
            "64",
        ] {
            assert!(peer.iter().any(|t| t == text), "{text:?} not in {peer:?}");
        }
        assert!(!peer.iter().any(|t| t.contains("log scale")));
    }

    /// The text of every `<text>` element of an SVG.
    fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..t.find("</text>")?];
                Some(body.trim().to_owned())
            })
            .collect()
    }

    #[test]
    fn nothing_to_draw_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "not json\n{\"scenario\":\"query\",\"stored\":1}\n").unwrap();
        let opts = ChartOpts {
            out: dir.path().join("out"),
            x: None,
            series: None,
            figures: vec!["reqs_per_s".into()],
            files: vec![input],
        };
        let err = run(&opts).expect_err("no figure in the input");
        assert!(err.contains("no chart"), "{err}");
        assert!(!dir.path().join("out").exists());
    }
}
