//! The figures a person compares: pulled out of the results, turned into
//! ratios against a baseline backend, and drawn as one SVG of bar panels
//! (a PNG beside it through rsvg-convert when that is installed).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

pub struct Figure {
    pub metric: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    /// (backend, value) for every backend that has it.
    pub values: Vec<(String, f64)>,
}

/// (metric key, JSON pointer in a result, label, unit, higher is better)
const METRICS: [(&str, &str, &str, &str, bool); 12] = [
    (
        "spawnExitMs",
        "/spawnExitMs/median",
        "spawn→exit, median",
        "ms",
        false,
    ),
    (
        "stdoutMibS",
        "/stdoutMibS/median",
        "stdout throughput, median",
        "MiB/s",
        true,
    ),
    (
        "coldStartMs",
        "/coldStartMs/median",
        "cold start (stopVM→startVM), median",
        "ms",
        false,
    ),
    (
        "concurrentMibS",
        "/concurrent/mibS",
        "concurrent sessions, output",
        "MiB/s",
        true,
    ),
    (
        "untarS",
        "/files/untarS",
        "untar on a shared folder",
        "s",
        false,
    ),
    (
        "churnS",
        "/files/churnS",
        "small-file churn on a shared folder",
        "s",
        false,
    ),
    (
        "writeMibS",
        "/files/writeMibS",
        "sequential write, shared folder",
        "MiB/s",
        true,
    ),
    (
        "readMibS",
        "/files/readMibS",
        "sequential read, shared folder",
        "MiB/s",
        true,
    ),
    (
        "gitStatusS",
        "/files/gitStatusS",
        "git status on a shared folder",
        "s",
        false,
    ),
    (
        "agentFirstLineMs",
        "/agentTurn/firstLineMs/median",
        "agent turn: spawn→first stdout line, median",
        "ms",
        false,
    ),
    (
        "agentResultMs",
        "/agentTurn/resultMs/median",
        "agent turn: spawn→result, median",
        "ms",
        false,
    ),
    (
        "helperRssMib",
        "/helperRssKib",
        "helper RSS after the run",
        "MiB",
        false,
    ),
];

pub fn figures(doc: &Value) -> Vec<Figure> {
    let results = doc["results"].as_array().cloned().unwrap_or_default();
    METRICS
        .iter()
        .map(|(metric, ptr, label, unit, higher)| {
            let values = results
                .iter()
                .filter_map(|r| {
                    let v = r.pointer(ptr)?.as_f64()?;
                    let v = if *metric == "helperRssMib" {
                        v / 1024.0
                    } else {
                        v
                    };
                    Some((r["backend"].as_str()?.to_string(), v))
                })
                .collect();
            Figure {
                metric,
                label,
                unit,
                higher_is_better: *higher,
                values,
            }
        })
        .filter(|f| !f.values.is_empty())
        .collect()
}

/// value ÷ baseline's value, per metric and backend.
pub fn ratios(figures: &[Figure], baseline: Option<&str>) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(base) = baseline else {
        return out;
    };
    for f in figures {
        let Some((_, b)) = f.values.iter().find(|(n, _)| n == base) else {
            continue;
        };
        if *b <= 0.0 {
            continue;
        }
        let per: Map<String, Value> = f
            .values
            .iter()
            .map(|(n, v)| (n.clone(), Value::from((v / b * 1000.0).round() / 1000.0)))
            .collect();
        out.insert(f.metric.to_string(), Value::Object(per));
    }
    out
}

/// "2 CPUs, Linux 6.1.0": what the figures were measured on.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, Linux {}", kernel.trim())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const COLORS: [&str; 5] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2"];

/// One panel per figure, one bar per backend, the value written beside it.
pub fn svg(title: &str, figures: &[Figure]) -> String {
    let mut backends: Vec<String> = Vec::new();
    for f in figures {
        for (b, _) in &f.values {
            if !backends.contains(b) {
                backends.push(b.clone());
            }
        }
    }
    let (width, bar_h, gap, label_w, bar_w) = (760.0, 18.0, 6.0, 90.0, 520.0);
    let panel_h = |n: usize| 26.0 + n as f64 * (bar_h + gap) + 14.0;
    let height: f64 = 50.0 + figures.iter().map(|f| panel_h(f.values.len())).sum::<f64>();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="10" y="24" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let mut y = 50.0;
    for f in figures {
        let better = if f.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        let _ = write!(
            s,
            r#"<text x="10" y="{:.1}" font-weight="bold">{} ({}, {better})</text>"#,
            y + 14.0,
            esc(f.label),
            esc(f.unit)
        );
        let max = f.values.iter().map(|(_, v)| *v).fold(0.0, f64::max);
        for (i, (b, v)) in f.values.iter().enumerate() {
            let by = y + 24.0 + i as f64 * (bar_h + gap);
            let w = if max > 0.0 { v / max * bar_w } else { 0.0 };
            let color = COLORS[backends.iter().position(|x| x == b).unwrap_or(0) % COLORS.len()];
            let _ = write!(
                s,
                r#"<text x="10" y="{:.1}">{}</text><rect x="{label_w}" y="{by:.1}" width="{w:.1}" height="{bar_h}" fill="{color}"/><text x="{:.1}" y="{:.1}">{v:.2}</text>"#,
                by + 13.0,
                esc(b),
                label_w + w + 6.0,
                by + 13.0
            );
        }
        y += panel_h(f.values.len());
    }
    s.push_str("</svg>\n");
    s
}

/// A PNG of the SVG beside it, if rsvg-convert is installed.
pub fn png_from_svg(svg: &Path) -> Result<PathBuf, String> {
    let png = svg.with_extension("png");
    let out = std::process::Command::new("rsvg-convert")
        .arg("-o")
        .arg(&png)
        .arg(svg)
        .output()
        .map_err(|e| format!("rsvg-convert: {e} (apt-get install librsvg2-bin)"))?;
    if !out.status.success() {
        return Err(format!(
            "rsvg-convert failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn figures_ratios_and_svg() {
        let doc = json!({"results": [
            {"backend": "host", "spawnExitMs": {"median": 2.0}, "files": {"untarS": 1.0}},
            {"backend": "kvm", "spawnExitMs": {"median": 5.0}, "files": {"untarS": 1.5}},
            {"backend": "bwrap", "skipped": "no bwrap"},
        ]});
        let f = figures(&doc);
        assert_eq!(f.len(), 2, "only metrics someone measured");
        assert_eq!(f[0].values, vec![("host".into(), 2.0), ("kvm".into(), 5.0)]);
        let r = ratios(&f, Some("host"));
        assert_eq!(r["spawnExitMs"]["kvm"], json!(2.5));
        assert_eq!(r["untarS"]["kvm"], json!(1.5));
        assert!(ratios(&f, Some("nope")).is_empty());
        let s = svg("t <&>", &f);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("t &lt;&amp;&gt;"), "escaped");
        assert_eq!(s.matches("<rect x=").count(), 4, "a bar per value");
    }
}
