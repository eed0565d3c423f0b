//! The training curves as an SVG (what d2l's animator draws): train loss, train accuracy
//! and test accuracy per epoch on one chart. Written without fonts or Graphviz, and
//! atomically.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::train::Epoch;

/// A curve: its legend, its colour and the number it plots per epoch.
type Curve = (&'static str, RGBColor, fn(&Epoch) -> f64);

/// Draws the curves of `epochs` and writes them to `path`.
pub fn write(path: &Path, title: &str, epochs: &[Epoch]) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 400)).into_drawing_area();
        root.fill(&WHITE)?;
        let last = epochs.len().max(1) as f64;
        let top = epochs.iter().map(|e| e.train_loss).fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(1.0..last.max(2.0), 0.0..top)?;
        chart.configure_mesh().x_desc("epoch").draw()?;
        let series: [Curve; 3] = [
            ("train loss", BLUE, |e| e.train_loss),
            ("train acc", MAGENTA, |e| e.train_acc),
            ("test acc", GREEN, |e| e.test_acc),
        ];
        for (label, color, f) in series {
            let points: Vec<(f64, f64)> =
                epochs.iter().map(|e| (f64::from(e.epoch), f(e))).collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    bnc::write_atomically(path, svg.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))
}
