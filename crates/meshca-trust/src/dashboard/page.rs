//! The dashboard page: [`render`] lays out the header, the rotation, the two drawings, the
//! clusters' table and the check findings as one HTML string with its CSS inline. No script and
//! no outside asset: the page opens offline, from a file or from `trust run --http`.

use std::borrow::Cow;
use std::fmt::Write;

use meshca_pki::error::show_time;
use meshca_verify::check::{Finding, Level};
use time::OffsetDateTime;

use super::svg::{root_colour, timeline, trust_graph};
use super::{DashboardData, RotationView};
use crate::rotation::RotationPhase;

/// The whole page for `data` as it stands at `now`.
pub fn render(data: &DashboardData, now: OffsetDateTime) -> String {
    let mut s = String::with_capacity(32 * 1024);
    let health = health(data);
    let _ = write!(
        s,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>meshca trust · {policy}</title>
<style>{CSS}</style></head>
<body><header><div><h1>Trust dashboard</h1>
<p class="meta">policy <b>{policy}</b> · management cluster <b>{mgmt}</b> · as of {now}</p></div>
<div class="pills"><span class="pill {health}">{health_text}</span><span class="pill">{clusters} cluster{cs}</span><span class="pill">{roots} root{rs}</span><span class="pill phase">{phase}</span></div></header>
<main>"#,
        policy = esc(&data.policy),
        mgmt = esc(&data.mgmt),
        now = show_time(now),
        health = health.class(),
        health_text = health.text(),
        clusters = data.clusters.len(),
        cs = plural(data.clusters.len()),
        roots = data.roots.len(),
        rs = plural(data.roots.len()),
        phase = esc(&phase_line(data)),
    );
    rotation_section(&mut s, data);
    let overlapping: Vec<&str> = data
        .clusters
        .iter()
        .filter(|c| c.status.roots.len() > 1)
        .map(|c| c.status.cluster.as_str())
        .collect();
    let _ = write!(
        s,
        r#"<section id="graph"><h2>Trust graph</h2><p class="hint">Each intermediate is joined to the root it chains to; each cluster shows a chip for every root in its <code>root-cert.pem</code>.</p>"#
    );
    if !overlapping.is_empty() {
        let _ = write!(
            s,
            r#"<p class="callout">{} trust{} more than one root at once: {}.</p>"#,
            esc(&overlapping.join(", ")),
            if overlapping.len() == 1 { "s" } else { "" },
            if data.rotation.is_some() {
                "the rotation keeps both roots trusted until every workload has moved to the new one"
            } else {
                "a passive root, or a rotation's bundles left behind"
            }
        );
    }
    s.push_str(r#"<div class="scroll">"#);
    s.push_str(&trust_graph(data));
    s.push_str("</div></section>");
    let _ = write!(
        s,
        r#"<section id="timeline"><h2>Expiry timeline</h2><p class="hint">Bars are validity windows (roots pale, intermediates solid, coloured by root); ◆ marks each renewal point; the red line is today.</p><div class="scroll">{}</div></section>"#,
        timeline(data, now)
    );
    clusters_section(&mut s, data);
    checks_section(&mut s, data);
    let _ = writeln!(
        s,
        r#"</main><footer>meshca trust dashboard · generated {} · one self-contained file: no scripts, no outside assets</footer></body></html>"#,
        show_time(now)
    );
    s
}

/// A page of one message, in the dashboard's style.
pub(super) fn notice(title: &str, text: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>meshca trust · {t}</title><style>{CSS}</style></head>
<body><header><div><h1>Trust dashboard</h1></div></header><main><section><h2>{t}</h2><p>{x}</p></section></main></body></html>
"#,
        t = esc(title),
        x = esc(text)
    )
}

/// The list of policies, each linking to its dashboard.
pub(super) fn index<'a>(policies: impl Iterator<Item = &'a str>) -> String {
    let items: String = policies
        .map(|p| format!(r#"<li><a href="/policy/{0}">{0}</a></li>"#, esc(p)))
        .collect();
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>meshca trust · policies</title><style>{CSS}</style></head>
<body><header><div><h1>Trust dashboard</h1></div></header><main><section><h2>Policies</h2><ul>{items}</ul></section></main></body></html>
"#
    )
}

/// The page's overall verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Health {
    Ok,
    Warn,
    Fail,
}

impl Health {
    fn class(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Warn => "warn",
            Health::Fail => "fail",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Health::Ok => "✔ healthy",
            Health::Warn => "⚠ needs attention",
            Health::Fail => "✘ failing",
        }
    }
}

fn health(data: &DashboardData) -> Health {
    let problems = data.clusters.iter().any(|c| !c.status.problems.is_empty());
    if problems || data.checks.count(Level::Fail) > 0 {
        Health::Fail
    } else if data.checks.count(Level::Warn) > 0 {
        Health::Warn
    } else {
        Health::Ok
    }
}

fn phase_line(data: &DashboardData) -> String {
    match &data.rotation {
        Some(r) => format!("root rotation: phase {}", r.phase.label()),
        None => "no root rotation in progress".to_owned(),
    }
}

const PHASES: [RotationPhase; 3] = [
    RotationPhase::AddRoot,
    RotationPhase::Reissue,
    RotationPhase::DropRoot,
];

fn rotation_section(s: &mut String, data: &DashboardData) {
    s.push_str(r#"<section id="rotation"><h2>Root rotation</h2>"#);
    let Some(r) = &data.rotation else {
        let _ = write!(
            s,
            r#"<p class="phase-now">No root rotation in progress.</p><p class="hint">{}</p></section>"#,
            match &data.last_rotation_finished {
                Some(t) => format!("The last rotation finished at {}.", esc(t)),
                None => "No rotation has finished yet under this policy.".to_owned(),
            }
        );
        return;
    };
    let _ = write!(
        s,
        r#"<p class="phase-now">Phase <b>{}</b>: {}</p><ol class="steps">"#,
        esc(r.phase.label()),
        esc(r.phase.describe())
    );
    let current = PHASES.iter().position(|p| *p == r.phase).unwrap_or(0);
    for (i, p) in PHASES.iter().enumerate() {
        let (class, when) = match i.cmp(&current) {
            std::cmp::Ordering::Less => ("done", "done".to_owned()),
            std::cmp::Ordering::Equal => (
                "current",
                match r.settled_at {
                    Some(t) => format!("shown by every cluster since {}", show_time(t)),
                    None => format!(
                        "since {}, waiting for every cluster",
                        show_time(r.phase_since)
                    ),
                },
            ),
            std::cmp::Ordering::Greater => ("todo", "to come".to_owned()),
        };
        let _ = write!(
            s,
            r#"<li class="{class}"><span class="dot">{}</span><div><b>{}</b><br><span>{}</span><br><small>{}</small></div></li>"#,
            i + 1,
            esc(p.label()),
            esc(p.describe()),
            esc(&when)
        );
    }
    s.push_str("</ol>");
    history(s, r, data);
    s.push_str("</section>");
}

/// The times the state records, oldest first. The store keeps the rotation's start, the
/// current phase's start and its settling, not every earlier phase's.
fn history(s: &mut String, r: &RotationView, data: &DashboardData) {
    let mut rows: Vec<(String, String)> = vec![(
        show_time(r.started_at),
        format!("rotation started: {}", r.reason),
    )];
    if r.phase_since != r.started_at || r.phase != RotationPhase::AddRoot {
        rows.push((
            show_time(r.phase_since),
            format!("phase {} began", r.phase.label()),
        ));
    }
    if let Some(t) = r.settled_at {
        rows.push((
            show_time(t),
            format!("phase {} shown by every cluster", r.phase.label()),
        ));
    }
    if let Some(t) = r.next_at {
        rows.push((
            show_time(t),
            match r.phase.next() {
                Some(p) => format!("earliest start of phase {}", p.label()),
                None => "the rotation ends".to_owned(),
            },
        ));
    }
    s.push_str(
        r#"<table class="history"><thead><tr><th>when</th><th>what</th></tr></thead><tbody>"#,
    );
    for (when, what) in rows {
        let _ = write!(
            s,
            "<tr><td class=\"mono\">{when}</td><td>{}</td></tr>",
            esc(&what)
        );
    }
    let _ = write!(
        s,
        r#"</tbody></table><p class="hint">Old root <span class="swatch" style="background:{}"></span><code>{}</code> → new root <span class="swatch" style="background:{}"></span><code>{}</code></p>"#,
        root_colour(data, &r.old_root),
        esc(&r.old_root),
        root_colour(data, &r.new_root),
        esc(&r.new_root)
    );
}

fn clusters_section(s: &mut String, data: &DashboardData) {
    s.push_str(r#"<section id="clusters"><h2>Clusters</h2><div class="scroll"><table><thead><tr><th>cluster</th><th>serial</th><th>not after</th><th>next renewal</th><th>rotation</th><th>roots</th><th>problems</th></tr></thead><tbody>"#);
    for c in &data.clusters {
        let st = &c.status;
        let chips: String = st
            .roots
            .iter()
            .map(|fp| {
                let role = data
                    .roots
                    .iter()
                    .find(|r| &r.fingerprint == fp)
                    .map_or("?", |r| r.role.label());
                format!(
                    r#"<span class="chip" style="background:{}" title="{}">{}</span>"#,
                    root_colour(data, fp),
                    esc(fp),
                    role
                )
            })
            .collect();
        let _ = write!(
            s,
            r#"<tr class="{}"><td><b>{}</b></td><td class="mono" title="{}">{}</td><td class="nowrap">{}</td><td class="nowrap">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            if st.problems.is_empty() { "ok" } else { "fail" },
            esc(&st.cluster),
            esc(st.serial.as_deref().unwrap_or("")),
            esc(&short(st.serial.as_deref().unwrap_or("-"), 23)),
            esc(st.not_after.as_deref().unwrap_or("-")),
            esc(st.next_renewal.as_deref().unwrap_or("-")),
            esc(st.rotation.as_deref().unwrap_or("-")),
            chips,
            if st.problems.is_empty() {
                "<span class=\"okmark\">✔ none</span>".to_owned()
            } else {
                esc(&st.problems.join("; ")).into_owned()
            }
        );
    }
    s.push_str("</tbody></table></div></section>");
}

fn checks_section(s: &mut String, data: &DashboardData) {
    let r = &data.checks;
    let _ = write!(
        s,
        r#"<section id="checks"><h2>meshca check</h2><p class="summary"><span class="count ok">✔ {}</span><span class="count warn">⚠ {}</span><span class="count fail">✘ {}</span> {}</p><p class="hint">Every cluster's <code>cacerts</code>, checked as <code>meshca check --warn-days {} --fail-days {}</code> would (warnings from the policy's renewal window).</p>"#,
        r.count(Level::Pass),
        r.count(Level::Warn),
        r.count(Level::Fail),
        esc(&r.summary()),
        data.check_options.warn_days,
        data.check_options.fail_days,
    );
    let sections = r
        .bundles
        .iter()
        .map(|b| (b.dir.as_str(), b.findings.as_slice()))
        .chain((!r.cross.is_empty()).then_some(("across bundles", r.cross.as_slice())));
    for (title, findings) in sections {
        let worst = findings
            .iter()
            .map(|f| f.level)
            .max()
            .unwrap_or(Level::Pass);
        let _ = write!(
            s,
            r#"<details class="bundle {}"{}><summary><span class="mark">{}</span> <b>{}</b> <small>{} finding{}</small></summary><table class="findings"><tbody>"#,
            level_class(worst),
            // Bundles that need attention open by themselves; the rest are one line each.
            if worst == Level::Pass { "" } else { " open" },
            mark(worst),
            esc(title),
            findings.len(),
            plural(findings.len())
        );
        for f in findings {
            finding_row(s, f);
        }
        s.push_str("</tbody></table></details>");
    }
    s.push_str("</section>");
}

fn finding_row(s: &mut String, f: &Finding) {
    let _ = write!(
        s,
        r#"<tr class="{}"><td class="mark">{}</td><td>{}</td><td>{}</td></tr>"#,
        level_class(f.level),
        mark(f.level),
        esc(f.name.as_str()),
        esc(&f.detail)
    );
}

fn level_class(l: Level) -> &'static str {
    match l {
        Level::Pass => "ok",
        Level::Warn => "warn",
        Level::Fail => "fail",
    }
}

fn mark(l: Level) -> &'static str {
    match l {
        Level::Pass => "✔",
        Level::Warn => "⚠",
        Level::Fail => "✘",
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `text` safe inside HTML and SVG text and attribute values.
pub(super) fn esc(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// At most `max` characters of `text`, with an ellipsis when cut.
pub(super) fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// `2025-01-31`.
pub(super) fn day(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

const CSS: &str = r#"
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--bg:#f8fafc;--card:#fff;--ok:#15803d;--okbg:#dcfce7;--warn:#b45309;--warnbg:#fef3c7;--fail:#b91c1c;--failbg:#fee2e2;--accent:#4f46e5}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{display:flex;flex-wrap:wrap;justify-content:space-between;align-items:center;gap:12px;padding:18px 28px;background:#0f172a;color:#f8fafc}
header h1{margin:0;font-size:22px;letter-spacing:.2px}
header .meta{margin:2px 0 0;color:#cbd5e1}
.pills{display:flex;flex-wrap:wrap;gap:8px}
.pill{padding:4px 12px;border-radius:999px;background:#1e293b;color:#e2e8f0;font-weight:600;font-size:13px}
.pill.ok{background:var(--okbg);color:var(--ok)}.pill.warn{background:var(--warnbg);color:var(--warn)}.pill.fail{background:var(--failbg);color:var(--fail)}
.pill.phase{background:#e0e7ff;color:#3730a3}
main{max-width:1040px;margin:0 auto;padding:8px 20px 24px}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:16px 20px;margin:16px 0;box-shadow:0 1px 2px rgba(15,23,42,.04)}
h2{margin:0 0 8px;font-size:17px}
.hint{color:var(--muted);margin:4px 0 10px}
.callout{background:#eef2ff;border-left:4px solid var(--accent);padding:8px 12px;border-radius:6px;margin:8px 0 12px}
.phase-now{font-size:16px;margin:4px 0 12px}
.steps{display:grid;grid-template-columns:repeat(3,1fr);gap:12px;list-style:none;padding:0;margin:0 0 12px}
.steps li{display:flex;gap:10px;align-items:flex-start;border:1px solid var(--line);border-radius:10px;padding:10px 12px;color:var(--muted)}
.steps .dot{flex:none;width:26px;height:26px;border-radius:50%;display:grid;place-items:center;background:#e2e8f0;color:#475569;font-weight:700}
.steps li.done .dot{background:var(--okbg);color:var(--ok)}
.steps li.current{border-color:var(--accent);background:#eef2ff;color:var(--ink)}
.steps li.current .dot{background:var(--accent);color:#fff}
.steps small{color:var(--muted)}
table.history{width:auto;min-width:60%}
.history td:first-child{padding-right:32px}
table{border-collapse:collapse;width:100%}
th{text-align:left;font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);border-bottom:1px solid var(--line);padding:6px 8px}
td{border-bottom:1px solid var(--line);padding:6px 8px;vertical-align:top}
tr.fail td:first-child{box-shadow:inset 3px 0 var(--fail)}
.mono,code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.chip{display:inline-block;color:#fff;border-radius:999px;padding:0 8px;margin:0 4px 2px 0;font-size:12px;font-weight:600}
.swatch{display:inline-block;width:10px;height:10px;border-radius:50%;margin:0 4px}
.okmark{color:var(--ok)}
.nowrap{white-space:nowrap}
.scroll{overflow-x:auto}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:var(--ink)}
svg .colhead{font-size:12px;font-weight:700;fill:var(--muted);text-transform:uppercase;letter-spacing:.05em}
svg .node rect.box{fill:#fff;stroke-width:2}
svg .node .title{font-size:14px;font-weight:700}
svg .node .sub{font-size:12px;fill:var(--muted)}
svg .mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;fill:var(--muted)}
svg .node.cluster.ok rect.box{stroke:#16a34a}
svg .node.cluster.fail rect.box{stroke:var(--fail);fill:#fff7f7}
svg .node.cluster .status{fill:var(--ink)}
svg .node.cluster.fail .status{fill:var(--fail);font-weight:600}
svg .node.int.missing rect.box{stroke:var(--fail);stroke-dasharray:6 4;fill:#fff7f7}
svg .node.int.missing .title{fill:var(--fail)}
svg .tag{stroke:none}
svg rect.tag.current{fill:#dbeafe}svg rect.tag.new{fill:var(--okbg)}svg rect.tag.old{fill:#f1f5f9}svg rect.tag.passive,svg rect.tag.unknown{fill:var(--warnbg)}
svg .tagtext{font-size:11px;font-weight:700}
svg .tagtext.current{fill:#1d4ed8}svg .tagtext.new{fill:var(--ok)}svg .tagtext.old{fill:#475569}svg .tagtext.passive,svg .tagtext.unknown{fill:var(--warn)}
svg .chip text{fill:#fff;font-size:11px;font-weight:700}
svg .edge{fill:none;stroke-width:2.5;opacity:.8}
svg .serves{stroke:#94a3b8;stroke-width:2}
svg .grid{stroke:var(--line)}
svg .tick{font-size:11px;fill:var(--muted);text-anchor:middle}
svg .rowlabel{font-size:13px;text-anchor:end}
svg .rowlabel.rootrow{fill:var(--muted)}
svg .barend{font-size:11px;fill:var(--muted)}
svg .barend.inside{text-anchor:end;fill:#fff;font-weight:600}
svg .barend.inside.pale{fill:var(--ink)}
svg .renew{fill:#fff;stroke:var(--ink);stroke-width:2}
svg .today{stroke:#dc2626;stroke-width:2}
svg .todaytext{fill:#dc2626;font-size:12px;font-weight:700}
svg .mark{stroke:var(--accent);stroke-width:1.5;stroke-dasharray:5 4}
svg .marktext{font-size:12px;fill:var(--accent);font-weight:600}
.summary{display:flex;gap:8px;align-items:center;flex-wrap:wrap}
.count{padding:2px 10px;border-radius:999px;font-weight:700}
.count.ok,.bundle.ok>summary .mark{background:var(--okbg);color:var(--ok)}
.count.warn,.bundle.warn>summary .mark{background:var(--warnbg);color:var(--warn)}
.count.fail,.bundle.fail>summary .mark{background:var(--failbg);color:var(--fail)}
details.bundle{border:1px solid var(--line);border-radius:8px;margin:8px 0;padding:0 10px}
details.bundle>summary{cursor:pointer;padding:8px 0}
summary .mark{display:inline-grid;place-items:center;width:22px;height:22px;border-radius:50%;font-weight:700}
summary small{color:var(--muted);margin-left:6px}
.findings td.mark{width:28px;font-weight:700;text-align:center}
.findings tr.ok td.mark{color:var(--ok)}
.findings tr.warn{background:var(--warnbg)}.findings tr.warn td.mark{color:var(--warn)}
.findings tr.fail{background:var(--failbg)}.findings tr.fail td.mark{color:var(--fail)}
footer{color:var(--muted);text-align:center;font-size:12px;padding:8px 0 24px}
@media (max-width:760px){.steps{grid-template-columns:1fr}}
"#;

#[cfg(test)]
mod tests {
    use meshca_verify::check::{BundleReport, CheckName, CheckOptions, CheckReport};
    use time::Duration;

    use super::*;
    use crate::dashboard::{ClusterView, IntermediateView, RootRole, RootView};
    use crate::reconcile::ClusterStatus;

    const OLD: &str = "AA:01";
    const NEW: &str = "BB:02";

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
    }

    fn root(fp: &str, role: RootRole, cn: &str) -> RootView {
        RootView {
            fingerprint: fp.to_owned(),
            subject: format!("O=Istio, CN={cn}"),
            not_before: now() - Duration::days(100),
            not_after: now() + Duration::days(265),
            role,
        }
    }

    fn cluster(name: &str, roots: &[&str], rotation: Option<&str>) -> ClusterView {
        ClusterView {
            status: ClusterStatus {
                cluster: name.to_owned(),
                serial: Some("01:02:03".into()),
                not_after: Some(show_time(now() + Duration::days(20))),
                next_renewal: Some(show_time(now() + Duration::days(17))),
                rotation: rotation.map(str::to_owned),
                roots: roots.iter().map(|r| (*r).to_owned()).collect(),
                problems: Vec::new(),
            },
            intermediate: Some(IntermediateView {
                subject: format!("CN={name} intermediate"),
                serial: "01:02:03".into(),
                not_before: now() - Duration::days(10),
                not_after: now() + Duration::days(20),
                renew_at: now() + Duration::days(17),
                root: OLD.to_owned(),
            }),
        }
    }

    fn checks(levels: &[(&str, Level)]) -> CheckReport {
        CheckReport {
            bundles: levels
                .iter()
                .map(|(dir, level)| BundleReport {
                    dir: (*dir).to_owned(),
                    findings: vec![Finding {
                        name: CheckName::RootDaysLeft,
                        level: *level,
                        detail: format!("{dir} detail"),
                    }],
                })
                .collect(),
            cross: Vec::new(),
        }
    }

    fn steady() -> DashboardData {
        DashboardData {
            policy: "gloo-mesh/mesh".into(),
            mgmt: "mgmt".into(),
            roots: vec![root(OLD, RootRole::Current, "Root A")],
            clusters: vec![
                cluster("cluster1", &[OLD], None),
                cluster("cluster2", &[OLD], None),
            ],
            rotation: None,
            last_rotation_finished: None,
            checks: checks(&[("cluster1", Level::Pass), ("cluster2", Level::Pass)]),
            check_options: CheckOptions::default(),
        }
    }

    fn rotating() -> DashboardData {
        DashboardData {
            roots: vec![
                root(OLD, RootRole::Old, "Root A"),
                root(NEW, RootRole::New, "Root B"),
            ],
            clusters: vec![
                cluster("cluster1", &[OLD, NEW], Some("1/3 add-root: done")),
                cluster("cluster2", &[OLD, NEW], Some("1/3 add-root: done")),
            ],
            rotation: Some(RotationView {
                phase: RotationPhase::AddRoot,
                reason: "requested".into(),
                started_at: now() - Duration::hours(2),
                phase_since: now() - Duration::hours(2),
                settled_at: Some(now() - Duration::hours(1)),
                next_at: Some(now() + Duration::hours(23)),
                old_root: OLD.into(),
                new_root: NEW.into(),
            }),
            ..steady()
        }
    }

    #[test]
    fn every_value_from_the_store_is_escaped() {
        let mut d = steady();
        let evil = "<script>alert('x')</script>&\"";
        d.policy = evil.into();
        d.clusters[0].status.cluster = evil.into();
        d.clusters[0].status.problems = vec![evil.into()];
        d.roots[0].subject = format!("CN={evil}");
        d.checks.bundles[0].findings[0].detail = evil.into();
        let page = render(&d, now());
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("alert('x')"));
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"));
    }

    #[test]
    fn every_cluster_and_the_steady_state_are_shown() {
        let page = render(&steady(), now());
        for c in ["cluster1", "cluster2"] {
            // In the graph, the timeline, the table and the checks.
            assert!(page.matches(c).count() >= 4, "{c}: {page}");
        }
        assert!(page.contains("no root rotation in progress"));
        assert!(page.contains("No root rotation in progress."));
        assert!(page.contains("✔ healthy"));
        assert!(page.contains(&format!("today {}", day(now()))));
        // The renewal point of each intermediate.
        assert_eq!(page.matches(r#"class="renew""#).count(), 2);
        assert!(page.starts_with("<!DOCTYPE html>"));
        // Nothing leaves the page (the empty icon keeps browsers from asking for one).
        assert_eq!(page.matches("href=").count(), 1);
        assert!(page.contains(r#"<link rel="icon" href="data:,">"#));
        for outside in ["http://", "https://", "<script", "src=", "url(", "@import"] {
            assert!(!page.contains(outside), "{outside}");
        }
    }

    #[test]
    fn a_rotation_shows_its_phase_and_both_roots_trusted_by_every_cluster() {
        let page = render(&rotating(), now());
        assert!(page.contains("root rotation: phase 1/3 add-root"));
        assert!(page.contains("Phase <b>1/3 add-root</b>"));
        assert!(page.contains(r#"<li class="current">"#));
        assert_eq!(page.matches(r#"<li class="todo">"#).count(), 2);
        assert!(page.contains("earliest start of phase 2/3 reissue"));
        // Both roots drawn, each cluster with a chip per root, and the overlap said in words.
        assert_eq!(page.matches(r#"<g class="node root">"#).count(), 2);
        assert_eq!(page.matches("<title>trusts root AA:01</title>").count(), 2);
        assert_eq!(page.matches("<title>trusts root BB:02</title>").count(), 2);
        assert!(page.contains("cluster1, cluster2 trust more than one root at once"));
        assert!(page.contains("tagtext new"));
        assert!(page.contains("tagtext old"));
        // The rotation's times on the timeline.
        assert!(page.contains("rotation started"));
        assert!(page.contains("phase 2/3 reissue from"));
    }

    #[test]
    fn findings_are_coloured_by_level_and_failing_bundles_open() {
        let mut d = steady();
        d.checks = checks(&[
            ("cluster1", Level::Pass),
            ("cluster2", Level::Warn),
            ("cluster3", Level::Fail),
        ]);
        let page = render(&d, now());
        assert!(page.contains(r#"<details class="bundle ok"><summary>"#));
        assert!(page.contains(r#"<details class="bundle warn" open>"#));
        assert!(page.contains(r#"<details class="bundle fail" open>"#));
        assert!(page.contains(r#"<tr class="warn"><td class="mark">⚠</td>"#));
        assert!(page.contains(r#"<tr class="fail"><td class="mark">✘</td>"#));
        assert!(page.contains("✘ failing"));
    }

    #[test]
    fn a_cluster_without_a_bundle_is_drawn_as_missing() {
        let mut d = steady();
        d.clusters[1].intermediate = None;
        d.clusters[1].status.roots.clear();
        d.clusters[1].status.problems = vec!["no cacerts yet".into()];
        let page = render(&d, now());
        assert!(page.contains("no valid cacerts"));
        assert!(page.contains("no cacerts yet"));
        assert!(page.contains(r#"<g class="node cluster fail">"#));
    }
}
