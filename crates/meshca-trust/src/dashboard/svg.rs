//! The dashboard's two drawings as inline SVG: the trust graph (roots → intermediates →
//! clusters, each cluster showing the roots its bundle trusts) and the expiry timeline.

use std::fmt::Write;

use time::{Duration, OffsetDateTime};

use super::DashboardData;
use super::page::{day, esc, short};

/// One colour per root, in the order of [`DashboardData::roots`].
const PALETTE: [&str; 6] = [
    "#2563eb", "#9333ea", "#0d9488", "#c2410c", "#db2777", "#4d7c0f",
];

/// The colour of the root with fingerprint `fp`.
pub(super) fn root_colour(data: &DashboardData, fp: &str) -> &'static str {
    data.roots
        .iter()
        .position(|r| r.fingerprint == fp)
        .map_or("#64748b", |i| PALETTE[i % PALETTE.len()])
}

const WIDTH: f64 = 960.0;
const ROW: f64 = 92.0;
const NODE: f64 = 74.0;
const TOP: f64 = 34.0;
const ROOT_X: f64 = 8.0;
const INT_X: f64 = 350.0;
const CLUSTER_X: f64 = 692.0;
const COL_W: f64 = 260.0;

/// The trust graph: roots on the left, each cluster's intermediate in the middle joined to the
/// root it chains to, the clusters on the right with a chip for every root they trust.
pub(super) fn trust_graph(data: &DashboardData) -> String {
    let rows = data.clusters.len().max(data.roots.len()).max(1);
    let height = TOP + rows as f64 * ROW;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="graph" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-label="trust graph">"#
    );
    for (x, title) in [
        (ROOT_X, "Roots"),
        (INT_X, "Intermediates (cacerts signers)"),
        (CLUSTER_X, "Clusters (roots trusted)"),
    ] {
        let _ = write!(
            s,
            r#"<text x="{x}" y="18" class="colhead">{}</text>"#,
            esc(title)
        );
    }
    let root_offset = (rows - data.roots.len().min(rows)) as f64 * ROW / 2.0;
    let root_y = |i: usize| TOP + root_offset + i as f64 * ROW;
    let row_y = |i: usize| TOP + i as f64 * ROW;
    // Edges first, so that the nodes cover their ends.
    for (i, c) in data.clusters.iter().enumerate() {
        let y = row_y(i) + NODE / 2.0;
        if let Some(int) = &c.intermediate
            && let Some(j) = data.roots.iter().position(|r| r.fingerprint == int.root)
        {
            let (x1, y1, x2) = (ROOT_X + COL_W, root_y(j) + NODE / 2.0, INT_X);
            let mid = (x1 + x2) / 2.0;
            let _ = write!(
                s,
                r#"<path d="M{x1} {y1} C{mid} {y1} {mid} {y} {x2} {y}" class="edge" stroke="{}"><title>{} signed by {}</title></path>"#,
                root_colour(data, &int.root),
                esc(&c.status.cluster),
                esc(&data.roots[j].subject)
            );
        }
        let _ = write!(
            s,
            r#"<line x1="{}" y1="{y}" x2="{CLUSTER_X}" y2="{y}" class="serves"/>"#,
            INT_X + COL_W
        );
    }
    for (j, r) in data.roots.iter().enumerate() {
        let (x, y) = (ROOT_X, root_y(j));
        let colour = root_colour(data, &r.fingerprint);
        let _ = write!(
            s,
            r#"<g class="node root"><title>{subject}&#10;SHA-256 {fp}&#10;valid {nb} to {na}</title><rect x="{x}" y="{y}" width="{COL_W}" height="{NODE}" rx="8" class="box" style="stroke:{colour}"/><rect x="{x}" y="{y}" width="7" height="{NODE}" rx="3" style="fill:{colour}"/>"#,
            subject = esc(&r.subject),
            fp = esc(&r.fingerprint),
            nb = day(r.not_before),
            na = day(r.not_after),
        );
        let tag = r.role.label();
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" class="title">{}</text><rect x="{}" y="{}" width="{}" height="17" rx="8" class="tag {tag}"/><text x="{}" y="{}" class="tagtext {tag}">{tag}</text><text x="{}" y="{}" class="sub">until {}</text><text x="{}" y="{}" class="mono">{}</text></g>"#,
            x + 16.0,
            y + 22.0,
            esc(&short(&common_name(&r.subject), 30)),
            x + 16.0,
            y + 32.0,
            tag.len() as f64 * 7.0 + 14.0,
            x + 23.0,
            y + 44.5,
            x + tag.len() as f64 * 7.0 + 40.0,
            y + 45.0,
            day(r.not_after),
            x + 16.0,
            y + 64.0,
            esc(&short(&r.fingerprint, 32)),
        );
    }
    for (i, c) in data.clusters.iter().enumerate() {
        let y = row_y(i);
        match &c.intermediate {
            Some(int) => {
                let _ = write!(
                    s,
                    r#"<g class="node int"><title>{subject}&#10;serial {serial}&#10;valid {nb} to {na}&#10;renews {renew}</title><rect x="{INT_X}" y="{y}" width="{COL_W}" height="{NODE}" rx="8" class="box" style="stroke:{colour}"/><text x="{tx}" y="{}" class="title">{cn}</text><text x="{tx}" y="{}" class="sub">until {na} · renews {renew}</text><text x="{tx}" y="{}" class="mono">serial {short_serial}</text></g>"#,
                    y + 22.0,
                    y + 42.0,
                    y + 62.0,
                    subject = esc(&int.subject),
                    serial = esc(&int.serial),
                    nb = day(int.not_before),
                    na = day(int.not_after),
                    renew = day(int.renew_at),
                    colour = root_colour(data, &int.root),
                    tx = INT_X + 12.0,
                    cn = esc(&short(&common_name(&int.subject), 32)),
                    short_serial = esc(&short(&int.serial, 26)),
                );
            }
            None => {
                let _ = write!(
                    s,
                    r#"<g class="node int missing"><rect x="{INT_X}" y="{y}" width="{COL_W}" height="{NODE}" rx="8" class="box"/><text x="{}" y="{}" class="title">no valid cacerts</text><text x="{}" y="{}" class="sub">see the problems below</text></g>"#,
                    INT_X + 12.0,
                    y + 30.0,
                    INT_X + 12.0,
                    y + 52.0,
                );
            }
        }
        let state = if c.status.problems.is_empty() {
            "ok"
        } else {
            "fail"
        };
        let _ = write!(
            s,
            r#"<g class="node cluster {state}"><title>{name}&#10;{detail}</title><rect x="{CLUSTER_X}" y="{y}" width="{COL_W}" height="{NODE}" rx="8" class="box"/><text x="{tx}" y="{}" class="title">{short_name}</text>"#,
            y + 22.0,
            name = esc(&c.status.cluster),
            detail = esc(&if c.status.problems.is_empty() {
                "healthy".to_owned()
            } else {
                c.status.problems.join("; ")
            }),
            tx = CLUSTER_X + 12.0,
            short_name = esc(&short(&c.status.cluster, 30)),
        );
        let mut cx = CLUSTER_X + 12.0;
        let _ = write!(
            s,
            r#"<text x="{cx}" y="{}" class="sub">trusts</text>"#,
            y + 44.0
        );
        cx += 44.0;
        for fp in &c.status.roots {
            let label = data
                .roots
                .iter()
                .find(|r| &r.fingerprint == fp)
                .map_or("?", |r| r.role.label());
            let w = label.len() as f64 * 7.5 + 26.0;
            let _ = write!(
                s,
                r#"<g class="chip"><title>trusts root {}</title><rect x="{cx}" y="{}" width="{w}" height="18" rx="9" style="fill:{colour}"/><circle cx="{}" cy="{}" r="3.5" fill="white"/><text x="{}" y="{}">{label}</text></g>"#,
                esc(fp),
                y + 31.0,
                cx + 9.0,
                y + 40.0,
                cx + 16.0,
                y + 44.0,
                colour = root_colour(data, fp),
            );
            cx += w + 6.0;
        }
        if c.status.roots.is_empty() {
            let _ = write!(
                s,
                r#"<text x="{cx}" y="{}" class="sub">nothing</text>"#,
                y + 44.0
            );
        }
        let line = match (&c.status.rotation, c.status.problems.len()) {
            (_, n) if n > 0 => format!("{n} problem{}", if n == 1 { "" } else { "s" }),
            (Some(r), _) => r.clone(),
            (None, _) => "healthy".to_owned(),
        };
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" class="sub status">{}</text></g>"#,
            CLUSTER_X + 12.0,
            y + 64.0,
            esc(&short(&line, 36)),
        );
    }
    s.push_str("</svg>");
    s
}

/// `CN=…` out of a subject, else the whole subject.
fn common_name(subject: &str) -> String {
    subject
        .split(',')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("CN="))
        .unwrap_or(subject)
        .to_owned()
}

const LABEL_W: f64 = 230.0;
const PLOT_X0: f64 = 240.0;
const PLOT_X1: f64 = 944.0;
const TL_ROW: f64 = 30.0;
const LANE: f64 = 16.0;

/// One bar of the timeline.
struct Bar {
    label: String,
    detail: String,
    from: OffsetDateTime,
    to: OffsetDateTime,
    renew: Option<OffsetDateTime>,
    colour: &'static str,
    root: bool,
}

/// The expiry timeline: a bar per root and per intermediate over the window that matters now
/// (the intermediates' lives, today, the rotation's times), with each renewal point and today's
/// line; a bar that runs past the window says when it ends.
pub(super) fn timeline(data: &DashboardData, now: OffsetDateTime) -> String {
    let mut bars: Vec<Bar> = data
        .roots
        .iter()
        .map(|r| Bar {
            label: format!("{} · {} root", common_name(&r.subject), r.role.label()),
            detail: format!(
                "{}: valid {} to {}",
                r.subject,
                day(r.not_before),
                day(r.not_after)
            ),
            from: r.not_before,
            to: r.not_after,
            renew: None,
            colour: root_colour(data, &r.fingerprint),
            root: true,
        })
        .collect();
    bars.extend(data.clusters.iter().filter_map(|c| {
        c.intermediate.as_ref().map(|i| Bar {
            label: c.status.cluster.clone(),
            detail: format!(
                "{}: intermediate valid {} to {}, renews {}",
                c.status.cluster,
                day(i.not_before),
                day(i.not_after),
                day(i.renew_at)
            ),
            from: i.not_before,
            to: i.not_after,
            renew: Some(i.renew_at),
            colour: root_colour(data, &i.root),
            root: false,
        })
    }));
    let mut marks: Vec<(OffsetDateTime, String)> = Vec::new();
    if let Some(r) = &data.rotation {
        marks.push((r.started_at, "rotation started".to_owned()));
        if let Some(t) = r.next_at {
            let what = match r.phase.next() {
                Some(p) => format!("phase {} from", p.label()),
                None => "rotation ends".to_owned(),
            };
            marks.push((t, what));
        }
    }
    let (start, end) = window(&bars, &marks, now);
    let span = (end - start).as_seconds_f64().max(1.0);
    let x = |t: OffsetDateTime| {
        let t = t.clamp(start, end);
        PLOT_X0 + (t - start).as_seconds_f64() / span * (PLOT_X1 - PLOT_X0)
    };
    // Today and each rotation time get a lane of their own above the bars, so that their
    // labels never overlap however close the times are.
    let flags: Vec<(OffsetDateTime, String, &str)> =
        std::iter::once((now, format!("today {}", day(now)), "today"))
            .chain(
                marks
                    .iter()
                    .map(|(t, what)| (*t, format!("{what} {}", day(*t)), "mark")),
            )
            .collect();
    let top = 8.0 + flags.len() as f64 * LANE + 6.0;
    let bottom = top + bars.len().max(1) as f64 * TL_ROW;
    let height = bottom + 24.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="timeline" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-label="expiry timeline">"#
    );
    // A date too close to the right edge would be cut off.
    for t in ticks(start, end)
        .into_iter()
        .filter(|t| x(*t) < WIDTH - 40.0)
    {
        let tx = x(t);
        let _ = write!(
            s,
            r#"<line x1="{tx}" y1="{top}" x2="{tx}" y2="{bottom}" class="grid"/><text x="{tx}" y="{}" class="tick">{}</text>"#,
            bottom + 16.0,
            day(t)
        );
    }
    for (i, b) in bars.iter().enumerate() {
        let y = top + i as f64 * TL_ROW;
        let (x1, x2) = (x(b.from), x(b.to));
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" class="rowlabel{}">{}</text>"#,
            LABEL_W,
            y + 19.0,
            if b.root { " rootrow" } else { "" },
            esc(&short(&b.label, 34))
        );
        let _ = write!(
            s,
            r#"<g class="bar"><title>{}</title><rect x="{x1}" y="{}" width="{}" height="16" rx="4" style="fill:{}" fill-opacity="{}"/>"#,
            esc(&b.detail),
            y + 6.0,
            (x2 - x1).max(2.0),
            b.colour,
            if b.root { "0.3" } else { "0.85" }
        );
        let end_label = if b.to > end {
            format!("until {} ▸", day(b.to))
        } else {
            day(b.to)
        };
        // The end date goes after the bar when it fits, else inside its end.
        let (lx, class) = if x2 + 80.0 < WIDTH {
            (x2 + 6.0, "barend")
        } else if b.root {
            (x2 - 6.0, "barend inside pale")
        } else {
            (x2 - 6.0, "barend inside")
        };
        let _ = write!(
            s,
            r#"<text x="{lx}" y="{}" class="{class}">{}</text>"#,
            y + 18.5,
            esc(&end_label)
        );
        if let Some(r) = b.renew {
            let (rx, ry) = (x(r), y + 14.0);
            let _ = write!(
                s,
                r#"<polygon points="{rx},{} {},{ry} {rx},{} {},{ry}" class="renew"><title>renews {}</title></polygon>"#,
                ry - 7.0,
                rx + 7.0,
                ry + 7.0,
                rx - 7.0,
                day(r)
            );
        }
        s.push_str("</g>");
    }
    for (k, (t, label, class)) in flags.iter().enumerate() {
        let tx = x(*t);
        let ly = 8.0 + k as f64 * LANE + 11.0;
        // A flag to the right of its line, or to the left near the right edge.
        let (lx, anchor) = if tx + 180.0 < WIDTH {
            (tx + 5.0, "start")
        } else {
            (tx - 5.0, "end")
        };
        let _ = write!(
            s,
            r#"<line x1="{tx}" y1="{}" x2="{tx}" y2="{bottom}" class="{class}"/><text x="{lx}" y="{ly}" class="{class}text" text-anchor="{anchor}">{}</text>"#,
            ly - 11.0,
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}

/// The window the timeline shows: the intermediates' lives, the rotation's times and today
/// (the roots when there is nothing else), with a margin either side.
fn window(
    bars: &[Bar],
    marks: &[(OffsetDateTime, String)],
    now: OffsetDateTime,
) -> (OffsetDateTime, OffsetDateTime) {
    let near: Vec<OffsetDateTime> = bars
        .iter()
        .filter(|b| !b.root)
        .flat_map(|b| [b.from, b.to])
        .chain(marks.iter().map(|m| m.0))
        .chain([now])
        .collect();
    let times: Vec<OffsetDateTime> = if near.len() > 1 {
        near
    } else {
        bars.iter()
            .flat_map(|b| [b.from, b.to])
            .chain([now])
            .collect()
    };
    let lo = times.iter().min().copied().unwrap_or(now);
    let hi = times.iter().max().copied().unwrap_or(now);
    let span = (hi - lo).max(Duration::days(1));
    let margin = span / 25;
    // On the right, room for the last end date after its bar.
    (lo - margin, hi + span / 6)
}

/// Dates for the grid: about eight, on a step people count in.
fn ticks(start: OffsetDateTime, end: OffsetDateTime) -> Vec<OffsetDateTime> {
    let days = (end - start).whole_days().max(1);
    let step = [1, 2, 7, 14, 30, 61, 91, 182, 365, 730, 1826, 3652]
        .into_iter()
        .find(|s| days / s <= 8)
        .unwrap_or(3652);
    let first = start.replace_time(time::Time::MIDNIGHT) + Duration::days(1);
    (0..)
        .map(|k| first + Duration::days(k * step))
        .take_while(|t| *t < end)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_stay_few_and_inside_the_window() {
        let t0 = OffsetDateTime::UNIX_EPOCH;
        for days in [1, 10, 45, 400, 4000] {
            let end = t0 + Duration::days(days);
            let ts = ticks(t0, end);
            assert!(ts.len() <= 9, "{days} days: {} ticks", ts.len());
            assert!(ts.iter().all(|t| *t > t0 && *t < end));
        }
    }

    #[test]
    fn common_name_is_taken_from_the_subject() {
        assert_eq!(common_name("O=Istio, CN=Root CA"), "Root CA");
        assert_eq!(common_name("O=Istio"), "O=Istio");
    }
}
