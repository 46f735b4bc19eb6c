//! The result of a run: [`BenchReport`], serialisable for `--json FILE` and
//! rendered as a terminal table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::cpu::CpuUsage;
use crate::stats::{ErrorCounts, LatencySummary, is_error_status};
use crate::{KeyDist, KeyRange};

/// What was run, as resolved (e.g. `threads` is the real worker count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchSettings {
    /// The URL template.
    pub url: String,
    /// The request method.
    pub method: String,
    /// The key range.
    pub keys: KeyRange,
    /// The key distribution.
    pub dist: KeyDist,
    /// Concurrent connections.
    pub connections: usize,
    /// Worker threads of the load generator.
    pub threads: usize,
    /// How long new requests were started for, in seconds.
    pub duration_s: f64,
    /// Per-request timeout, in seconds.
    pub timeout_s: f64,
}

/// Everything a run measured.
///
/// Counting rule: a request in flight when the duration ends is allowed to
/// finish (within the timeout) and is counted like any other; `elapsed_s`
/// runs until the last of them finished. So every response the target sent
/// is in the report, and `rps` is over the time actually spent. The probe
/// request sent before the load is not counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// What was run.
    pub settings: BenchSettings,
    /// Wall-clock time from the first request to the last response, in seconds.
    pub elapsed_s: f64,
    /// Complete responses, whatever their status.
    pub requests: u64,
    /// `requests / elapsed_s`.
    pub rps: f64,
    /// Responses by status code.
    pub status_counts: BTreeMap<u16, u64>,
    /// Transport errors by kind (not included in `requests`).
    pub errors: ErrorCounts,
    /// Latency of complete responses.
    pub latency: LatencySummary,
    /// Response body bytes received (headers are not counted).
    pub body_bytes: u64,
    /// Connections re-opened after the target or an error closed one.
    pub reconnects: u64,
    /// CPU time of the load generator's own process over the run; `None` if
    /// `/proc` could not be read.
    pub client_cpu: Option<CpuUsage>,
    /// CPU time of the process trees of `cpu_pids` over the run; `None` if
    /// none were given.
    pub target_cpu: Option<CpuUsage>,
}

impl BenchReport {
    /// Responses with a status other than 2xx or 3xx.
    pub fn error_responses(&self) -> u64 {
        self.status_counts
            .iter()
            .filter(|&(&s, _)| is_error_status(s))
            .map(|(_, n)| n)
            .sum()
    }

    /// The report as an aligned table for a terminal.
    pub fn render_table(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(out, "{} {}", s.method, s.url);
        let _ = writeln!(
            out,
            "keys {} {} · {} connections · {} threads · {} s (timeout {} s)",
            s.keys,
            s.dist,
            s.connections,
            s.threads,
            trim_float(s.duration_s),
            trim_float(s.timeout_s),
        );
        out.push('\n');

        let mut summary = vec![
            row([
                "requests",
                &self.requests.to_string(),
                &format!("{:.1} req/s", self.rps),
            ]),
            row(["elapsed", &format!("{:.3} s", self.elapsed_s), ""]),
            row(["received", &bytes(self.body_bytes), "response bodies"]),
            row(["reconnects", &self.reconnects.to_string(), ""]),
        ];
        let transport = self.errors.total();
        let bad = self.error_responses();
        summary.push(row([
            "errors",
            &(transport + bad).to_string(),
            "non-2xx/3xx + transport",
        ]));
        out.push_str(&table(&summary, &[Align::Left, Align::Right, Align::Left]));
        out.push('\n');

        let total = self.requests.max(1) as f64;
        let mut statuses = vec![row(["status", "count", "share"])];
        for (status, &n) in &self.status_counts {
            statuses.push(row([
                &status.to_string(),
                &n.to_string(),
                &format!("{:.1}%", n as f64 * 100.0 / total),
            ]));
        }
        if self.status_counts.is_empty() {
            statuses.push(row(["(none)", "0", ""]));
        }
        out.push_str(&table(
            &statuses,
            &[Align::Left, Align::Right, Align::Right],
        ));
        out.push('\n');

        let e = &self.errors;
        let errors = vec![
            row(["transport errors", "count"]),
            row(["connect", &e.connect.to_string()]),
            row(["timeout", &e.timeout.to_string()]),
            row(["io", &e.io.to_string()]),
        ];
        out.push_str(&table(&errors, &[Align::Left, Align::Right]));
        out.push('\n');

        let l = &self.latency;
        let latency = vec![
            row(["latency (ms)", "p50", "p90", "p99", "p99.9", "max", "mean"]),
            row([
                "",
                &ms(l.p50_us as f64),
                &ms(l.p90_us as f64),
                &ms(l.p99_us as f64),
                &ms(l.p999_us as f64),
                &ms(l.max_us as f64),
                &ms(l.mean_us),
            ]),
        ];
        let mut align = vec![Align::Right; 7];
        align[0] = Align::Left;
        out.push_str(&table(&latency, &align));

        if self.client_cpu.is_some() || self.target_cpu.is_some() {
            out.push('\n');
            let mut cpu = vec![row(["cpu", "processes", "total ms", "µs/request"])];
            for (name, usage) in [("client", &self.client_cpu), ("targets", &self.target_cpu)] {
                if let Some(u) = usage {
                    cpu.push(row([
                        name,
                        &u.processes.to_string(),
                        &format!("{:.1}", u.cpu_us as f64 / 1000.0),
                        &u.us_per_request
                            .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
                    ]));
                }
            }
            out.push_str(&table(
                &cpu,
                &[Align::Left, Align::Right, Align::Right, Align::Right],
            ));
        }
        out
    }
}

/// Milliseconds from microseconds, with precision that suits the size: µs
/// resolution below 100 ms, 0.1 ms above.
fn ms(us: f64) -> String {
    let ms = us / 1000.0;
    if ms < 100.0 {
        format!("{ms:.3}")
    } else {
        format!("{ms:.1}")
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

/// `20` rather than `20.0`, `0.5` stays.
fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// Pads every column to its widest cell, two spaces between columns, no
/// trailing blanks.
fn table(rows: &[Vec<String>], align: &[Align]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = widths[c] - cell.chars().count();
            match align.get(c).copied().unwrap_or(Align::Left) {
                Align::Left => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
        }
        out.push_str("  ");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BenchReport {
        BenchReport {
            settings: BenchSettings {
                url: "http://127.0.0.1:8080/users/{id}".into(),
                method: "GET".into(),
                keys: "1..100000".parse().unwrap(),
                dist: "zipf:1.1".parse().unwrap(),
                connections: 64,
                threads: 2,
                duration_s: 20.0,
                timeout_s: 10.0,
            },
            elapsed_s: 20.0012,
            requests: 1_234_567,
            rps: 61_724.6,
            status_counts: BTreeMap::from([(200, 1_200_000), (404, 34_567)]),
            errors: ErrorCounts {
                connect: 0,
                timeout: 3,
                io: 1,
            },
            latency: LatencySummary {
                count: 1_234_567,
                min_us: 95,
                mean_us: 903.2,
                stdev_us: 300.0,
                p50_us: 812,
                p90_us: 1_204,
                p99_us: 2_998,
                p999_us: 7_310,
                max_us: 125_100,
            },
            body_bytes: 123 * 1024 * 1024,
            reconnects: 5,
            client_cpu: Some(CpuUsage::new(
                vec![1],
                1,
                std::time::Duration::from_millis(12_345),
                1_234_567,
            )),
            target_cpu: Some(CpuUsage::new(
                vec![2],
                3,
                std::time::Duration::from_millis(45_678),
                1_234_567,
            )),
        }
    }

    #[test]
    fn table_shows_every_figure() {
        let text = sample().render_table();
        for want in [
            "GET http://127.0.0.1:8080/users/{id}",
            "keys 1..=100000 zipf:1.1 · 64 connections · 2 threads · 20 s (timeout 10 s)",
            "1234567",
            "61724.6 req/s",
            "20.001 s",
            "123.0 MiB",
            "34571",
            "97.2%",
            "2.8%",
            "0.812",
            "1.204",
            "2.998",
            "7.310",
            "125.1",
            "0.903",
            "12345.0",
            "45678.0",
            "37.0",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(
            text.lines().all(|l| l == l.trim_end()),
            "trailing blanks in\n{text}"
        );
    }

    #[test]
    fn columns_line_up() {
        let text = sample().render_table();
        let lines: Vec<&str> = text.lines().collect();
        let status = lines
            .iter()
            .position(|l| l.trim_start().starts_with("status"))
            .unwrap();
        // Counts are right-aligned: the three rows end their count column at
        // the same position.
        let end = |l: &str, word: &str| l.find(word).unwrap() + word.len();
        let col = end(lines[status], "count");
        assert_eq!(end(lines[status + 1], "1200000"), col);
        assert_eq!(end(lines[status + 2], "34567"), col);
        let latency = lines
            .iter()
            .position(|l| l.trim_start().starts_with("latency"))
            .unwrap();
        assert_eq!(end(lines[latency], "p99"), end(lines[latency + 1], "2.998"));
    }

    #[test]
    fn json_round_trips() {
        let report = sample();
        let json = serde_json::to_string_pretty(&report).unwrap();
        assert!(
            json.contains("\"keys\": \"1..=100000\"") && json.contains("\"dist\": \"zipf:1.1\""),
            "{json}"
        );
        assert!(json.contains("\"404\": 34567"), "{json}");
        assert_eq!(serde_json::from_str::<BenchReport>(&json).unwrap(), report);
    }

    #[test]
    fn counts_error_responses() {
        let mut report = sample();
        report.status_counts.insert(503, 10);
        report.status_counts.insert(302, 7);
        assert_eq!(report.error_responses(), 34_577);
    }

    #[test]
    fn formats_units() {
        assert_eq!(ms(812.0), "0.812");
        assert_eq!(ms(99_999.0), "99.999");
        assert_eq!(ms(125_100.0), "125.1");
        assert_eq!(bytes(10), "10 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(trim_float(0.5), "0.5");
        assert_eq!(trim_float(20.0), "20");
    }
}
