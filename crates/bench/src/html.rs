//! The self-contained HTML report: the terminal table plus four charts —
//! latency over time, the percentile spectrum, throughput (achieved against
//! target) and errors — drawn by plotters as SVG and inlined, so the file
//! opens anywhere without a network or a script.

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::BenchReport;
use crate::stats::PercentilePoint;

const WIDTH: u32 = 880;
const HEIGHT: u32 = 320;

/// The report as one HTML page.
pub fn render_html(report: &BenchReport) -> String {
    let s = &report.settings;
    let mut page = String::new();
    let title = format!("scalestack bench: {} {}", s.method, s.url);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n\
         <style>body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:960px;color:#222}}\
         pre{{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:13px}}\
         h2{{margin-top:1.6em;font-size:1.15em}}figure{{margin:0}}\
         p.note{{color:#555;font-size:0.9em}}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    let _ = writeln!(page, "<pre>{}</pre>", escape(&report.render_table()));
    if report.open.is_some() {
        page.push_str(
            "<p class=\"note\">Open model: latency is measured from each request's due time, so \
             waiting for a free connection counts (no coordinated omission). The uncorrected \
             figures, from the actual send, are what a closed-loop generator would report.</p>\n",
        );
    }
    let charts = [
        ("Latency over time", latency_chart(report)),
        ("Percentile spectrum", spectrum_chart(report)),
        ("Throughput", throughput_chart(report)),
        ("Errors", errors_chart(report)),
    ];
    for (name, svg) in charts {
        let _ = write!(page, "<h2>{name}</h2>\n<figure>\n");
        match svg {
            Ok(svg) => page.push_str(&svg),
            Err(why) => {
                let _ = write!(page, "<p class=\"note\">No chart: {}</p>", escape(&why));
            }
        }
        page.push_str("\n</figure>\n");
    }
    page.push_str("</body>\n</html>\n");
    page
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

/// A line chart of `series` over x; fails (with a reason for the page)
/// when there is nothing to draw.
fn line_chart(x_label: &str, y_label: &str, series: &[Series]) -> Result<String, String> {
    let points = series.iter().flat_map(|(_, _, p)| p.iter());
    let (mut x_max, mut y_max) = (0.0f64, 0.0f64);
    let mut any = false;
    for &(x, y) in points {
        any = true;
        x_max = x_max.max(x);
        y_max = y_max.max(y);
    }
    if !any {
        return Err("the run recorded no data for it".into());
    }
    let x_max = if x_max > 0.0 { x_max } else { 1.0 };
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| e.to_string())?;
        for (name, color, points) in series {
            if points.is_empty() {
                continue;
            }
            let color = *color;
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Axis labels: whole numbers without decimals, small ones with a few.
fn tick(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const GREY: RGBColor = RGBColor(120, 120, 120);

fn latency_chart(r: &BenchReport) -> Result<String, String> {
    let rows = r.timeline.iter().filter(|row| row.rps > 0.0);
    let mut p50 = Vec::new();
    let mut p90 = Vec::new();
    let mut p99 = Vec::new();
    for row in rows {
        p50.push((row.t_s, row.p50_us as f64 / 1000.0));
        p90.push((row.t_s, row.p90_us as f64 / 1000.0));
        p99.push((row.t_s, row.p99_us as f64 / 1000.0));
    }
    line_chart(
        "seconds",
        "latency (ms)",
        &[
            ("p50", BLUE, p50),
            ("p90", GREEN, p90),
            ("p99", RED_ISH, p99),
        ],
    )
}

const RED_ISH: RGBColor = RGBColor(214, 39, 40);

/// Percentiles plotted against "nines" (−log10(1 − q)): 1 is 90%, 2 is
/// 99%, 3 is 99.9%, so the tail gets the room it deserves.
fn nines(points: &[PercentilePoint]) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter(|p| p.percentile < 100.0)
        .map(|p| (-(1.0 - p.percentile / 100.0).log10(), p.us as f64 / 1000.0))
        .collect()
}

fn spectrum_chart(r: &BenchReport) -> Result<String, String> {
    let mut series = vec![(
        if r.spectrum_uncorrected.is_empty() {
            "latency"
        } else {
            "from due time"
        },
        BLUE,
        nines(&r.spectrum),
    )];
    if !r.spectrum_uncorrected.is_empty() {
        series.push((
            "from send (uncorrected)",
            ORANGE,
            nines(&r.spectrum_uncorrected),
        ));
    }
    line_chart(
        "percentile, in nines (1 = 90%, 2 = 99%, 3 = 99.9%)",
        "latency (ms)",
        &series,
    )
}

fn throughput_chart(r: &BenchReport) -> Result<String, String> {
    let responses = r.timeline.iter().map(|row| (row.t_s, row.rps)).collect();
    let mut series = vec![("responses/s", BLUE, responses)];
    if r.open.is_some() {
        let sent = r
            .timeline
            .iter()
            .map(|row| (row.t_s, row.sent_rps))
            .collect();
        let target = r
            .timeline
            .iter()
            .filter_map(|row| Some((row.t_s, row.target_rps?)))
            .collect();
        series.push(("sent/s", GREEN, sent));
        series.push(("target/s", GREY, target));
    }
    line_chart("seconds", "requests per second", &series)
}

fn errors_chart(r: &BenchReport) -> Result<String, String> {
    let errors = r
        .timeline
        .iter()
        .map(|row| (row.t_s, row.errors as f64 / row.seconds.max(1e-9)))
        .collect();
    line_chart(
        "seconds",
        "errors per second",
        &[("errors/s", RED_ISH, errors)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TimelineRow;

    #[test]
    fn pages_hold_every_chart_inline_and_escape_text() {
        let mut report: BenchReport = serde_json::from_value(serde_json::json!({
            "settings": {
                "url": "http://127.0.0.1:8080/users/{id}?a=1&b=<2>", "method": "GET",
                "keys": "1..=10", "dist": "uniform", "connections": 8, "threads": 2,
                "duration_s": 2.0, "timeout_s": 10.0
            },
            "elapsed_s": 2.0, "requests": 3, "rps": 1.5, "status_counts": {"200": 3},
            "errors": {"connect": 0, "timeout": 0, "io": 0},
            "latency": {"count": 3, "min_us": 1, "mean_us": 500.0, "stdev_us": 1.0, "p50_us": 400,
                        "p90_us": 800, "p99_us": 900, "p999_us": 900, "max_us": 900},
            "body_bytes": 0, "reconnects": 0, "client_cpu": null, "target_cpu": null
        }))
        .unwrap();
        report.spectrum = vec![
            PercentilePoint {
                percentile: 0.0,
                us: 100,
            },
            PercentilePoint {
                percentile: 90.0,
                us: 800,
            },
            PercentilePoint {
                percentile: 100.0,
                us: 900,
            },
        ];
        report.timeline = (1..=2)
            .map(|t| TimelineRow {
                t_s: f64::from(t),
                seconds: 1.0,
                target_rps: None,
                sent_rps: 1.5,
                rps: 1.5,
                errors: 0,
                p50_us: 400,
                p90_us: 800,
                p99_us: 900,
                max_us: 900,
            })
            .collect();
        let page = render_html(&report);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert_eq!(page.matches("<svg").count(), 4, "{page}");
        assert!(page.contains("a=1&amp;b=&lt;2&gt;"));
        assert!(!page.contains("<2>"));
        assert!(page.contains("p99") && page.contains("responses/s"));
        assert!(!page.contains("<script"), "self-contained, no scripts");

        report.timeline.clear();
        report.spectrum.clear();
        let page = render_html(&report);
        assert_eq!(page.matches("<svg").count(), 0);
        assert_eq!(page.matches("No chart").count(), 4);
    }
}
