//! PNG line charts (plotters): one line per series with a shaded min–max band across seeds.

use crate::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

pub struct Series {
    pub name: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// Band (e.g. min and max over seeds); same length as `y`, or empty for none.
    pub lo: Vec<f64>,
    pub hi: Vec<f64>,
}

/// A fixed colour per series name, so every chart of the report reads the same.
pub fn color(name: &str) -> RGBColor {
    match name {
        "featjnd" | "jnd" => RGBColor(214, 39, 40),
        "gaussian" | "uniform-step" => RGBColor(31, 119, 180),
        "uniform" | "permuted" => RGBColor(44, 160, 44),
        "magnitude" | "absmax" => RGBColor(148, 103, 189),
        "tau" | "log J" => RGBColor(0, 0, 0),
        "hinge" | "lambda" => RGBColor(214, 39, 40),
        _ => RGBColor(100, 100, 100),
    }
}

/// Where a sans-serif TrueType font is looked for (`$FEATJND_FONT` first). Debian's
/// `fonts-dejavu-core`, which `scripts/setup.sh` installs, provides the first one.
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers the font every chart uses as "sans-serif" (once per process). Text is drawn with
/// ab_glyph, in Rust: no fontconfig or freetype, so the binary links no system library that
/// could drag a foreign libtorch onto the link line.
pub fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let env = std::env::var("FEATJND_FONT").ok();
        let candidates = env.iter().map(String::as_str).chain(FONT_PATHS);
        for p in candidates {
            if let Ok(bytes) = std::fs::read(p) {
                // Leaked once: plotters keeps registered fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                    .map_err(|_| format!("{p} is not a usable TrueType font"));
            }
        }
        Err(format!(
            "no TrueType font found for the plots: set FEATJND_FONT to a .ttf file, or install fonts-dejavu-core (looked in {})",
            FONT_PATHS.join(", ")
        ))
    })
    .clone()
    .map_err(|why| Error::Io(format!("plot: {why}")))
}

fn perr<E: std::fmt::Display>(e: E) -> Error {
    Error::Io(format!("plot: {e}"))
}

/// Draws `series` into a 760×480 PNG at `path`.
pub fn line_chart(path: &Path, title: &str, xlabel: &str, ylabel: &str, series: &[Series]) -> Result<()> {
    let all_x = series.iter().flat_map(|s| s.x.iter().copied());
    let (x0, x1) = all_x.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let all_y = series.iter().flat_map(|s| s.y.iter().chain(&s.lo).chain(&s.hi).copied()).filter(|v| v.is_finite());
    let (y0, y1) = all_y.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !(x0.is_finite() && y0.is_finite()) {
        return Err(Error::Arg(format!("plot {title}: no finite data")));
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    register_font()?;
    let root = BitMapBackend::new(path, (760, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(perr)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1.max(x0 + 1e-9), (y0 - pad)..(y1 + pad))
        .map_err(perr)?;
    chart.configure_mesh().x_desc(xlabel).y_desc(ylabel).draw().map_err(perr)?;
    for s in series {
        let c = color(&s.name);
        if s.lo.len() == s.y.len() && !s.lo.is_empty() {
            let mut poly: Vec<(f64, f64)> = s.x.iter().zip(&s.hi).map(|(&a, &b)| (a, b)).collect();
            poly.extend(s.x.iter().zip(&s.lo).rev().map(|(&a, &b)| (a, b)));
            chart.draw_series(std::iter::once(Polygon::new(poly, c.mix(0.18).filled()))).map_err(perr)?;
        }
        chart
            .draw_series(LineSeries::new(s.x.iter().zip(&s.y).map(|(&a, &b)| (a, b)), c.stroke_width(2)))
            .map_err(perr)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(s.x.iter().zip(&s.y).map(|(&a, &b)| Circle::new((a, b), 3, c.filled()))).map_err(perr)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(perr)?;
    root.present().map_err(perr)?;
    Ok(())
}
