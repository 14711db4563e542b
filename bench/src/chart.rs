//! Charts of a run: one SVG per suite under `bench/charts/`, drawn from the
//! figures every suite records while it runs (`record`, and `figure` in
//! `bench/run`), so a chart always shows the same numbers as the run's
//! section of `bench/RESULTS.md`.
//!
//! The figures file has one tab-separated line per bar: suite, workload,
//! system, metric, value. A chart has a panel per metric (throughput,
//! latency, memory, …) with a horizontal bar per workload and system, each
//! system in its own colour, Sluice always first, so a reader compares
//! Sluice with its anchor bar against bar.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Appends one figure to the file named by `SLUICE_BENCH_FIGURES`, if set
/// (`bench/run` sets it; a suite run by hand just prints its rows).
pub fn record(suite: &str, workload: &str, system: &str, metric: &str, value: f64) {
    let Ok(path) = std::env::var("SLUICE_BENCH_FIGURES") else {
        return;
    };
    let line = format!("{suite}\t{workload}\t{system}\t{metric}\t{value}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("sluice-bench: cannot record a figure in {path}: {e}");
    }
}

struct Bar {
    workload: String,
    system: String,
    value: f64,
}

/// suite → metric → bars, in the order the run recorded them.
type Figures = BTreeMap<String, Vec<(String, Vec<Bar>)>>;

fn parse(text: &str) -> Result<Figures, String> {
    let mut figures = Figures::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let fields: Vec<&str> = line.split('\t').collect();
        let [suite, workload, system, metric, value] = fields[..] else {
            return Err(format!("line {}: expected 5 tab-separated fields", n + 1));
        };
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| format!("line {}: {value:?} is not a number", n + 1))?;
        let metrics = figures.entry(suite.to_string()).or_default();
        let bars = match metrics.iter_mut().find(|(m, _)| m == metric) {
            Some((_, bars)) => bars,
            None => {
                metrics.push((metric.to_string(), Vec::new()));
                &mut metrics.last_mut().expect("just pushed").1
            }
        };
        bars.push(Bar {
            workload: workload.to_string(),
            system: system.to_string(),
            value,
        });
    }
    Ok(figures)
}

const SLUICE: RGBColor = RGBColor(214, 96, 38);
const ANCHORS: [RGBColor; 5] = [
    RGBColor(49, 110, 172),
    RGBColor(102, 166, 92),
    RGBColor(142, 108, 178),
    RGBColor(120, 120, 120),
    RGBColor(196, 160, 40),
];

fn colour(system: &str, anchors: &[String]) -> RGBColor {
    if system.starts_with("Sluice") {
        return SLUICE;
    }
    let i = anchors.iter().position(|a| a == system).unwrap_or(0);
    ANCHORS[i % ANCHORS.len()]
}

fn label(value: f64) -> String {
    match value.abs() {
        0.0 => "0".to_string(),
        v if v >= 100.0 => format!("{value:.0}"),
        v if v >= 10.0 => format!("{value:.1}"),
        _ => format!("{value:.2}"),
    }
}

/// Draws `bench/charts/<suite>.svg` for every suite in the figures file.
pub fn draw(figures: &Path, out: &Path, title: &str) -> Result<Vec<String>, String> {
    let text =
        std::fs::read_to_string(figures).map_err(|e| format!("read {}: {e}", figures.display()))?;
    std::fs::create_dir_all(out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let mut written = Vec::new();
    for (suite, metrics) in parse(&text)? {
        let path = out.join(format!("{suite}.svg"));
        draw_suite(&path, &suite, title, metrics).map_err(|e| format!("{suite}: {e}"))?;
        written.push(path.display().to_string());
    }
    Ok(written)
}

fn draw_suite(
    path: &Path,
    suite: &str,
    title: &str,
    metrics: Vec<(String, Vec<Bar>)>,
) -> Result<(), Box<dyn std::error::Error>> {
    const BAR_HEIGHT: u32 = 26;
    const PANEL_EXTRA: u32 = 80;
    let mut anchors: Vec<String> = Vec::new();
    for (_, bars) in &metrics {
        for bar in bars {
            if !bar.system.starts_with("Sluice") && !anchors.contains(&bar.system) {
                anchors.push(bar.system.clone());
            }
        }
    }
    let heights: Vec<u32> = metrics
        .iter()
        .map(|(_, bars)| bars.len() as u32 * BAR_HEIGHT + PANEL_EXTRA)
        .collect();
    let height = heights.iter().sum::<u32>() + 50;
    let canvas = SVGBackend::new(path, (960, height)).into_drawing_area();
    canvas.fill(&WHITE)?;
    let mut rest = canvas.titled(&format!("{suite} · {title}"), ("sans-serif", 22))?;
    let name_style = TextStyle::from(("sans-serif", 13))
        .color(&BLACK)
        .pos(Pos::new(HPos::Right, VPos::Center));
    let value_style = TextStyle::from(("sans-serif", 13))
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for ((metric, mut bars), panel_height) in metrics.into_iter().zip(heights) {
        // Workload by workload, Sluice's bar before its anchors'.
        let workloads: Vec<String> = bars.iter().fold(Vec::new(), |mut seen, b| {
            if !seen.contains(&b.workload) {
                seen.push(b.workload.clone());
            }
            seen
        });
        bars.sort_by_key(|b| {
            let w = workloads.iter().position(|w| *w == b.workload);
            (w, !b.system.starts_with("Sluice"))
        });
        let (panel, below) = rest.split_vertically(panel_height);
        rest = below;
        let max = bars.iter().map(|b| b.value).fold(0.0, f64::max).max(1e-9);
        let n = bars.len() as f64;
        // Bar i spans [n-1-i, n-i) on the y axis, so the first is on top.
        let top = |i: usize| n - i as f64;
        let mut chart = ChartBuilder::on(&panel)
            .caption(&metric, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(330)
            .build_cartesian_2d(0.0..max * 1.18, 0.0..n)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .max_light_lines(1)
            .x_labels(6)
            .y_labels(0)
            .x_label_formatter(&|v| label(*v))
            .label_style(("sans-serif", 12))
            .draw()?;
        chart.draw_series(bars.iter().enumerate().map(|(i, bar)| {
            Rectangle::new(
                [(0.0, top(i) - 0.15), (bar.value, top(i) - 0.85)],
                colour(&bar.system, &anchors).filled(),
            )
        }))?;
        chart.draw_series(bars.iter().enumerate().map(|(i, bar)| {
            Text::new(
                format!(" {}", label(bar.value)),
                (bar.value, top(i) - 0.5),
                value_style.clone(),
            )
        }))?;
        // Names left of the axis, placed in canvas pixels (a y axis of
        // numbers cannot carry one label per bar).
        let plot = chart.plotting_area();
        for (i, bar) in bars.iter().enumerate() {
            let (x, y) = plot.map_coordinate(&(0.0, top(i) - 0.5));
            canvas.draw(&Text::new(
                format!("{} · {}", bar.workload, bar.system),
                (x - 8, y),
                name_style.clone(),
            ))?;
        }
    }
    // Written here rather than on drop, where a failed write would go unseen.
    rest.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_group_by_suite_then_metric_in_recorded_order() {
        let figures = parse(
            "copy\t1M rows\tSluice\trows/s\t218000\n\
             point-select\t1 clients\tSluice\ttps\t2000\n\
             point-select\t1 clients\tPostgreSQL\ttps\t16000\n\
             point-select\t1 clients\tSluice\tp99 ms\t0.5\n",
        )
        .unwrap();
        let metrics = &figures["point-select"];
        assert_eq!(metrics.len(), 2);
        assert_eq!(metrics[0].0, "tps");
        assert_eq!(metrics[0].1[1].system, "PostgreSQL");
        assert_eq!(metrics[1].1[0].value, 0.5);
        assert!(parse("copy\t1M rows\tSluice\trows/s").is_err());
        assert!(parse("copy\t1M rows\tSluice\trows/s\tfast").is_err());
    }

    #[test]
    fn draws_one_svg_per_suite() {
        let dir = tempfile::TempDir::new().unwrap();
        let figures = dir.path().join("figures.tsv");
        std::fs::write(
            &figures,
            "tpcb\t8 clients\tSluice\ttps\t401\ntpcb\t8 clients\tPostgreSQL\ttps\t2941\n\
             copy\t1M rows\tSluice\trows/s\t218000\n",
        )
        .unwrap();
        let written = draw(&figures, &dir.path().join("charts"), "test").unwrap();
        assert_eq!(written.len(), 2);
        let svg = std::fs::read_to_string(&written[1]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("8 clients · PostgreSQL"));
        assert!(svg.contains("2941"));
    }
}
