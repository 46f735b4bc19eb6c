//! A [`CapacityPlan`] as an aligned terminal table, as Markdown, or as JSON.
//! Numbers are grouped by thousands and dollars rounded to the dollar, the
//! way the seed article writes them, so the two can be read side by side.

use std::fmt::Write as _;

use crate::CapacityPlan;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// GitHub-flavoured Markdown tables.
    Markdown,
    /// The plan as JSON.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(Self::Table),
            "markdown" | "md" => Ok(Self::Markdown),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown format `{other}`; expected table, markdown or json"
            )),
        }
    }
}

/// `1234567.8` → `1,234,568`.
pub fn thousands(v: f64) -> String {
    let rounded = v.round();
    let negative = rounded < 0.0;
    let digits = format!("{:.0}", rounded.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if negative { format!("-{out}") } else { out }
}

/// Bytes in decimal units, as the seed writes them: `1 GB`, `86.4 TB`.
pub fn bytes(v: f64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = v;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", units[unit])
}

fn dollars(v: f64) -> String {
    format!("${}", thousands(v))
}

/// Large counts in words: `86.4 billion`, `2.59 trillion`.
fn words(v: f64) -> String {
    for (scale, name) in [(1e12, "trillion"), (1e9, "billion"), (1e6, "million")] {
        if v >= scale {
            let x = v / scale;
            let text = if x >= 100.0 {
                format!("{x:.0}")
            } else if x >= 10.0 {
                format!("{x:.1}")
            } else {
                format!("{x:.2}")
            };
            return format!("{text} {name}");
        }
    }
    thousands(v)
}

type Section = (&'static str, Vec<[String; 3]>);

fn sections(p: &CapacityPlan) -> Vec<Section> {
    let t = &p.traffic;
    let r = |a: &str, b: String, c: &str| [a.to_owned(), b, c.to_owned()];
    let w = &p.workers;
    let mut workers = vec![
        r(
            "messages per worker",
            format!("{}/s", thousands(w.messages_per_worker)),
            "1000 / processing ms",
        ),
        r(
            "busy workers",
            thousands(w.busy as f64),
            "Little's law: messages/s × processing time",
        ),
        r(
            "workers",
            thousands(w.workers as f64),
            "busy × (1 + headroom)",
        ),
        r("utilisation", format!("{:.1}%", w.utilisation * 100.0), ""),
        r(
            "mean wait for a worker",
            w.mean_wait_ms
                .map_or_else(|| "unbounded".to_owned(), |ms| format!("{ms:.3} ms")),
            "Erlang C",
        ),
        r(
            "workers for the wait target",
            thousands(w.workers_for_wait_target as f64),
            "Erlang C",
        ),
    ];
    for (ms, busy) in &w.by_processing_time {
        workers.push(r(
            &format!("at {ms} ms per message"),
            thousands(*busy as f64),
            "busy workers",
        ));
    }
    let mut api = vec![
        r(
            "minimum",
            thousands(p.api.minimum as f64),
            "rps / rps per server",
        ),
        r(
            "API servers",
            thousands(p.api.servers as f64),
            "× (1 + headroom)",
        ),
        r(
            "load per server",
            format!("{}/s", thousands(p.api.rps_per_server)),
            "at peak",
        ),
    ];
    if let Some(n) = p.api.in_flight_per_server {
        api.push(r(
            "in flight per server",
            format!("{n:.1}"),
            "Little's law: rps × latency",
        ));
    }
    let d = &p.database;
    vec![
        (
            "Traffic",
            vec![
                r("requests", format!("{}/s", thousands(t.rps)), ""),
                r(
                    "reads / writes",
                    format!(
                        "{} / {}",
                        thousands(t.reads_per_s),
                        thousands(t.writes_per_s)
                    ),
                    "per second",
                ),
                r("per day", words(t.requests_per_day), "requests"),
                r("per month", words(t.requests_per_month), "requests"),
                r(
                    "bandwidth",
                    format!("{}/s", bytes(t.bytes_per_s)),
                    "responses",
                ),
                r("per day", bytes(t.bytes_per_day), ""),
            ],
        ),
        ("API servers", api),
        (
            "Queue",
            vec![
                r(
                    "messages",
                    format!("{}/s", thousands(p.queue.messages_per_s)),
                    "",
                ),
                r(
                    "throughput",
                    format!("{} MB/s", thousands(p.queue.mb_per_s)),
                    "",
                ),
                r(
                    "partitions",
                    thousands(p.queue.partitions as f64),
                    "MB/s / MB/s per partition",
                ),
                r(
                    "brokers",
                    thousands(p.queue.brokers as f64),
                    &format!(
                        "MB/s × replication {} / MB/s per broker",
                        p.queue.replication_factor
                    ),
                ),
            ],
        ),
        ("Consumer workers", workers),
        (
            "Cache",
            vec![
                r(
                    "operations",
                    format!("{}/s", thousands(p.cache.ops_per_s)),
                    "a lookup per read, an invalidation per write",
                ),
                r(
                    "hits / misses",
                    format!(
                        "{} / {}",
                        thousands(p.cache.hits_per_s),
                        thousands(p.cache.misses_per_s)
                    ),
                    "per second",
                ),
                r("cache nodes", thousands(p.cache.nodes as f64), ""),
            ],
        ),
        (
            "Database",
            vec![
                r(
                    "reads reaching it",
                    format!("{}/s", thousands(d.reads_per_s)),
                    "cache misses",
                ),
                r("writes", format!("{}/s", thousands(d.writes_per_s)), ""),
                r(
                    "read replicas",
                    thousands(d.read_replicas as f64),
                    "reads / replica capacity",
                ),
                r(
                    "shards",
                    thousands(d.shards as f64),
                    "writes / primary write ceiling",
                ),
                r(
                    "instances per shard",
                    thousands(d.instances_per_shard as f64),
                    &format!("1 primary + {} replicas", d.replicas_per_shard),
                ),
                r("database instances", thousands(d.instances as f64), ""),
            ],
        ),
    ]
}

fn cost_rows(p: &CapacityPlan) -> Vec<[String; 3]> {
    let mut rows: Vec<[String; 3]> = p
        .cost
        .iter()
        .map(|c| {
            let setup = if c.count > 0 || c.hourly > 0.0 {
                format!(
                    "{} × {} @ ${:.2}/hr",
                    thousands(c.count as f64),
                    c.setup,
                    c.hourly
                )
            } else {
                c.setup.clone()
            };
            [c.component.clone(), setup, dollars(c.monthly)]
        })
        .collect();
    rows.push(["Total".into(), "per month".into(), dollars(p.monthly_total)]);
    rows.push(["".into(), "per year".into(), dollars(p.yearly_total)]);
    rows
}

/// Renders `plan` in `format`.
pub fn render(plan: &CapacityPlan, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(plan).expect("plain data serialises") + "\n",
        Format::Table => {
            let mut out = String::new();
            for (title, rows) in sections(plan) {
                let _ = writeln!(out, "{title}");
                out.push_str(&aligned(&rows, [false, true, false]));
                out.push('\n');
            }
            let _ = writeln!(out, "Monthly cost");
            out.push_str(&aligned(&cost_rows(plan), [false, false, true]));
            notes(&mut out, plan, "");
            out
        }
        Format::Markdown => {
            let mut out = String::new();
            for (title, rows) in sections(plan) {
                let _ = writeln!(out, "### {title}\n\n| | | |\n|---|---:|---|");
                for [a, b, c] in rows {
                    let _ = writeln!(out, "| {a} | {b} | {c} |");
                }
                out.push('\n');
            }
            let _ = writeln!(
                out,
                "### Monthly cost\n\n| Component | Setup | Monthly |\n|---|---|---:|"
            );
            for [a, b, c] in cost_rows(plan) {
                let _ = writeln!(out, "| {a} | {b} | {c} |");
            }
            notes(&mut out, plan, "- ");
            out
        }
    }
}

fn notes(out: &mut String, plan: &CapacityPlan, bullet: &str) {
    if plan.notes.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nNotes\n");
    for n in &plan.notes {
        let _ = writeln!(out, "{bullet}{n}");
    }
}

/// Columns padded to their widest cell; `right` aligns a column right.
pub fn aligned<const N: usize>(rows: &[[String; N]], right: [bool; N]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::from("  ");
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if right[i] {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_like_the_seed() {
        assert_eq!(thousands(63_608.0), "63,608");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(thousands(999.6), "1,000");
        assert_eq!(thousands(-1234.0), "-1,234");
        assert_eq!(bytes(1e9), "1 GB");
        assert_eq!(bytes(86.4e12), "86.4 TB");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(words(86.4e9), "86.4 billion");
        assert_eq!(words(2.592e12), "2.59 trillion");
        assert_eq!("md".parse::<Format>().unwrap(), Format::Markdown);
        assert!("csv".parse::<Format>().unwrap_err().contains("csv"));
    }
}
