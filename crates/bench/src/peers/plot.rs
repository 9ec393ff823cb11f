//! One PNG per workload: restore time (to a queryable database) versus data size, both
//! axes logarithmic, one line per method, from the medians in the results store.
//!
//! Text is drawn with DejaVu Sans read from the Debian package `fonts-dejavu-core`
//! (`scripts/bench.sh` installs it), so the plot needs no system font library.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use plotters::prelude::*;

use super::record::{Group, Store};
use super::report::title;

/// Where Debian keeps the font the plots use.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The file name of `workload`'s plot.
pub fn file_name(workload: &str) -> String {
    format!("peers-{workload}-restore.png")
}

/// One series: a method's median restore time at each size it was measured at, as
/// (GiB, seconds), smallest size first.
type Series = (String, Vec<(f64, f64)>);

/// The series of `workload` in `store` (methods in the order they first appear).
pub fn series(store: &Store, workload: &str) -> Vec<Series> {
    let mut groups: Vec<&Group> = store
        .groups
        .iter()
        // A size measured after fragmenting the files (`scale 1000, fragmented`) is a
        // condition, not a size: it has its own table, not a point on the curve.
        .filter(|g| g.workload == workload && !g.size.contains("fragmented"))
        .collect();
    groups.sort_by_key(|g| g.data_bytes);
    let mut out: Vec<Series> = Vec::new();
    for g in groups {
        let gib = g.data_bytes as f64 / (1u64 << 30) as f64;
        for method in g.methods() {
            let mut restores: Vec<f64> = g
                .done(method)
                .into_iter()
                .map(|(_, f)| f.restore_s)
                .collect();
            if restores.is_empty() {
                continue;
            }
            restores.sort_by(f64::total_cmp);
            let n = restores.len();
            let median = if n % 2 == 1 {
                restores[n / 2]
            } else {
                (restores[n / 2 - 1] + restores[n / 2]) / 2.0
            };
            match out.iter_mut().find(|(m, _)| m == method) {
                Some((_, points)) => points.push((gib, median)),
                None => out.push((method.to_string(), vec![(gib, median)])),
            }
        }
    }
    out
}

/// Draws the plot of every workload in `store` into `dir`; returns the files written.
pub fn draw_all(store: &Store, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (workload, _) in super::report::WORKLOADS {
        let series = series(store, workload);
        if series.is_empty() {
            continue;
        }
        let path = dir.join(file_name(workload));
        draw(&path, title(workload), &series)
            .with_context(|| format!("drawing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Makes DejaVu Sans the `sans-serif` font (once per process).
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT).map_err(|e| {
                format!("cannot read the plot font {FONT}: {e} (apt-get install fonts-dejavu-core)")
            })?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{FONT} is not a font file plotters can read"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The powers of ten just below `min` and just above `max` (a log axis needs a positive
/// range; values are clamped to 0.001).
fn decades(min: f64, max: f64) -> (f64, f64) {
    let lo = 10f64.powf(min.max(1e-3).log10().floor());
    let hi = 10f64.powf(max.max(1e-3).log10().ceil());
    (lo, if hi > lo { hi } else { lo * 10.0 })
}

/// Draws one workload's plot to `path`.
fn draw(path: &Path, heading: &str, series: &[Series]) -> anyhow::Result<()> {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    // Whole decades around the points, so that each axis has labelled powers of ten.
    let (x_lo, x_hi) = decades(x_min, x_max);
    let (y_lo, y_hi) = decades(y_min, y_max);

    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{heading}: restore time to a queryable database"),
            ("sans-serif", 22),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("data size (GiB, log scale)")
        .y_desc("restore time (s, log scale)")
        .x_label_formatter(&|v| {
            format!("{v:.3}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        })
        .y_label_formatter(&|v| {
            format!("{v:.3}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        })
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (method, points)) in series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(method.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::record::{Figures, Outcome, Sample};
    use super::*;

    fn group(gib: u64, restores: &[(&str, f64)]) -> Group {
        Group {
            workload: "sqlite".into(),
            size: format!("{gib} GiB"),
            data_bytes: gib << 30,
            reference: "ours".into(),
            environment: String::new(),
            load: String::new(),
            notes: vec![],
            samples: restores
                .iter()
                .map(|(method, restore_s)| Sample {
                    method: method.to_string(),
                    run: 1,
                    outcome: Outcome::Done(Figures {
                        copy_s: 1.0,
                        stall_s: 0.0,
                        baseline_stall_s: 0.0,
                        ops_during: 1.0,
                        ops_baseline: 1.0,
                        restore_s: *restore_s,
                        copy_bytes: 0,
                        detail: String::new(),
                    }),
                })
                .collect(),
        }
    }

    #[test]
    fn axes_span_whole_decades() {
        assert_eq!(decades(1.5, 1.5), (1.0, 10.0));
        assert_eq!(decades(0.03, 18.6), (0.01, 100.0));
        assert_eq!(decades(10.0, 10.0), (10.0, 100.0));
    }

    #[test]
    fn series_follow_sizes_and_a_png_is_drawn() {
        let store = Store {
            groups: vec![
                group(8, &[("ours", 4.0), ("peer", 80.0)]),
                group(1, &[("ours", 0.5), ("peer", 10.0)]),
            ],
        };
        let s = series(&store, "sqlite");
        assert_eq!(s[0], ("ours".to_string(), vec![(1.0, 0.5), (8.0, 4.0)]));
        assert_eq!(s[1].1, vec![(1.0, 10.0), (8.0, 80.0)]);
        assert!(series(&store, "postgres").is_empty());

        if !Path::new(FONT).exists() {
            eprintln!("skipping the PNG: {FONT} is missing (apt-get install fonts-dejavu-core)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let written = draw_all(&store, dir.path()).unwrap();
        assert_eq!(written, [dir.path().join("peers-sqlite-restore.png")]);
        let png = std::fs::read(&written[0]).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        assert!(
            png.len() > 5_000,
            "a suspiciously small plot: {} bytes",
            png.len()
        );
    }
}
