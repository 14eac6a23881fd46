//! `--chart FILE.svg`: throughput and latency per pattern, drawn with
//! plotters' SVG backend (no fonts or system libraries needed).
//!
//! Horizontal bars, so long pattern names fit as axis labels: the top panel
//! is ops/s, then read latency and write latency, each p50 / p99 / p99.9 on
//! a logarithmic axis (a database round trip and a near-cache hit differ by
//! orders of magnitude). Reads and writes are drawn apart because they cost
//! different things: one latency over both would hide either.

use super::report::{Latency, PatternReport};
use anyhow::{anyhow, Context as _, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use std::path::Path;

/// Colours of p50, p99 and p99.9.
const SHADES: [RGBColor; 3] = [
    RGBColor(120, 170, 220),
    RGBColor(50, 110, 180),
    RGBColor(15, 50, 110),
];

/// Draws the chart of `reports` into `path`.
pub(crate) fn write_svg(path: &Path, title: &str, reports: &[PatternReport]) -> Result<()> {
    let rows = reports.len();
    let height = 200 + 60 * rows as u32 * 3;
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
    let height = root.dim_in_pixel().1;
    let (top, rest) = root.split_vertically(height * 2 / 7);
    let (reads, writes) = rest.split_vertically(height * 5 / 14);
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
    latency_panel(&reads, "reads", reports, &names, |r| &r.read_latency_ms)?;
    latency_panel(&writes, "writes", reports, &names, |r| &r.write_latency_ms)?;
    Ok(())
}

/// Three bars per pattern (p50, p99, p99.9) of one kind of operation, on a
/// log scale.
fn latency_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    what: &str,
    reports: &[PatternReport],
    names: &[&str],
    latency: impl Fn(&PatternReport) -> &Latency,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let n = reports.len() as u32;
    let floor = 0.001;
    let max_ms = reports.iter().map(|r| latency(r).p999).fold(1.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{what}: latency (ms, log scale): p50 light, p99 medium, p99.9 dark"),
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
        .y_label_formatter(&|v| label(v, 3, names))
        .draw()?;
    chart.draw_series(reports.iter().enumerate().flat_map(|(i, r)| {
        let l = latency(r);
        [l.p50, l.p99, l.p999]
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
