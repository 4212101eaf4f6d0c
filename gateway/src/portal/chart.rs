//! A small server-rendered SVG bar chart (requests per hour), so usage
//! needs no chart library and no script.

use std::fmt::Write;

/// One bar: its label (hour) and requests, of which errors.
pub struct Bar {
    pub label: String,
    pub requests: u64,
    pub errors: u64,
}

/// Escapes text for SVG/HTML content and attributes.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The chart: bars scaled to the largest, a title and a description for
/// screen readers, every bar with its figures as a tooltip.
pub fn bars(title: &str, bars: &[Bar]) -> String {
    const W: usize = 720;
    const H: usize = 160;
    const BASE: usize = 140;
    let max = bars.iter().map(|b| b.requests).max().unwrap_or(0).max(1);
    let total: u64 = bars.iter().map(|b| b.requests).sum();
    let step = if bars.is_empty() { W } else { W / bars.len() };
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="chart" role="img" aria-labelledby="chart-title chart-desc" viewBox="0 0 {W} {H}" width="100%" height="{H}" xmlns="http://www.w3.org/2000/svg"><title id="chart-title">{}</title><desc id="chart-desc">{total} requests in {} hours; the tallest bar is {max}.</desc>"#,
        esc(title),
        bars.len()
    );
    let _ = write!(out, r#"<line x1="0" y1="{BASE}" x2="{W}" y2="{BASE}" class="axis"/>"#);
    for (i, b) in bars.iter().enumerate() {
        let h = (b.requests as f64 / max as f64 * 120.0).round() as usize;
        let eh = (b.errors as f64 / max as f64 * 120.0).round() as usize;
        let x = i * step + 2;
        let w = step.saturating_sub(4).max(1);
        let _ = write!(
            out,
            r#"<g><title>{}: {} requests, {} errors</title><rect class="bar" x="{x}" y="{}" width="{w}" height="{h}"/><rect class="bar-error" x="{x}" y="{}" width="{w}" height="{eh}"/></g>"#,
            esc(&b.label),
            b.requests,
            b.errors,
            BASE - h,
            BASE - eh
        );
        if i % 4 == 0 {
            let _ = write!(out, r#"<text x="{x}" y="{}" class="tick">{}</text>"#, H - 4, esc(&b.label));
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_labels_are_escaped() {
        let svg = bars(
            "Requests <per> hour",
            &[
                Bar { label: "09:00".into(), requests: 10, errors: 5 },
                Bar { label: "10:00".into(), requests: 5, errors: 0 },
            ],
        );
        assert!(svg.contains("Requests &lt;per&gt; hour"));
        assert!(svg.contains(r#"y="20" width="356" height="120""#), "{svg}");
        assert!(svg.contains(r#"height="60""#), "half of the tallest: {svg}");
        assert!(svg.contains("15 requests in 2 hours"));
    }
}
