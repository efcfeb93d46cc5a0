//! The loss-vs-FLOPs figure (the paper's training-loss plot): training loss (thin) and validation
//! loss (thick, with markers) against cumulative training FLOPs on a log axis, one colour per
//! stage, from-scratch baselines dashed. A stage trained several times (learning-rate sweep,
//! seeds) is drawn as its chosen run; its other runs' validation curves are faint.
//!
//! Text is rendered with plotters' `ab_glyph` backend and DejaVu Sans from the `dejavu` crate
//! (registered once per process) rather than with system fonts: the figure then renders the same
//! on a fresh machine or a container without fontconfig or any font installed.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::manifest::{write_atomic, StageKind, StageRecord};
use crate::report::stands_for_stage;

/// Font family the figure asks for: registered from the embedded DejaVu Sans for the PNG, and the
/// generic family SVG viewers resolve to their own sans-serif font.
pub(crate) const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1200, 750);
/// Legend entry of the validation curves of the runs that do not stand for their stage (the other
/// points of a learning-rate sweep, the other seeds).
pub const FAINT_LABEL: &str = "faint: other learning rates and seeds";
/// Training loss is averaged into at most this many points per stage.
const MAX_TRAIN_POINTS: usize = 300;

/// Colour-blind-friendly palette (Okabe-Ito), then a few extra distinct colours.
const PALETTE: &[RGBColor] = &[
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
    RGBColor(0, 0, 0),
    RGBColor(140, 86, 75),
    RGBColor(148, 103, 189),
];

/// Colour of the `i`-th stage of the figure.
pub fn stage_colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // The bytes are a valid TrueType font shipped by the dejavu crate: failure is a bug.
            plotters::style::register_font(FONT, style, dejavu::sans::regular())
                .unwrap_or_else(|_| panic!("embedded DejaVu Sans font rejected"));
        }
    });
}

/// Renders the figure to both files (PNG and SVG), each written atomically.
pub fn write_figures(records: &[StageRecord], title: &str, png: &Path, svg: &Path) -> Result<()> {
    register_font();
    let mut svg_text = String::new();
    {
        let root = SVGBackend::with_string(&mut svg_text, SIZE).into_drawing_area();
        draw(&root, records, title)?;
        root.present().map_err(|e| anyhow!("rendering the SVG figure: {e}"))?;
    }
    write_atomic(svg, svg_text.as_bytes())?;

    // plotters encodes the PNG itself (through `image`, which picks the format from the file
    // extension): draw into escale's temporary name plus `.png` beside the target, then commit it.
    let mut tmp = escale_util::publish::temp_path(png, "tmp")?.into_os_string();
    tmp.push(".png");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let root = BitMapBackend::new(&tmp, SIZE).into_drawing_area();
        draw(&root, records, title)?;
        root.present().map_err(|e| anyhow!("rendering {}: {e}", tmp.display()))?;
    }
    escale_util::publish::commit_file(&tmp, png).with_context(|| format!("writing {}", png.display()))?;
    Ok(())
}

/// Renders another figure (`accuracy.rs`) with the same font to both files, each atomically:
/// `draw_svg` and `draw_png` are the same drawing for the two backends.
pub(crate) fn write_with(
    png: &Path,
    svg: &Path,
    draw_svg: &dyn Fn(&DrawingArea<SVGBackend, Shift>) -> Result<()>,
    draw_png: &dyn Fn(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<()> {
    register_font();
    let mut svg_text = String::new();
    {
        let root = SVGBackend::with_string(&mut svg_text, SIZE).into_drawing_area();
        draw_svg(&root)?;
        root.present().map_err(|e| anyhow!("rendering the SVG figure: {e}"))?;
    }
    write_atomic(svg, svg_text.as_bytes())?;
    let mut tmp = escale_util::publish::temp_path(png, "tmp")?.into_os_string();
    tmp.push(".png");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let root = BitMapBackend::new(&tmp, SIZE).into_drawing_area();
        draw_png(&root)?;
        root.present().map_err(|e| anyhow!("rendering {}: {e}", tmp.display()))?;
    }
    escale_util::publish::commit_file(&tmp, png).with_context(|| format!("writing {}", png.display()))?;
    Ok(())
}

/// Axis ranges covering every point (FLOPs on a log axis: values at 0 are drawn at the left edge).
fn ranges(records: &[StageRecord]) -> ((f64, f64), (f64, f64)) {
    let pts = records.iter().flat_map(|r| r.curve.train.iter().chain(r.curve.valid.iter()));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, 0.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for p in pts {
        if p.flops > 0.0 {
            x0 = x0.min(p.flops);
        }
        x1 = x1.max(p.flops);
        if p.loss.is_finite() {
            y0 = y0.min(p.loss);
            y1 = y1.max(p.loss);
        }
    }
    if !x0.is_finite() || x1 <= 0.0 {
        (x0, x1) = (1.0, 10.0);
    }
    if x1 <= x0 {
        x1 = x0 * 10.0;
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    ((x0 / 1.2, x1 * 1.2), (y0 - pad, y1 + pad))
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, records: &[StageRecord], title: &str) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the figure: {e}");
    root.fill(&WHITE).map_err(err)?;
    let ((x0, x1), (y0, y1)) = ranges(records);
    let mut chart = ChartBuilder::on(root)
        .caption(format!("{title}: loss vs training compute"), (FONT, 26))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("cumulative training FLOPs")
        .y_desc("loss (nats/token)")
        .x_label_formatter(&|x| format!("{x:.0e}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(err)?;
    // The stages' own curves are drawn over the faint ones of their other runs.
    let stages: Vec<&StageRecord> = records.iter().filter(|r| stands_for_stage(r)).collect();
    let mut faint_labelled = false;
    for r in records.iter().filter(|r| !stands_for_stage(r)) {
        let Some(i) = stages.iter().position(|st| r.run_of.as_ref().is_some_and(|o| o.stage == st.name)) else { continue };
        if stages[i].model_dir == r.model_dir {
            continue; // the chosen run: drawn as the stage itself
        }
        let faint = stage_colour(i).mix(0.3).stroke_width(1);
        let valid: Vec<(f64, f64)> = r.curve.valid.iter().map(|p| (p.flops.max(x0), p.loss)).collect();
        let series = if r.kind == StageKind::Baseline {
            chart.draw_series(DashedLineSeries::new(valid, 8, 5, faint)).map_err(err)?
        } else {
            chart.draw_series(LineSeries::new(valid, faint)).map_err(err)?
        };
        if !faint_labelled {
            faint_labelled = true;
            series.label(FAINT_LABEL).legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], BLACK.mix(0.3).stroke_width(1)));
        }
    }
    for (i, r) in stages.iter().enumerate() {
        let colour = stage_colour(i);
        let dashed = r.kind == StageKind::Baseline;
        let clamp = |f: f64| f.max(x0);
        let train: Vec<(f64, f64)> = r.curve.smoothed_train(MAX_TRAIN_POINTS).iter().map(|p| (clamp(p.flops), p.loss)).collect();
        let valid: Vec<(f64, f64)> = r.curve.valid.iter().map(|p| (clamp(p.flops), p.loss)).collect();
        let thin = colour.mix(0.45).stroke_width(1);
        let thick = colour.stroke_width(3);
        if dashed {
            chart.draw_series(DashedLineSeries::new(train, 6, 4, thin)).map_err(err)?;
            chart.draw_series(DashedLineSeries::new(valid.clone(), 10, 6, thick)).map_err(err)?;
        } else {
            chart.draw_series(LineSeries::new(train, thin)).map_err(err)?;
            chart.draw_series(LineSeries::new(valid.clone(), thick)).map_err(err)?;
        }
        let label = if dashed { format!("{} (from scratch, dashed)", r.name) } else { r.name.clone() };
        chart
            .draw_series(valid.iter().map(|&(x, y)| Circle::new((x, y), 4, colour.filled())))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 16))
        .draw()
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::synthetic_run;

    #[test]
    fn figures_are_valid_png_and_svg_with_one_series_per_stage() {
        let dir = tempfile::tempdir().unwrap();
        let (png, svg) = (dir.path().join("f.png"), dir.path().join("f.svg"));
        let records = synthetic_run();
        write_figures(&records, "synthetic", &png, &svg).unwrap();

        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), SIZE.0);
        assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), SIZE.1);

        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..40]);
        for (i, r) in records.iter().enumerate() {
            let c = stage_colour(i);
            let hex = format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
            assert!(text.contains(&hex), "stage {} colour {hex} missing", r.name);
            let label = if r.kind == StageKind::Baseline { format!("{} (from scratch, dashed)", r.name) } else { r.name.clone() };
            assert_eq!(text.matches(&format!(">\n{label}\n</text>")).count(), 1, "one legend entry for {}", r.name);
        }
        assert!(text.contains("cumulative training FLOPs"));
    }

    #[test]
    fn a_swept_stage_is_one_legend_entry_and_its_other_runs_are_faint() {
        let dir = tempfile::tempdir().unwrap();
        let (png, svg) = (dir.path().join("f.png"), dir.path().join("f.svg"));
        let records = crate::report::tests::synthetic_sweep();
        write_figures(&records, "swept", &png, &svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        for label in ["base", "up", "up-aki", "up-scratch (from scratch, dashed)", FAINT_LABEL] {
            assert_eq!(text.matches(&format!(">\n{label}\n</text>")).count(), 1, "one legend entry for {label}");
        }
        assert!(!text.contains("up-scratch-lr"), "runs are not named in the legend");
        // Five faint runs (the chosen one is the stage's own curve), in the baseline's colour at 30%.
        let c = stage_colour(3);
        let faint = format!("opacity=\"0.3\" stroke=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
        assert!(text.matches(&faint).count() >= 5, "faint runs drawn in {faint}");
    }

    #[test]
    fn log_axis_range_ignores_zero_flops() {
        let records = synthetic_run();
        let ((x0, x1), (y0, y1)) = ranges(&records);
        assert!(x0 > 0.0 && x0 < 1e12 && x1 > 3e12);
        assert!(y0 < 2.9 && y1 > 7.0);
    }
}
