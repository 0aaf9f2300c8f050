//! The operator's files in `deploy/`: the Prometheus alert rules pass `promtool check rules` and
//! their unit tests (`promtool test rules`), and every metric the rules and the Grafana dashboard
//! read is one the service exports.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn promtool() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("promtool not found: install Debian's `prometheus` package (.ci/run does)")
        })
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn run(args: &[&str]) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(root().join("deploy/prometheus"))
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    run(&["check", "rules", "alerts.yml"]);
    run(&["test", "rules", "alerts_test.yml"]);
}

/// `sms_...` names in `text`, histogram series reduced to their metric.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("sms_") {
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
            .collect();
        rest = &rest[at + word.len().max(1)..];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| word.strip_suffix(s))
            .unwrap_or(&word);
        names.insert(base.to_owned());
    }
    names
}

#[test]
fn dashboards_and_alerts_read_only_metrics_the_service_exports() {
    // Registered names are string literals in the three metrics modules.
    let exported: BTreeSet<String> = [
        "ingress/src/metrics.rs",
        "worker/src/metrics.rs",
        "shared/src/metrics.rs",
    ]
    .iter()
    .flat_map(|p| {
        read(p)
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| {
                s.starts_with("sms_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
            .map(str::to_owned)
            .collect::<Vec<_>>()
    })
    .collect();
    assert!(
        exported.len() >= 15,
        "found the registrations: {exported:?}"
    );

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/sms-foundation.json"))
            .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "sms-foundation");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{} has targets", panel["title"]));
        assert!(!targets.is_empty());
        exprs.extend(
            targets
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_owned()),
        );
    }
    let used: BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| metric_names(e))
        .chain(metric_names(&read("deploy/prometheus/alerts.yml")))
        .collect();
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(unknown.is_empty(), "read but not exported: {unknown:?}");
    // Every queue, inbound, outbound and resource metric has a panel.
    let dashboard_names: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    let missing: Vec<&String> = exported
        .difference(&dashboard_names)
        .filter(|m| !m.ends_with("scrape_errors_total"))
        .collect();
    assert!(missing.is_empty(), "exported but on no panel: {missing:?}");
}

/// Every alert carries a `runbook_url` to its own section of docs/runbooks.md, each section
/// answers what it means, what to look at first, the usual causes and what not to do, and
/// every section belongs to an alert.
#[test]
fn every_alert_has_a_runbook_section() {
    let rules = read("deploy/prometheus/alerts.yml");
    let runbooks = read("docs/runbooks.md");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 6, "alerts found: {alerts:?}");
    // Sections: "## Name" up to the next "## ".
    let sections: Vec<(&str, &str)> = runbooks
        .split("\n## ")
        .skip(1)
        .map(|s| s.split_once('\n').unwrap_or((s, "")))
        .collect();
    for alert in &alerts {
        let block: String = rules
            .split("- alert: ")
            .find(|b| b.starts_with(&format!("{alert}\n")))
            .unwrap_or_default()
            .to_owned();
        let url = format!("runbook_url: \"docs/runbooks.md#{}\"", alert.to_lowercase());
        assert!(block.contains(&url), "{alert} lacks `{url}`");
        let (_, body) = sections
            .iter()
            .find(|(title, _)| title.trim() == *alert)
            .unwrap_or_else(|| panic!("docs/runbooks.md has no section `## {alert}`"));
        for part in [
            "**Means.**",
            "**Look first.**",
            "**Usual causes and fixes.**",
            "**Do not.**",
        ] {
            assert!(body.contains(part), "{alert}'s runbook lacks {part}");
        }
    }
    let orphans: Vec<&str> = sections
        .iter()
        .map(|(t, _)| t.trim())
        .filter(|t| !alerts.contains(t))
        .collect();
    assert!(
        orphans.is_empty(),
        "runbook sections with no alert: {orphans:?}"
    );
}
