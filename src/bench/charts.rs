//! The report's key comparisons as SVG charts (plotters, SVG backend only),
//! drawn from the same JSON files as its tables and written next to
//! report.md, which links them. A chart whose data is missing is not drawn
//! (its section already says "not run").

use plotters::prelude::*;
use serde_json::Value;

/// A chart ready to be written: its file name (next to report.md), what
/// it shows (the link's text) and the SVG.
pub struct Chart {
    pub file: &'static str,
    pub title: String,
    pub svg: String,
}

const SIZE: (u32, u32) = (720, 400);
const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

fn failed(e: impl std::fmt::Display) -> String {
    format!("drawing a chart: {e}")
}

/// One bar per `(label, value)`.
pub fn bars(file: &'static str, title: &str, y_desc: &str, items: &[(String, f64)]) -> Result<Chart, String> {
    let top = items.iter().map(|(_, v)| *v).fold(0.0, f64::max) * 1.15;
    let top = if top > 0.0 { top } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            // A segmented 0..n has n + 1 segments: one per item is 0..n-1.
            .build_cartesian_2d((0..items.len().saturating_sub(1)).into_segmented(), 0.0..top)
            .map_err(failed)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(y_desc)
            .x_labels(items.len())
            .x_label_formatter(&|seg| match seg {
                SegmentValue::CenterOf(i) => items.get(*i).map(|(l, _)| l.clone()).unwrap_or_default(),
                _ => String::new(),
            })
            .draw()
            .map_err(failed)?;
        chart
            .draw_series(items.iter().enumerate().map(|(i, (_, v))| {
                let color = COLORS[i % COLORS.len()];
                let mut bar = Rectangle::new(
                    [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), *v)],
                    color.filled(),
                );
                bar.set_margin(0, 0, 18, 18);
                bar
            }))
            .map_err(failed)?;
        chart
            .draw_series(
                items.iter().enumerate().map(|(i, (_, v))| {
                    Text::new(format!("{v:.1}"), (SegmentValue::CenterOf(i), *v), ("sans-serif", 14))
                }),
            )
            .map_err(failed)?;
        root.present().map_err(failed)?;
    }
    Ok(Chart {
        file,
        title: title.to_string(),
        svg,
    })
}

/// One line per named series of `(x, y)` points; `log_x` for sizes that
/// grow tenfold.
pub fn lines(
    file: &'static str,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
) -> Result<Chart, String> {
    let points = || series.iter().flat_map(|(_, p)| p.iter().copied());
    let x_min = points().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = points().map(|p| p.0).fold(0.0, f64::max);
    let y_max = points().map(|p| p.1).fold(0.0, f64::max) * 1.15;
    if !x_min.is_finite() || x_max <= 0.0 {
        return Err("drawing a chart: no points".into());
    }
    let y_max = if y_max > 0.0 { y_max } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64);
        let x_lo = if log_x { x_min * 0.8 } else { 0.0 };
        let x_hi = if log_x { x_max * 1.25 } else { x_max * 1.05 };
        // The two axis kinds are different types: one generic drawing
        // step for both.
        if log_x {
            let mut chart = builder
                .build_cartesian_2d((x_lo..x_hi).log_scale(), 0.0..y_max)
                .map_err(failed)?;
            draw_axes_and_lines(&mut chart, (x_desc, y_desc), series)?;
        } else {
            let mut chart = builder.build_cartesian_2d(x_lo..x_hi, 0.0..y_max).map_err(failed)?;
            draw_axes_and_lines(&mut chart, (x_desc, y_desc), series)?;
        }
        root.present().map_err(failed)?;
    }
    Ok(Chart {
        file,
        title: title.to_string(),
        svg,
    })
}

fn draw_axes_and_lines<'a, X>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
    (x_desc, y_desc): (&str, &str),
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), String>
where
    X: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(failed)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(failed)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(failed)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(failed)?;
    Ok(())
}

/// Supervision: the supervisors' memory with 100 sleepers (tree PSS).
pub fn supervision(doc: &Value) -> Option<Chart> {
    let items: Vec<(String, f64)> = doc["systems"]
        .as_array()?
        .iter()
        .filter(|s| s.get("skipped").is_none())
        .filter_map(|s| {
            let kib = s.pointer("/memory_kib/with_100_sleepers/pss_kib")?.as_f64()?;
            Some((s["system"].as_str()?.to_string(), kib / 1024.0))
        })
        .collect();
    (!items.is_empty())
        .then(|| {
            bars(
                "supervision-memory.svg",
                "Supervisor memory with 100 sleepers (tree PSS)",
                "MiB",
                &items,
            )
            .ok()
        })
        .flatten()
}

/// Proxy memory by mode: one Envoy per group vs the robot-wide one.
pub fn proxy_modes(proxy: &Value) -> Option<Chart> {
    let rows = proxy["proxy_modes_memory"].as_array()?;
    let line = |mode: &str, kind: &str| {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| Some((r["groups"].as_f64()?, r[mode][kind].as_f64()? / 1024.0)))
            .collect();
        let name = match (mode, kind) {
            ("per_group", "pss_kib") => "one Envoy per group: PSS",
            ("per_group", _) => "one Envoy per group: private anon",
            (_, "pss_kib") => "shared Envoy: PSS",
            _ => "shared Envoy: private anon",
        };
        (name.to_string(), pts)
    };
    let series: Vec<_> = [
        line("per_group", "pss_kib"),
        line("per_group", "anon_kib"),
        line("shared", "pss_kib"),
        line("shared", "anon_kib"),
    ]
    .into_iter()
    .filter(|(_, p)| !p.is_empty())
    .collect();
    if series.is_empty() {
        return None;
    }
    lines(
        "proxy-modes.svg",
        "Proxy memory by mode (idle, summed over the proxies)",
        ("TaskGroups on the robot", "MiB"),
        &series,
        false,
    )
    .ok()
}

/// Control plane: delivery p99 by fleet size, one line per store setup.
pub fn control_plane(runs: &[(u64, String, Value)]) -> Option<Chart> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (n, label, r) in runs {
        let Some(p99) = r["delivery_p99_seconds"].as_f64() else {
            continue;
        };
        let point = (*n as f64, p99 * 1e3);
        match series.iter_mut().find(|(l, _)| l == label) {
            Some((_, pts)) => pts.push(point),
            None => series.push((label.clone(), vec![point])),
        }
    }
    if series.is_empty() {
        return None;
    }
    lines(
        "control-plane.svg",
        "Job → every robot's long poll: delivery p99",
        ("robots (log scale)", "ms"),
        &series,
        true,
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn charts_are_svg_with_their_labels() {
        let sup = json!({"systems": [
            {"system": "k8s4r-agent", "memory_kib": {"with_100_sleepers": {"pss_kib": 2048.0}}},
            {"system": "s6", "memory_kib": {"with_100_sleepers": {"pss_kib": 4096.0}}},
            {"system": "supervisord", "skipped": "not installed"}]});
        let c = supervision(&sup).unwrap();
        assert!(c.svg.starts_with("<svg") && c.svg.contains("k8s4r-agent") && c.svg.contains("s6"));
        assert!(!c.svg.contains("supervisord"), "skipped systems are not drawn");
        let proxy = json!({"proxy_modes_memory": [
            {"groups": 1, "per_group": {"pss_kib": 62464, "anon_kib": 14336}, "shared": {"pss_kib": 62464, "anon_kib": 14336}},
            {"groups": 10, "per_group": {"pss_kib": 194560, "anon_kib": 144384}, "shared": {"pss_kib": 64512, "anon_kib": 16384}}]});
        let c = proxy_modes(&proxy).unwrap();
        assert!(
            c.svg.contains("shared Envoy: PSS") && c.svg.contains("<polyline"),
            "{}",
            c.svg
        );
        let runs = vec![
            (100, "sqlite".to_string(), json!({"delivery_p99_seconds": 0.05})),
            (1000, "sqlite".to_string(), json!({"delivery_p99_seconds": 0.2})),
            (
                1000,
                "etcd, 1 replica(s)".to_string(),
                json!({"delivery_p99_seconds": 0.4}),
            ),
        ];
        let c = control_plane(&runs).unwrap();
        assert!(c.svg.contains("etcd, 1 replica(s)") && c.svg.contains("sqlite"));
        assert!(proxy_modes(&json!({})).is_none() && control_plane(&[]).is_none());
    }
}
