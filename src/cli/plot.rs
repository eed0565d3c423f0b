//! Training curves as SVG, drawn as d2l's animator draws them: train loss (solid blue),
//! train accuracy (dashed magenta) and test accuracy (dotted green; d2l's is dash-dot) per
//! epoch, with axes, an epoch axis starting at 1, and a legend; each epoch's value is
//! marked, so a one-epoch run shows too. `bnc compare` puts two runs on one figure: loss
//! on the left, accuracies on the right (test solid, train dashed), one colour per run.
//! Written without fonts or Graphviz, and atomically.

use std::path::Path;

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::train::Epoch;

/// How a curve is stroked.
#[derive(Clone, Copy)]
enum Dash {
    Solid,
    Dashed,
    Dotted,
}

/// One curve: legend, colour, stroke and points.
struct Curve {
    label: String,
    color: RGBColor,
    dash: Dash,
    points: Vec<(f64, f64)>,
}

/// The lesson's colours: blue loss, magenta train accuracy, green test accuracy.
const LOSS: RGBColor = RGBColor(31, 119, 180);
const TRAIN_ACC: RGBColor = RGBColor(191, 0, 191);
const TEST_ACC: RGBColor = RGBColor(0, 128, 0);
/// The two runs of a comparison.
const RUN_COLORS: [RGBColor; 2] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];

fn points(epochs: &[Epoch], f: fn(&Epoch) -> f64) -> Vec<(f64, f64)> {
    epochs.iter().map(|e| (f64::from(e.epoch), f(e))).collect()
}

/// Draws `curves` on one chart filling `area`.
fn chart(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    y_desc: &str,
    y_range: std::ops::Range<f64>,
    curves: &[Curve],
) -> anyhow::Result<()> {
    let last = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let y_span = (y_range.start, y_range.end);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(1.0..last.max(2.0), y_range)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_labels(last.max(2.0) as usize)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    for c in curves {
        let style = c.color.stroke_width(2);
        let pts = c.points.clone();
        let anno = match c.dash {
            Dash::Solid => chart.draw_series(LineSeries::new(pts, style))?,
            Dash::Dashed => chart.draw_series(DashedLineSeries::new(pts, 8, 5, style))?,
            Dash::Dotted => chart.draw_series(DashedLineSeries::new(pts, 3, 4, style))?,
        };
        let (color, dash) = (c.color, c.dash);
        anno.label(c.label.clone()).legend(move |(x, y)| {
            let s = color.stroke_width(2);
            let seg = |(a, b): (i32, i32)| PathElement::new(vec![(a, 0), (b, 0)], s);
            let (first, second) = match dash {
                Dash::Solid => ((0, 10), (10, 20)),
                Dash::Dashed => ((0, 8), (12, 20)),
                Dash::Dotted => ((1, 4), (8, 11)),
            };
            EmptyElement::at((x, y)) + seg(first) + seg(second)
        });
        chart.draw_series(
            c.points
                .iter()
                .map(|&p| Circle::new(p, 3, c.color.filled())),
        )?;
    }
    let (w, h) = area.dim_in_pixel();
    chart
        .configure_series_labels()
        .position(legend_position(curves, last.max(2.0), y_span, (w, h)))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

/// Where the legend covers the fewest curve points, as matplotlib's `loc="best"`: each
/// candidate box (corners and edge middles, sized for the labels) is scored by the points
/// sampled along every curve that fall inside it.
fn legend_position(
    curves: &[Curve],
    last_epoch: f64,
    (y0, y1): (f64, f64),
    (w, h): (u32, u32),
) -> SeriesLabelPosition {
    use SeriesLabelPosition::*;
    let chars = curves.iter().map(|c| c.label.len()).max().unwrap_or(0) as f64;
    // Fractions of the plotting area (about the drawing area less axes and caption).
    let fw = ((40.0 + 6.5 * chars) / (f64::from(w) - 70.0).max(1.0)).min(1.0);
    let fh = ((20.0 * curves.len() as f64 + 12.0) / (f64::from(h) - 90.0).max(1.0)).min(1.0);
    let mut samples = Vec::new();
    for c in curves {
        for seg in c.points.windows(2) {
            for k in 0..=16 {
                let t = f64::from(k) / 16.0;
                samples.push((
                    seg[0].0 + t * (seg[1].0 - seg[0].0),
                    seg[0].1 + t * (seg[1].1 - seg[0].1),
                ));
            }
        }
        samples.extend(c.points.iter().copied());
    }
    let frac = |(x, y): (f64, f64)| {
        (
            (x - 1.0) / (last_epoch - 1.0).max(1e-9),
            (y - y0) / (y1 - y0).max(1e-9),
        )
    };
    let span = |at: f64, size: f64| {
        (at - size / 2.0).clamp(0.0, 1.0 - size)..(at + size / 2.0).clamp(size, 1.0)
    };
    let candidates = [
        (UpperRight, 1.0, 1.0),
        (MiddleRight, 1.0, 0.5),
        (LowerRight, 1.0, 0.0),
        (UpperLeft, 0.0, 1.0),
        (MiddleLeft, 0.0, 0.5),
        (LowerLeft, 0.0, 0.0),
        (UpperMiddle, 0.5, 1.0),
        (LowerMiddle, 0.5, 0.0),
    ];
    candidates
        .into_iter()
        .min_by_key(|&(_, cx, cy)| {
            let (xs, ys) = (span(cx, fw), span(cy, fh));
            samples
                .iter()
                .map(|&p| frac(p))
                .filter(|(x, y)| xs.contains(x) && ys.contains(y))
                .count()
        })
        .map_or(UpperRight, |c| c.0)
}

/// Renders an SVG of `size` with `draw` and writes it to `path` atomically.
fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    bnc::write_atomically(path, svg.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// The top of a chart holding values up to `max`: at least 1, so accuracies fit.
fn top(max: f64) -> f64 {
    if max.is_finite() {
        (max * 1.05).max(1.0)
    } else {
        1.0
    }
}

/// Draws the curves of one run and writes them to `path`.
pub fn write(path: &Path, title: &str, epochs: &[Epoch]) -> anyhow::Result<()> {
    let curves = [
        Curve {
            label: "train loss".into(),
            color: LOSS,
            dash: Dash::Solid,
            points: points(epochs, |e| e.train_loss),
        },
        Curve {
            label: "train acc".into(),
            color: TRAIN_ACC,
            dash: Dash::Dashed,
            points: points(epochs, |e| e.train_acc),
        },
        Curve {
            label: "test acc".into(),
            color: TEST_ACC,
            dash: Dash::Dotted,
            points: points(epochs, |e| e.test_acc),
        },
    ];
    let max = epochs.iter().map(|e| e.train_loss).fold(0.0, f64::max);
    render(path, (640, 420), |root| {
        chart(root, title, "", 0.0..top(max), &curves)
    })
}

/// Draws two runs on one figure (loss left, accuracies right) and writes it to `path`.
pub fn write_comparison(path: &Path, runs: [(&str, &[Epoch]); 2]) -> anyhow::Result<()> {
    let mut loss = Vec::new();
    let mut acc = Vec::new();
    for ((label, epochs), color) in runs.iter().zip(RUN_COLORS) {
        loss.push(Curve {
            label: format!("{label} train loss"),
            color,
            dash: Dash::Solid,
            points: points(epochs, |e| e.train_loss),
        });
        acc.push(Curve {
            label: format!("{label} train acc"),
            color,
            dash: Dash::Dashed,
            points: points(epochs, |e| e.train_acc),
        });
        acc.push(Curve {
            label: format!("{label} test acc"),
            color,
            dash: Dash::Solid,
            points: points(epochs, |e| e.test_acc),
        });
    }
    let max = runs
        .iter()
        .flat_map(|(_, e)| e.iter().map(|e| e.train_loss))
        .fold(0.0, f64::max);
    let low = runs
        .iter()
        .flat_map(|(_, e)| e.iter().flat_map(|e| [e.train_acc, e.test_acc]))
        .fold(1.0, f64::min);
    // Accuracies zoomed to the range the runs cover, in steps of 0.1.
    let floor = ((low * 10.0).floor() / 10.0).clamp(0.0, 0.9);
    render(path, (1000, 420), |root| {
        let (left, right) = root.split_horizontally(440);
        chart(&left, "train loss", "loss", 0.0..top(max), &loss)?;
        chart(&right, "accuracy", "accuracy", floor..1.0, &acc)
    })
}
