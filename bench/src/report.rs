//! Results: a table for people, JSON for machines, an SVG chart for a glance.

use std::fmt::Write as _;

/// One measured (peer, workload) pair.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub peer: String,
    pub workload: String,
    pub seconds: f64,
    /// Payload bytes the workload moved (read or written).
    pub bytes: u64,
    pub mb_s: f64,
    pub first_byte_s: Option<f64>,
    /// Bytes that crossed the emulated link, both directions (None without a link).
    pub link_bytes: Option<u64>,
    /// seconds / the physical limit's seconds for this workload.
    pub vs_limit: Option<f64>,
    /// Peak RSS of the gridvfs client proxy.
    pub client_rss_mib: Option<f64>,
    /// False if the run hit the time bound; `mb_s` is then the partial rate.
    pub complete: bool,
    pub note: String,
}

pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| workload | peer | seconds | MB/s | first byte s | link MiB | × limit | client RSS MiB | note |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let opt = |v: Option<f64>, p: usize| v.map_or("–".to_string(), |v| format!("{v:.p$}"));
        let _ = writeln!(
            s,
            "| {} | {} | {}{:.2} | {:.1} | {} | {} | {} | {} | {} |",
            r.workload,
            r.peer,
            if r.complete { "" } else { ">" },
            r.seconds,
            r.mb_s,
            opt(r.first_byte_s, 3),
            opt(r.link_bytes.map(|b| b as f64 / (1u64 << 20) as f64), 1),
            opt(r.vs_limit, 2),
            opt(r.client_rss_mib, 1),
            if r.complete {
                r.note.clone()
            } else {
                format!("stopped at the bound; partial rate. {}", r.note)
            },
        );
    }
    s
}

/// Horizontal bars of seconds, grouped by workload; the limit row is drawn in grey.
pub fn svg(title: &str, rows: &[Row]) -> String {
    let bar_h = 18.0;
    let gap = 6.0;
    let label_w = 260.0;
    let plot_w = 520.0;
    let mut y = 50.0;
    let mut body = String::new();
    let mut workloads: Vec<&str> = rows.iter().map(|r| r.workload.as_str()).collect();
    workloads.dedup();
    // One scale for every group, so a warm run is seen next to the cold one it repeats.
    let max = rows
        .iter()
        .map(|r| r.seconds)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    for w in workloads {
        let group: Vec<&Row> = rows.iter().filter(|r| r.workload == w).collect();
        let _ = writeln!(
            body,
            r#"<text x="10" y="{:.0}" font-weight="bold">{w}</text>"#,
            y + 12.0
        );
        y += bar_h + gap;
        for r in group {
            let len = (r.seconds / max * plot_w).max(1.0);
            let color = if r.peer == "limit" {
                "#bbbbbb"
            } else if r.peer.starts_with("gridvfs") {
                "#2b7bb9"
            } else {
                "#e08a3c"
            };
            let _ = writeln!(
                body,
                r#"<text x="20" y="{:.0}">{}</text><rect x="{label_w}" y="{:.0}" width="{len:.1}" height="{bar_h}" fill="{color}"/><text x="{:.0}" y="{:.0}">{}{:.1} s · {:.1} MB/s</text>"#,
                y + 13.0,
                r.peer,
                y,
                label_w + len + 6.0,
                y + 13.0,
                if r.complete { "" } else { "> " },
                r.seconds,
                r.mb_s
            );
            y += bar_h + gap;
        }
        y += gap * 2.0;
    }
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="10" y="24" font-size="15" font-weight="bold">{title}</text>{body}</svg>"#,
        w = label_w + plot_w + 200.0,
        h = y + 10.0
    )
}

/// Warm rows as a fraction of the ceiling's rate (issue 12): each peer's `W3` MB/s over the
/// `nfs-mirror` row of the same workload in the same run. Empty without a mirror row.
pub fn vs_ceiling(rows: &[Row]) -> String {
    let mut s = String::new();
    for w in ["W3 (W1 again)", "W3 (W2 again)"] {
        let Some(ceiling) = rows
            .iter()
            .find(|r| r.workload == w && r.peer == "nfs-mirror" && r.complete)
        else {
            continue;
        };
        for r in rows
            .iter()
            .filter(|r| r.workload == w && r.peer != "nfs-mirror")
        {
            if s.is_empty() {
                s.push_str("| workload | peer | MB/s | ceiling MB/s | × ceiling |\n|---|---|---:|---:|---:|\n");
            }
            s.push_str(&format!(
                "| {w} | {} | {:.1} | {:.1} | {:.2} |\n",
                r.peer,
                r.mb_s,
                ceiling.mb_s,
                r.mb_s / ceiling.mb_s
            ));
        }
    }
    s
}
