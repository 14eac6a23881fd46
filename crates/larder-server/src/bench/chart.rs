//! `--chart FILE.svg`: throughput and latency per pattern, drawn with
//! plotters' SVG backend (no fonts or system libraries needed).
//!
//! Horizontal bars, so long pattern names fit as axis labels: the top panel
//! is ops/s, the bottom one p50 / p95 / p99 latency on a logarithmic axis
//! (a database round trip and a near-cache hit differ by orders of magnitude).

use super::report::PatternReport;
use anyhow::{anyhow, Context as _, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use std::path::Path;

/// Colours of p50, p95 and p99.
const SHADES: [RGBColor; 3] = [
    RGBColor(120, 170, 220),
    RGBColor(50, 110, 180),
    RGBColor(15, 50, 110),
];

/// Draws the chart of `reports` into `path`.
pub(crate) fn write_svg(path: &Path, title: &str, reports: &[PatternReport]) -> Result<()> {
    let rows = reports.len();
    let height = 160 + 60 * rows as u32 * 2;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    draw(&root, title, reports).map_err(|e| anyhow!("--chart {}: {e}", path.display()))?;
    root.present()
        .map_err(|e| anyhow!("--chart {}: {e}", path.display()))
        .context("writing the SVG")
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    reports: &[PatternReport],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 * 2 / 5);
    let n = reports.len() as u32;
    let names: Vec<&str> = reports.iter().map(|r| r.pattern).collect();

    // Throughput.
    let max_ops = reports.iter().map(|r| r.ops_per_sec).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&top)
        .caption("throughput (ops/s)", ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(190)
        .build_cartesian_2d(0.0..max_ops, (0..n).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n as usize)
        .y_label_formatter(&|v| label(v, 1, &names))
        .draw()?;
    chart.draw_series(reports.iter().enumerate().map(|(i, r)| {
        let i = i as u32;
        Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (r.ops_per_sec, SegmentValue::Exact(i + 1)),
            ],
            SHADES[1].filled(),
        )
    }))?;

    // Latency: three bars per pattern (p50, p95, p99), log scale.
    let floor = 0.001;
    let max_ms = reports.iter().map(|r| r.latency_ms.p99).fold(1.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "latency per operation (ms, log scale): p50 light, p95 medium, p99 dark",
            ("sans-serif", 15),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(190)
        .build_cartesian_2d((floor..max_ms).log_scale(), (0..3 * n).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(3 * n as usize)
        .y_label_formatter(&|v| label(v, 3, &names))
        .draw()?;
    chart.draw_series(reports.iter().enumerate().flat_map(|(i, r)| {
        let l = &r.latency_ms;
        [l.p50, l.p95, l.p99]
            .into_iter()
            .enumerate()
            .map(move |(j, v)| {
                let row = 3 * i as u32 + j as u32;
                Rectangle::new(
                    [
                        (floor, SegmentValue::Exact(row)),
                        (v.max(floor), SegmentValue::Exact(row + 1)),
                    ],
                    SHADES[j].filled(),
                )
            })
    }))?;
    Ok(())
}

/// The label of segment `v` when each pattern spans `per` segments: the
/// pattern's name on its middle segment, nothing elsewhere.
fn label(v: &SegmentValue<u32>, per: u32, names: &[&str]) -> String {
    match v {
        SegmentValue::CenterOf(s) if s % per == per / 2 => names
            .get((s / per) as usize)
            .map_or_else(String::new, |n| (*n).to_owned()),
        _ => String::new(),
    }
}
