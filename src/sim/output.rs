//! Writes a run's results to a directory: CSV of every lookup, success over time, the JSON
//! report, and SVG plots (CDF of time to first peer, histogram of hops, success over time).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::{Report, SimError};

fn write(dir: &Path, name: &str, text: &str) -> Result<(), SimError> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|source| SimError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// CSV of every measured lookup, one row each.
pub fn lookups_csv(r: &Report) -> String {
    let mut s = String::from(
        "index,origin,infohash,start_ms,success,first_peer_ms,done_ms,hops,messages_to_first_peer,messages,responses,timeouts,aborted\n",
    );
    for l in &r.records {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            l.index,
            l.origin,
            l.infohash,
            l.start_ms,
            u8::from(l.success()),
            opt(l.first_peer_ms),
            opt(l.done_ms),
            opt(l.hops),
            opt(l.messages_to_first_peer),
            l.messages,
            l.responses,
            l.timeouts,
            u8::from(l.aborted)
        );
    }
    s
}

/// CSV of the success rate per time bin.
pub fn success_csv(r: &Report) -> String {
    let mut s = String::from("start_s,lookups,success_rate,online\n");
    for b in &r.success_over_time {
        let _ = writeln!(
            s,
            "{},{},{},{}",
            b.start_s, b.lookups, b.success_rate, b.online
        );
    }
    s
}

fn plot_err(path: &Path) -> impl Fn(String) -> SimError + '_ {
    move |message| SimError::Plot {
        path: path.display().to_string(),
        message,
    }
}

fn cdf_plot(r: &Report, path: &Path) -> Result<(), String> {
    let mut v: Vec<u32> = r
        .records
        .iter()
        .filter(|l| !l.aborted)
        .filter_map(|l| l.first_peer_ms)
        .collect();
    v.sort_unstable();
    let counted = r.records.iter().filter(|l| !l.aborted).count().max(1) as f64;
    let xmax = f64::from(v.last().copied().unwrap_or(1000)).clamp(100.0, 5000.0);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: time to first peer (CDF over all lookups)", r.scenario),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..xmax, 0f64..1f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("ms")
        .y_desc("fraction of lookups")
        .draw()
        .map_err(|e| e.to_string())?;
    let pts: Vec<(f64, f64)> = v
        .iter()
        .enumerate()
        .map(|(i, &t)| (f64::from(t).min(xmax), (i + 1) as f64 / counted))
        .collect();
    chart
        .draw_series(LineSeries::new(pts, &BLUE))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

fn hops_plot(r: &Report, path: &Path) -> Result<(), String> {
    let mut hist = [0u32; 16];
    for h in r.records.iter().filter_map(|l| l.hops) {
        hist[usize::from(h).min(15)] += 1;
    }
    let top = f64::from(hist.iter().copied().max().unwrap_or(1).max(1)) * 1.1;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: hops to the first peer", r.scenario),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..15.5f64, 0f64..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("hops")
        .y_desc("lookups")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(hist.iter().enumerate().map(|(h, &c)| {
            let x = h as f64;
            Rectangle::new([(x - 0.4, 0.0), (x + 0.4, f64::from(c))], BLUE.filled())
        }))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

fn success_plot(r: &Report, path: &Path) -> Result<(), String> {
    let bins = &r.success_over_time;
    let x0 = bins.first().map_or(0.0, |b| b.start_s);
    let x1 = bins.last().map_or(1.0, |b| b.start_s).max(x0 + 1.0);
    let ymin = bins
        .iter()
        .filter(|b| b.lookups > 0)
        .map(|b| b.success_rate)
        .fold(1.0f64, f64::min)
        .min(0.95);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: lookup success rate over time", r.scenario),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, (ymin - 0.01).max(0.0)..1.001f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("virtual time (s)")
        .y_desc("success rate")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            bins.iter()
                .filter(|b| b.lookups > 0)
                .map(|b| (b.start_s, b.success_rate)),
            &BLUE,
        ))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Writes `lookups.csv`, `success_over_time.csv`, `report.json` and three SVG plots into
/// `dir` (created if missing).
pub fn write_outputs(report: &Report, dir: &Path) -> Result<(), SimError> {
    std::fs::create_dir_all(dir).map_err(|source| SimError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    write(dir, "lookups.csv", &lookups_csv(report))?;
    write(dir, "success_over_time.csv", &success_csv(report))?;
    write(dir, "report.json", &report.to_json())?;
    let p = dir.join("first_peer_cdf.svg");
    cdf_plot(report, &p).map_err(plot_err(&p))?;
    let p = dir.join("hops_hist.svg");
    hops_plot(report, &p).map_err(plot_err(&p))?;
    let p = dir.join("success_over_time.svg");
    success_plot(report, &p).map_err(plot_err(&p))?;
    Ok(())
}
