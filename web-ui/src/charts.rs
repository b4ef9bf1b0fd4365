//! Server-rendered SVG sparklines of recent throughput (no client-side charting).

use maud::{html, Markup};

use crate::backend::Sample;

/// Chart width in SVG user units (pixels at 1:1).
const CHART_WIDTH_PX: f64 = 240.0;
/// Chart height in SVG user units.
const CHART_HEIGHT_PX: f64 = 48.0;
/// Most samples drawn; older ones are dropped so a misbehaving backend cannot bloat the page.
pub(crate) const CHART_SAMPLES_MAX: usize = 300;

/// A sparkline of `value(sample)` with its latest value and peak as text.
pub(crate) fn sparkline(
    title: &str,
    unit: &str,
    samples: &[Sample],
    value: fn(&Sample) -> f64,
) -> Markup {
    let start = samples.len().saturating_sub(CHART_SAMPLES_MAX);
    let values: Vec<f64> = samples[start..]
        .iter()
        .map(value)
        .map(|v| if v.is_finite() && v > 0.0 { v } else { 0.0 })
        .collect();
    let peak = values.iter().copied().fold(0.0_f64, f64::max);
    let latest = values.last().copied().unwrap_or(0.0);
    let points = polyline_points(&values, peak);
    html! {
        figure.chart {
            figcaption { (title) ": " strong { (human(latest)) " " (unit) } " (peak " (human(peak)) ")" }
            svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label=(title)
                width=(CHART_WIDTH_PX) height=(CHART_HEIGHT_PX)
                viewBox=(format!("0 0 {CHART_WIDTH_PX} {CHART_HEIGHT_PX}")) {
                rect x="0" y="0" width=(CHART_WIDTH_PX) height=(CHART_HEIGHT_PX) fill="none" stroke="#ccc" {}
                @if values.len() >= 2 {
                    polyline points=(points) fill="none" stroke="#2563eb" stroke-width="1.5" {}
                } @else {
                    text x="8" y="28" font-size="12" fill="#888" { "no data yet" }
                }
            }
        }
    }
}

/// "x,y x,y …" scaled so `peak` touches the top (a flat zero line when idle).
fn polyline_points(values: &[f64], peak: f64) -> String {
    if values.len() < 2 {
        return String::new();
    }
    let step = CHART_WIDTH_PX / (values.len() - 1) as f64;
    let scale = if peak > 0.0 {
        (CHART_HEIGHT_PX - 2.0) / peak
    } else {
        0.0
    };
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = i as f64 * step;
            let y = CHART_HEIGHT_PX - 1.0 - v * scale;
            debug_assert!((0.0..=CHART_HEIGHT_PX).contains(&y));
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// 1234567 → "1.2M".
pub(crate) fn human(v: f64) -> String {
    const UNITS: [(f64, &str); 4] = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, suffix) in UNITS {
        if v >= scale {
            return format!("{:.1}{suffix}", v / scale);
        }
    }
    format!("{v:.0}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: &[f64]) -> Vec<Sample> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Sample {
                at_unix_ms: i as u64 * 1000,
                ops_per_s: *v,
                bytes_per_s: 0.0,
            })
            .collect()
    }

    #[test]
    fn points_span_the_chart_and_peak_touches_top() {
        let pts = polyline_points(&[0.0, 5.0, 10.0], 10.0);
        assert_eq!(pts, "0.0,47.0 120.0,24.0 240.0,1.0");
    }

    #[test]
    fn bad_values_are_flattened_and_render() {
        let s = samples(&[f64::NAN, -3.0, f64::INFINITY, 2.0]);
        let html = sparkline("ops", "op/s", &s, |s| s.ops_per_s).into_string();
        assert!(html.contains("<polyline"), "{html}");
        assert!(!html.contains("NaN") && !html.contains("inf"), "{html}");
        let empty = sparkline("ops", "op/s", &[], |s| s.ops_per_s).into_string();
        assert!(empty.contains("no data yet"));
    }

    #[test]
    fn human_units() {
        assert_eq!(human(999.0), "999");
        assert_eq!(human(1234567.0), "1.2M");
    }
}
