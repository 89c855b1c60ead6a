//! A line chart of live tasks per site over time, written as plain SVG (axes with ticks, one
//! polyline per site, a legend), so the report needs no plotting library and opens in any browser.

use crate::soak::junit::escape;
use std::fmt::Write as _;

/// One line of the chart.
#[derive(Debug, Clone)]
pub(super) struct Line {
    /// The legend's label.
    pub(super) label: String,
    /// (seconds since the first sample, live tasks).
    pub(super) points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 300.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 56.0;
/// Distinguishable colours (Okabe-Ito, then a few more), in legend order.
const COLOURS: [&str; 10] = [
    "#d55e00", "#0072b2", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#999999",
    "#8c564b", "#f0e442",
];

/// Renders the chart of live tasks as a standalone SVG document.
pub(super) fn live_tasks_svg(title: &str, lines: &[Line]) -> String {
    line_svg(title, "live tasks", lines)
}

/// Renders the chart as a standalone SVG document, the y axis named `y_label`.
pub(super) fn line_svg(title: &str, y_label: &str, lines: &[Line]) -> String {
    let max_t = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(0.0, f64::max);
    let max_y = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let (x_step, x_max) = nice_axis(max_t.max(1.0));
    let (y_step, y_max) = nice_axis(max_y.max(1.0));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |t: f64| LEFT + t / x_max * plot_w;
    let py = |y: f64| TOP + plot_h - y / y_max * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<title>{}</title>
<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>
<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{}</text>"##,
        escape(title),
        escape(title)
    );
    // Grid and ticks.
    svg.push_str("<g class=\"axes\" stroke=\"#dddddd\" stroke-width=\"1\">\n");
    let mut y = 0.0;
    while y <= y_max + y_step / 2.0 {
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}"/>"#,
            py(y),
            LEFT + plot_w
        );
        y += y_step;
    }
    let mut x = 0.0;
    while x <= x_max + x_step / 2.0 {
        let _ = writeln!(
            svg,
            r#"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}"/>"#,
            px(x),
            TOP + plot_h
        );
        x += x_step;
    }
    svg.push_str("</g>\n<g class=\"labels\" fill=\"#333333\">\n");
    let mut y = 0.0;
    while y <= y_max + y_step / 2.0 {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            py(y) + 4.0,
            number(y)
        );
        y += y_step;
    }
    let mut x = 0.0;
    while x <= x_max + x_step / 2.0 {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            px(x),
            TOP + plot_h + 18.0,
            super::fmt::secs(x)
        );
        x += x_step;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since the first sample</text>
<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>
</g>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(y_label)
    );
    let _ = writeln!(
        svg,
        r##"<g class="frame" fill="none" stroke="#333333" stroke-width="1"><polyline points="{LEFT},{TOP} {LEFT},{0:.1} {1:.1},{0:.1}"/></g>"##,
        TOP + plot_h,
        LEFT + plot_w
    );
    // Series and legend.
    svg.push_str("<g class=\"series\" fill=\"none\" stroke-width=\"2\">\n");
    for (i, line) in lines.iter().enumerate() {
        let points: Vec<String> = line
            .points
            .iter()
            .map(|&(t, y)| format!("{:.1},{:.1}", px(t), py(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline stroke="{}" points="{}"><title>{}</title></polyline>"#,
            COLOURS[i % COLOURS.len()],
            points.join(" "),
            escape(&line.label)
        );
    }
    svg.push_str("</g>\n<g class=\"legend\">\n");
    for (i, line) in lines.iter().enumerate() {
        let top = TOP + 4.0 + i as f64 * 20.0;
        let left = LEFT + plot_w + 16.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{left:.1}" y="{top:.1}" width="14" height="10" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            COLOURS[i % COLOURS.len()],
            left + 20.0,
            top + 9.0,
            escape(&shorten(&line.label, 40))
        );
    }
    svg.push_str("</g>\n</svg>\n");
    svg
}

/// A tick step of 1, 2 or 5 times a power of ten giving at most about 6 ticks, and the axis end.
fn nice_axis(max: f64) -> (f64, f64) {
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    // A point a hair past a round number (6.003 s) should not add a whole empty tick.
    (step, (max / step - 0.02).ceil().max(1.0) * step)
}

fn number(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Keeps the end of a long label (a site's file and line matter most).
fn shorten(label: &str, max: usize) -> String {
    let count = label.chars().count();
    if count <= max {
        return label.to_owned();
    }
    let tail: String = label.chars().skip(count - (max - 1)).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_get_round_ticks() {
        assert_eq!(nice_axis(60.0), (20.0, 60.0));
        assert_eq!(nice_axis(48.0), (10.0, 50.0));
        assert_eq!(nice_axis(3.0), (1.0, 3.0));
        assert_eq!(nice_axis(123.0), (50.0, 150.0));
        assert_eq!(nice_axis(6.003), (2.0, 6.0));
    }

    #[test]
    fn chart_has_one_polyline_per_line_and_escapes_labels() {
        let lines = vec![
            Line {
                label: "a.rs:1:1 <leak>".into(),
                points: vec![(0.0, 1.0), (30.0, 17.0), (60.0, 33.0)],
            },
            Line {
                label: "b.rs:2:2".into(),
                points: vec![(0.0, 4.0), (60.0, 4.0)],
            },
        ];
        let svg = live_tasks_svg("Live tasks & sites", &lines);
        assert_eq!(svg.matches("<polyline stroke=").count(), 2);
        assert!(svg.contains("a.rs:1:1 &lt;leak&gt;"));
        assert!(svg.contains("Live tasks &amp; sites"));
        assert!(!svg.contains("<leak>"));
        // The highest point sits at the top of the plot.
        assert!(svg.contains(&format!(
            "{:.1},{:.1}",
            LEFT + (60.0 / 60.0) * (WIDTH - LEFT - RIGHT),
            TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - 33.0 / 40.0)
        )));
    }

    #[test]
    fn long_labels_keep_their_end() {
        assert_eq!(shorten("abcdef", 4), "…def");
        assert_eq!(shorten("abc", 4), "abc");
    }
}
