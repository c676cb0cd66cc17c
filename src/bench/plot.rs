//! `xos-vmm bench --plot FILE.svg`: the measured latencies as one chart,
//! a bar per benchmark at its median with a whisker from p10 to p90, on a
//! logarithmic axis (the calls span 1 µs to milliseconds).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::Record;

/// Writes the latency records of `records` (throughput ones are left out)
/// as an SVG chart to `path`.
pub fn write_svg(records: &[Record], path: &Path, title: &str) -> anyhow::Result<()> {
    let rows: Vec<&Record> = records.iter().filter(|r| r.median_ns > 0).collect();
    anyhow::ensure!(!rows.is_empty(), "no latency records to plot");
    let us = |ns: u64| ns as f64 / 1000.0;
    let lo = rows
        .iter()
        .map(|r| us(r.p10_ns.max(1)))
        .fold(f64::MAX, f64::min)
        / 2.0;
    let hi = rows.iter().map(|r| us(r.p90_ns)).fold(0.0, f64::max) * 2.0;
    let height = 120 + 26 * rows.len() as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let n = rows.len() as f64;
    let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(300)
        .build_cartesian_2d((lo..hi).log_scale(), -0.5..n - 0.5)
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .x_desc("µs per call (median; whisker p10-p90; log scale)")
        .y_labels(rows.len())
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() < 0.01 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .disable_y_mesh()
        .draw()
        .map_err(|e| draw(&e))?;
    let color = |name: &str| {
        if name.starts_with("channel.") {
            RGBColor(90, 150, 90)
        } else if name.starts_with("xic.") {
            RGBColor(70, 110, 180)
        } else if name.starts_with("create.") {
            RGBColor(190, 120, 60)
        } else {
            RGBColor(130, 130, 130)
        }
    };
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            let y = i as f64;
            Rectangle::new(
                [(lo, y - 0.35), (us(r.median_ns), y + 0.35)],
                color(&r.name).filled(),
            )
        }))
        .map_err(|e| draw(&e))?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            let y = i as f64;
            PathElement::new(
                vec![(us(r.p10_ns.max(1)), y), (us(r.p90_ns), y)],
                BLACK.stroke_width(2),
            )
        }))
        .map_err(|e| draw(&e))?;
    root.present()
        .map_err(|e| draw(&e))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
