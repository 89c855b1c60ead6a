//! JUnit XML for CI: one `<testsuite>` per soak run, one `<testcase>` per check, a `<failure>` in
//! each failed one, and the run's figures as `<properties>`.
//!
//! The format is the common subset CI systems read (Jenkins, GitLab, GitHub annotations): counts on
//! `<testsuites>` and `<testsuite>`, `classname` and `name` on each case, and the message both in
//! the `message` attribute and as the failure's text. Every text is escaped for XML, and characters
//! XML 1.0 cannot carry at all are replaced.

use std::fmt::Write as _;

use super::judge::Judgement;

/// Escapes text for an XML attribute or element.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The JUnit document for a judged run that took `elapsed_s` seconds in all.
pub fn render(judgement: &Judgement, elapsed_s: f64) -> String {
    let r = &judgement.report;
    let suite = format!("soak.{}", r.profile);
    let tests = judgement.checks.len();
    let failures = judgement.checks.iter().filter(|c| !c.passed).count();
    let mut xml = String::new();
    let _ = writeln!(xml, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        xml,
        r#"<testsuites name="diagtool soak" tests="{tests}" failures="{failures}" errors="0" time="{elapsed_s:.3}">"#
    );
    let _ = writeln!(
        xml,
        r#"  <testsuite name="{}" tests="{tests}" failures="{failures}" errors="0" skipped="0" time="{elapsed_s:.3}">"#,
        escape(&suite)
    );
    let _ = writeln!(xml, "    <properties>");
    let properties = [
        ("duration_s", r.duration_s.to_string()),
        ("lines_written", r.lines_written.to_string()),
        ("lines_delivered", r.lines_delivered.to_string()),
        ("duplicates", r.duplicates.to_string()),
        ("tasks_growth_per_min", r.tasks_growth_per_min.to_string()),
        (
            "rss_growth_mib_per_min",
            r.rss_growth_mib_per_min.to_string(),
        ),
        ("fds_growth_per_min", r.fds_growth_per_min.to_string()),
    ];
    for (name, value) in properties {
        let _ = writeln!(
            xml,
            r#"      <property name="{name}" value="{}"/>"#,
            escape(&value)
        );
    }
    let _ = writeln!(xml, "    </properties>");
    for check in &judgement.checks {
        let head = format!(
            r#"    <testcase classname="{}" name="{}" time="0""#,
            escape(&suite),
            escape(check.name)
        );
        if check.passed {
            let _ = writeln!(xml, "{head}>");
            let _ = writeln!(
                xml,
                "      <system-out>{}</system-out>",
                escape(&check.detail)
            );
            let _ = writeln!(xml, "    </testcase>");
        } else {
            let _ = writeln!(xml, "{head}>");
            let _ = writeln!(
                xml,
                r#"      <failure message="{0}" type="soak">{0}</failure>"#,
                escape(&check.detail)
            );
            let _ = writeln!(xml, "    </testcase>");
        }
    }
    let _ = writeln!(xml, "  </testsuite>");
    let _ = writeln!(xml, "</testsuites>");
    xml
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{SOAK_SCHEMA, SoakReport};
    use crate::soak::judge::CheckResult;

    fn judgement() -> Judgement {
        let checks = vec![
            CheckResult {
                name: "delivery",
                passed: true,
                detail: "10 of 10 lines delivered".into(),
            },
            CheckResult {
                name: "task_growth",
                passed: false,
                detail: "tasks grow: shipper/src/leaklab.rs:88:17 leak at 48.0/min <\"&'> \u{1}"
                    .into(),
            },
        ];
        Judgement {
            analysis: crate::analysis::analyze(&[], &Default::default()),
            report: SoakReport {
                schema: SOAK_SCHEMA.into(),
                profile: "leak<&>".into(),
                passed: false,
                duration_s: 60.0,
                lines_written: 10,
                lines_delivered: 10,
                duplicates: 0,
                tasks_growth_per_min: 48.0,
                rss_growth_mib_per_min: 0.1,
                fds_growth_per_min: 0.0,
                leaks: vec![],
                failures: vec!["task_growth: ...".into()],
                long_polls: None,
            },
            checks,
        }
    }

    /// A small well-formedness check: tags balance, attributes are quoted, and no raw `<`, `&` or
    /// control character appears in text or attributes.
    fn assert_well_formed(xml: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = xml
            .strip_prefix(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
            .unwrap();
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            assert!(!text.contains('>'), "raw > in text {text:?}");
            for (i, _) in text.match_indices('&') {
                let entity = &text[i..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                        .iter()
                        .any(|e| entity.starts_with(e)),
                    "bare & in {text:?}"
                );
            }
            assert!(
                !text
                    .chars()
                    .any(|c| (c as u32) < 0x20 && !"\t\n\r".contains(c))
            );
            let close = rest[open..].find('>').unwrap() + open;
            let tag = &rest[open + 1..close];
            assert_eq!(
                tag.matches('"').count() % 2,
                0,
                "unbalanced quotes in <{tag}>"
            );
            assert!(!tag.contains('<'), "raw < in <{tag}>");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap().to_owned());
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
    }

    #[test]
    fn one_testcase_per_check_with_failures_counted() {
        let xml = render(&judgement(), 75.5);
        assert_well_formed(&xml);
        assert!(
            xml.contains(r#"<testsuites name="diagtool soak" tests="2" failures="1""#),
            "{xml}"
        );
        assert!(xml.contains(r#"<testsuite name="soak.leak&lt;&amp;&gt;" tests="2" failures="1""#));
        assert_eq!(xml.matches("<testcase ").count(), 2);
        assert_eq!(xml.matches("<failure ").count(), 1);
        assert!(xml.contains(r#"name="task_growth""#));
        assert!(xml.contains(
            "shipper/src/leaklab.rs:88:17 leak at 48.0/min &lt;&quot;&amp;&apos;&gt; \u{fffd}"
        ));
        assert!(xml.contains(r#"<property name="lines_written" value="10"/>"#));
        assert!(xml.contains(r#"time="75.500""#));
    }

    #[test]
    fn escape_covers_markup_and_control_characters() {
        assert_eq!(escape(r#"a<b>&"c"'"#), "a&lt;b&gt;&amp;&quot;c&quot;&apos;");
        assert_eq!(escape("tab\tnl\n\u{7}"), "tab\tnl\n\u{fffd}");
    }
}
