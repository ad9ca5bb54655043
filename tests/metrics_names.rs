//! Every `memgate_*` metric the Grafana dashboard (`grafana/`) and the alert
//! rules (`deploy/prometheus/`) use is on a freshly started memgate's
//! `/metrics`, with the label values they match literally: a series that
//! only appears at its first event makes `increase()` miss that event, and a
//! renamed metric makes a panel or an alert silently empty.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[path = "support/bare.rs"]
mod bare;

use bare::{files_under, http_get, start_memgate};

/// Metrics labelled by user: no series can exist before that user's first
/// event. They must still be declared (`src/metrics.rs`).
const PER_USER: [&str; 1] = ["memgate_auth_user_failures_total"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every string in a JSON or YAML document (expressions, queries, titles…).
fn strings_of_json(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings_of_json(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| strings_of_json(v, out)),
        _ => {}
    }
}

fn strings_of_yaml(value: &serde_yaml_ng::Value, out: &mut Vec<String>) {
    match value {
        serde_yaml_ng::Value::String(s) => out.push(s.clone()),
        serde_yaml_ng::Value::Sequence(items) => items.iter().for_each(|v| strings_of_yaml(v, out)),
        serde_yaml_ng::Value::Mapping(map) => map.values().for_each(|v| strings_of_yaml(v, out)),
        serde_yaml_ng::Value::Tagged(tagged) => strings_of_yaml(&tagged.value, out),
        _ => {}
    }
}

/// The strings of one dashboard or rule file.
fn strings_of(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => strings_of_json(
            &serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            &mut out,
        ),
        Some("yml" | "yaml") => {
            use serde::Deserialize;
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let value = serde_yaml_ng::Value::deserialize(doc)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                strings_of_yaml(&value, &mut out);
            }
        }
        // Anything else (a README): its text as it is.
        _ => out.push(text),
    }
    out
}

/// A metric named in an expression, with the label values it requires:
/// `label="v"` requires v; `label=~"a|b"` (plain alternatives) requires a
/// and b; negative matchers and real regular expressions require nothing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Reference {
    name: String,
    labels: Vec<(String, String)>,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn references(expr: &str) -> Vec<Reference> {
    let mut out = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts_name = (i == 0 || !is_name_char(chars[i - 1]))
            && chars[i..].iter().take(8).collect::<String>() == "memgate_";
        if !starts_name {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_name_char(chars[i]) {
            i += 1;
        }
        let name: String = chars[start..i].iter().collect();
        let mut labels = Vec::new();
        if chars.get(i) == Some(&'{') {
            let close = chars[i..]
                .iter()
                .position(|c| *c == '}')
                .map_or(chars.len(), |p| i + p);
            let inside: String = chars[i + 1..close].iter().collect();
            labels = required_labels(&inside);
            i = close;
        }
        out.push(Reference { name, labels });
    }
    out
}

/// `a="x", b=~"y|z", c!="w"` → [(a, x), (b, y), (b, z)].
fn required_labels(matchers: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for matcher in matchers.split(',') {
        let matcher = matcher.trim();
        let Some(op_at) = matcher.find(['=', '!']) else {
            continue;
        };
        let label = matcher[..op_at].trim().to_string();
        let rest = &matcher[op_at..];
        let (regex, value) = if let Some(v) = rest.strip_prefix("=~") {
            (true, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (false, v)
        } else {
            continue; // != and !~ require nothing
        };
        let value = value.trim().trim_matches('"');
        if !regex {
            out.push((label, value.to_string()));
        } else if value
            .split('|')
            .all(|alt| !alt.is_empty() && alt.chars().all(is_name_char))
        {
            out.extend(value.split('|').map(|alt| (label.clone(), alt.to_string())));
        }
    }
    out
}

/// Samples of a `/metrics` text: name → label sets.
fn samples(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        if line[name_end..].starts_with('{') {
            let mut rest = &line[name_end + 1..];
            while let Some(eq) = rest.find("=\"") {
                let label = rest[..eq].trim_start_matches(',').trim().to_string();
                let mut value = String::new();
                let mut chars = rest[eq + 2..].char_indices();
                let mut end = rest.len();
                while let Some((at, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                value.push(if escaped == 'n' { '\n' } else { escaped });
                            }
                        }
                        '"' => {
                            end = eq + 2 + at + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                labels.insert(label, value);
                rest = &rest[end..];
                if rest.starts_with('}') {
                    break;
                }
            }
        }
        out.entry(name).or_default().push(labels);
    }
    out
}

#[test]
fn the_expression_scanner_finds_names_and_literal_label_values() {
    let found = references(
        r#"sum(rate(memgate_auth_cache_total{outcome=~"hit|negative_hit"}[5m])) / clamp_min(sum(rate(memgate_auth_cache_total[5m])), 1e-9) + histogram_quantile(0.5, sum by (le) (rate(memgate_request_duration_seconds_bucket{listener="mem0", route!="x", a=~"b.*"}[5m]))) + up{job="memgate"} + xmemgate_no"#,
    );
    let pairs = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        found,
        [
            Reference {
                name: "memgate_auth_cache_total".into(),
                labels: pairs(&[("outcome", "hit"), ("outcome", "negative_hit")]),
            },
            Reference {
                name: "memgate_auth_cache_total".into(),
                labels: vec![],
            },
            Reference {
                name: "memgate_request_duration_seconds_bucket".into(),
                labels: pairs(&[("listener", "mem0")]),
            },
        ]
    );
    let parsed = samples(
        "# HELP x y\nmemgate_a_total{route=\"GET /memories\",b=\"q\\\"t\"} 0\nmemgate_b 1\n",
    );
    assert_eq!(parsed["memgate_a_total"][0]["route"], "GET /memories");
    assert_eq!(parsed["memgate_a_total"][0]["b"], "q\"t");
    assert!(parsed["memgate_b"][0].is_empty());
}

#[test]
fn every_metric_the_dashboard_and_alerts_use_is_on_a_fresh_metrics_page() {
    let mut referenced: BTreeMap<Reference, BTreeSet<String>> = BTreeMap::new();
    for dir in ["grafana", "deploy/prometheus"] {
        let files = files_under(&repo().join(dir));
        assert!(!files.is_empty(), "{dir} holds no files");
        for file in files {
            let origin = file
                .strip_prefix(repo())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            for text in strings_of(&file) {
                for reference in references(&text) {
                    referenced
                        .entry(reference)
                        .or_default()
                        .insert(origin.clone());
                }
            }
        }
    }
    let names: BTreeSet<&str> = referenced.keys().map(|r| r.name.as_str()).collect();
    assert!(
        names.contains("memgate_response_items_dropped_total")
            && names.contains("memgate_request_duration_seconds_bucket"),
        "the scanner missed names the files are known to use: {names:?}"
    );

    let memgate = start_memgate();
    let admin = memgate.admin;
    let (status, response) = http_get(admin, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{response}");
    drop(memgate);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let exported = samples(body);
    let declared = std::fs::read_to_string(repo().join("src/metrics.rs")).unwrap();

    let mut failures = Vec::new();
    for (reference, files) in &referenced {
        let files = files.iter().cloned().collect::<Vec<_>>().join(", ");
        let name = reference.name.as_str();
        if PER_USER.contains(&name) {
            let bare = name.trim_start_matches("memgate_");
            if !declared.contains(&format!("\"{bare}\"")) {
                failures.push(format!("{files}: {name} is not declared in src/metrics.rs"));
            }
            continue;
        }
        let Some(series) = exported.get(name) else {
            failures.push(format!(
                "{files}: {name} is not on a fresh /metrics (never exported, or only after its first event)"
            ));
            continue;
        };
        for (label, value) in &reference.labels {
            if !series.iter().any(|labels| labels.get(label) == Some(value)) {
                failures.push(format!(
                    "{files}: {name}{{{label}=\"{value}\"}} is not on a fresh /metrics"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "names the dashboard or alerts use that a fresh memgate does not export:\n{}",
        failures.join("\n")
    );
}
