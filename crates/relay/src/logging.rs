//! Structured logs: one JSON object per line with the fields Cloud Logging reads
//! (`severity`, `message`, `timestamp`), or plain text for local use.

use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. The level comes from `RUST_LOG`, else `LOG_LEVEL`, else
/// `info`.
pub fn init(json: bool) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| std::env::var("LOG_LEVEL").ok())
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // At debug, tokio-postgres logs every statement with its parameters (event content,
    // pubkeys): capped at info whatever RUST_LOG asks, like the relay's own no-content rule.
    let filter = match "tokio_postgres=info".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.event_format(JsonLines).try_init()
    } else {
        builder.try_init()
    };
    let _ = result; // already installed (tests): keep the first
}

struct JsonLines;

fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        _ => "DEBUG",
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.rest.insert(field.name().to_owned(), value.into());
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rest.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rest.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.rest.insert(field.name().to_owned(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.rest.insert(field.name().to_owned(), text.into());
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut line = serde_json::Map::new();
        line.insert("timestamp".into(), rfc3339(now).into());
        line.insert("severity".into(), severity(meta.level()).into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        line.insert("message".into(), fields.message.into());
        if !fields.rest.is_empty() {
            line.insert("fields".into(), fields.rest.into());
        }
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// `2026-11-30T12:34:56.789Z` from a duration since the epoch (civil-from-days, proleptic
/// Gregorian), without pulling in a date crate.
fn rfc3339(since_epoch: std::time::Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(
            super::rfc3339(Duration::from_millis(0)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            super::rfc3339(Duration::from_millis(1_795_994_933_250)),
            "2026-11-29T23:28:53.250Z"
        );
        assert_eq!(
            super::rfc3339(Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}

/// Makes a client-influenced text safe for a log line: runs of 64 or more hex digits (full
/// pubkeys, ids) are cut to their first 8, and the whole is capped at 200 characters.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(220));
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 64 {
            out.push_str(&run[..8]);
            out.push('…');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    match out.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &out[..i]),
        None => out,
    }
}

#[cfg(test)]
mod redact_tests {
    #[test]
    fn long_hex_runs_are_shortened() {
        let pk = "ab".repeat(32);
        assert_eq!(
            super::redact(&format!("restricted: {pk} is not a member")),
            "restricted: abababab… is not a member"
        );
        assert_eq!(super::redact("invalid: 0x0001"), "invalid: 0x0001");
        assert_eq!(super::redact(&"x".repeat(500)).chars().count(), 201);
    }
}
