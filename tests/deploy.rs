//! The deployment files in `deploy/`, checked without Docker, Kubernetes or
//! systemd: every YAML document parses and has the shape the other files rely
//! on, every `MEMGATE_*` variable names a real config key (the keys come from
//! the built binary's `check-config`, so they cannot drift), probes and health
//! checks ask paths that a running memgate answers, and the Dockerfile and the
//! systemd unit have what deploy/README.md promises.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml_ng::Value;

#[path = "support/bare.rs"]
mod bare;

use bare::{files_under, free_ports, http_get, start_memgate};

const BIN: &str = env!("CARGO_BIN_EXE_memgate");

// ---------------------------------------------------------------------------
// Files

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every non-empty document of a YAML file.
fn yaml_documents(relative: &str) -> Vec<Value> {
    let text = read(relative);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{relative}: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn yaml(relative: &str) -> Value {
    let mut docs = yaml_documents(relative);
    assert_eq!(docs.len(), 1, "{relative}: expected one YAML document");
    docs.remove(0)
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {value:?}"))
}

fn seq<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    value
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what}: expected a list, found {value:?}"))
}

/// A YAML mapping of strings (labels, selectors) as a sorted map.
fn string_map(value: &Value, what: &str) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .unwrap_or_else(|| panic!("{what}: expected a mapping, found {value:?}"))
        .iter()
        .map(|(k, v)| (text(k, what).to_string(), text(v, what).to_string()))
        .collect()
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// "40s", "1m30s", "45" (seconds) as seconds.
fn seconds(duration: &str) -> u64 {
    let (mut total, mut number) = (0, String::new());
    let mut chars = duration.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {duration:?}"));
        number.clear();
        total += match c {
            'h' => n * 3600,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                n / 1000
            }
            'm' => n * 60,
            's' => n,
            _ => panic!("bad duration {duration:?}"),
        };
    }
    if !number.is_empty() {
        total += number.parse::<u64>().unwrap();
    }
    total
}

// ---------------------------------------------------------------------------
// memgate's configuration, as the binary sees it

/// Runs `memgate check-config` with `env` as the only environment and returns
/// the effective configuration it prints (secrets masked).
fn check_config(file: Option<&Path>, env: &[(String, String)]) -> toml::Table {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let out = Command::new(BIN)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("--config")
        .arg(file.unwrap_or(&empty))
        .arg("check-config")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-config refused {file:?} with {env:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .parse()
        .expect("check-config prints TOML")
}

/// Every `[section] key` memgate knows, from its built-in defaults.
fn config_keys() -> BTreeMap<String, BTreeSet<String>> {
    check_config(None, &[])
        .into_iter()
        .map(|(section, keys)| {
            let keys = keys.as_table().expect("sections are tables");
            (section, keys.keys().cloned().collect())
        })
        .collect()
}

/// Fails unless `name` is `MEMGATE_CONFIG`, `MEMGATE_LOG` or
/// `MEMGATE_SECTION__KEY` for a real `[section] key`.
fn assert_config_variable(keys: &BTreeMap<String, BTreeSet<String>>, name: &str, origin: &str) {
    let rest = name.strip_prefix("MEMGATE_").unwrap();
    if rest == "CONFIG" || rest == "LOG" {
        return;
    }
    let (section, key) = rest
        .split_once("__")
        .unwrap_or_else(|| panic!("{origin}: {name} is not MEMGATE_SECTION__KEY"));
    let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
    assert!(
        keys.get(&section).is_some_and(|k| k.contains(&key)),
        "{origin}: {name} names no config key ([{section}] {key} is not in check-config's output)"
    );
}

fn get<'a>(config: &'a toml::Table, section: &str, key: &str) -> &'a toml::Value {
    &config[section][key]
}

fn port_of(listen: &str) -> u16 {
    listen.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn listen_ports(config: &toml::Table) -> [u16; 3] {
    ["mcp", "mem0", "admin"].map(|s| port_of(get(config, s, "listen").as_str().unwrap()))
}

fn grace_period(config: &toml::Table) -> u64 {
    get(config, "server", "grace_period_secs")
        .as_integer()
        .unwrap() as u64
}

fn container_config() -> PathBuf {
    repo().join("deploy/container.toml")
}

// ---------------------------------------------------------------------------
// docker-compose.yml

fn compose() -> Value {
    yaml("deploy/docker-compose.yml")
}

fn services(compose: &Value) -> Vec<(String, &Value)> {
    compose["services"]
        .as_mapping()
        .expect("compose: services")
        .iter()
        .map(|(name, service)| (text(name, "service name").to_string(), service))
        .collect()
}

/// A service's `environment`, in either of compose's two spellings.
fn compose_environment(service: &Value, what: &str) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Null => Vec::new(),
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => panic!("{what}: environment value {other:?}"),
                };
                (text(k, what).to_string(), value)
            })
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let (k, v) = text(item, what).split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect(),
        other => panic!("{what}: environment {other:?}"),
    }
}

/// Compose interpolation: `${NAME}`, `${NAME:-default}`, `${NAME:?message}`
/// (with or without the colon) and `$$`. Variables take their default, else "x".
fn interpolate(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix('{') {
            let end = after.find('}').expect("unclosed ${");
            let expr = &after[..end];
            let name_end = expr
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len());
            let operator = &expr[name_end..];
            let default = operator
                .strip_prefix(":-")
                .or_else(|| operator.strip_prefix('-'));
            out.push_str(default.unwrap_or("x"));
            rest = &after[end + 1..];
        } else {
            panic!("bare $ in {raw:?}: write ${{NAME}} or $$");
        }
    }
    out.push_str(rest);
    out
}

/// Names of the variables a compose file interpolates.
fn compose_variables(raw: &str) -> BTreeSet<String> {
    raw.split("${")
        .skip(1)
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn memgate_service(compose: &Value) -> &Value {
    let service = &compose["services"]["memgate"];
    assert!(service.is_mapping(), "compose: no memgate service");
    service
}

/// memgate's effective configuration inside the compose stack: the image's
/// config file plus the service's environment.
fn compose_memgate_config(compose: &Value) -> toml::Table {
    let env: Vec<_> = compose_environment(memgate_service(compose), "memgate")
        .into_iter()
        .map(|(k, v)| (k, interpolate(&v)))
        .collect();
    check_config(Some(&container_config()), &env)
}

#[test]
fn every_yaml_file_in_deploy_parses() {
    let yaml_files: Vec<_> = files_under(&repo().join("deploy"))
        .into_iter()
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")))
        .collect();
    assert!(yaml_files.len() >= 6, "found only {yaml_files:?}");
    for path in yaml_files {
        let docs = yaml_documents(&relative(&path));
        assert!(!docs.is_empty(), "{}: no YAML document", path.display());
        assert!(
            docs.iter().all(Value::is_mapping),
            "{}: every document should be a mapping",
            path.display()
        );
    }
}

#[test]
fn compose_publishes_only_memgate_and_the_admin_port_only_locally() {
    let compose = compose();
    let config = compose_memgate_config(&compose);
    let [mcp, mem0, admin] = listen_ports(&config);
    for (name, service) in services(&compose) {
        if name != "memgate" {
            assert!(
                service.get("ports").is_none() && service.get("network_mode").is_none(),
                "compose: only memgate may publish ports, {name} does"
            );
        }
    }
    let published: BTreeSet<String> = seq(&memgate_service(&compose)["ports"], "memgate ports")
        .iter()
        .map(|p| text(p, "memgate port").to_string())
        .collect();
    let expected: BTreeSet<String> = [
        format!("{mcp}:{mcp}"),
        format!("{mem0}:{mem0}"),
        format!("127.0.0.1:{admin}:{admin}"),
    ]
    .into();
    assert_eq!(published, expected, "compose: memgate's published ports");

    // Everything but memgate lives on the internal network only it shares.
    let networks = &compose["networks"];
    let internal: BTreeSet<&str> = networks
        .as_mapping()
        .expect("compose: networks")
        .iter()
        .filter(|(_, n)| n["internal"].as_bool() == Some(true))
        .map(|(name, _)| text(name, "network"))
        .collect();
    assert!(!internal.is_empty(), "compose: no internal network");
    for (name, service) in services(&compose) {
        let joined: BTreeSet<&str> = seq(&service["networks"], &format!("{name} networks"))
            .iter()
            .map(|n| text(n, "network"))
            .collect();
        assert!(
            joined.iter().any(|n| internal.contains(n)),
            "compose: {name} is not on an internal network"
        );
        for network in &joined {
            assert!(
                networks.get(*network).is_some(),
                "compose: {name} joins undeclared {network}"
            );
        }
    }
}

#[test]
fn compose_configures_memgate_with_real_keys_and_reachable_upstreams() {
    let compose = compose();
    let keys = config_keys();
    let env = compose_environment(memgate_service(&compose), "memgate");
    for (name, _) in &env {
        assert!(name.starts_with("MEMGATE_"), "compose: memgate gets {name}");
        assert_config_variable(&keys, name, "docker-compose.yml");
    }
    for key in [
        "DATABASE__URL",
        "MCP__LISTEN",
        "MCP__UPSTREAM",
        "MEM0__LISTEN",
        "MEM0__UPSTREAM",
        "ADMIN__LISTEN",
    ] {
        assert!(
            env.iter().any(|(k, _)| *k == format!("MEMGATE_{key}")),
            "compose: memgate should be configured with MEMGATE_{key}"
        );
    }
    let config = compose_memgate_config(&compose);
    assert!(
        get(&config, "database", "url")
            .as_str()
            .unwrap()
            .starts_with("postgres://"),
        "compose: the token store should be the postgres service"
    );
    for listener in ["mcp", "mem0", "admin"] {
        let listen = get(&config, listener, "listen").as_str().unwrap();
        assert!(
            listen.starts_with("0.0.0.0:"),
            "compose: {listener} listens on {listen}"
        );
    }
    let names: BTreeSet<String> = services(&compose).into_iter().map(|(n, _)| n).collect();
    for listener in ["mcp", "mem0"] {
        let upstream =
            url::Url::parse(get(&config, listener, "upstream").as_str().unwrap()).unwrap();
        let host = upstream.host_str().unwrap();
        assert!(
            names.contains(host),
            "compose: {listener}.upstream names no service ({host})"
        );
    }
    let db = url::Url::parse(get(&config, "database", "url").as_str().unwrap()).unwrap();
    assert!(
        names.contains(db.host_str().unwrap()),
        "compose: database host is no service"
    );

    // The audit spool survives restarts.
    let spool = get(&config, "audit", "spool_dir").as_str().unwrap();
    let mounts: Vec<&str> = seq(&memgate_service(&compose)["volumes"], "memgate volumes")
        .iter()
        .map(|v| text(v, "volume").split(':').nth(1).unwrap())
        .collect();
    assert!(
        mounts.iter().any(|m| Path::new(spool).starts_with(m)),
        "compose: audit.spool_dir {spool} is on no volume ({mounts:?})"
    );
}

#[test]
fn compose_waits_for_postgres_restarts_and_stops_gracefully() {
    let compose = compose();
    let memgate = memgate_service(&compose);
    let db_host = url::Url::parse(
        get(&compose_memgate_config(&compose), "database", "url")
            .as_str()
            .unwrap(),
    )
    .unwrap()
    .host_str()
    .unwrap()
    .to_string();
    assert_eq!(
        memgate["depends_on"][db_host.as_str()]["condition"].as_str(),
        Some("service_healthy"),
        "compose: memgate should wait for {db_host} to be healthy"
    );
    assert!(
        compose["services"][db_host.as_str()]["healthcheck"]["test"].is_sequence(),
        "compose: {db_host} needs a healthcheck for that"
    );
    for (name, service) in services(&compose) {
        assert!(
            service["restart"].is_string(),
            "compose: {name} has no restart policy"
        );
        if let Some(deps) = service["depends_on"].as_mapping() {
            for (dep, _) in deps {
                let dep = text(dep, "depends_on");
                assert!(
                    compose["services"].get(dep).is_some(),
                    "compose: {name} depends on unknown {dep}"
                );
            }
        }
    }
    assert!(
        memgate["healthcheck"]["test"].is_sequence(),
        "compose: memgate has no healthcheck"
    );
    let grace = grace_period(&compose_memgate_config(&compose));
    let stop = seconds(text(&memgate["stop_grace_period"], "stop_grace_period"));
    assert!(
        stop > grace,
        "compose: stop_grace_period {stop}s should exceed the {grace}s grace period"
    );
}

#[test]
fn compose_takes_secrets_from_the_env_file() {
    let raw = read("deploy/docker-compose.yml");
    let compose = compose();
    for (name, service) in services(&compose) {
        for (key, value) in compose_environment(service, &name) {
            let secret = ["PASSWORD", "SECRET", "API_KEY", "AUTH"]
                .iter()
                .any(|s| key.contains(s))
                || url::Url::parse(&value).is_ok_and(|u| u.password().is_some());
            if secret {
                assert!(
                    value.contains("${"),
                    "compose: {name}'s {key} is hard-coded; take it from deploy/.env"
                );
            }
        }
    }
    let example = read("deploy/.env.example");
    for variable in compose_variables(&raw) {
        assert!(
            example.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{variable}="))
            }),
            "deploy/.env.example does not mention {variable}"
        );
    }
    assert!(
        read("deploy/.gitignore")
            .lines()
            .any(|l| l.trim() == ".env")
    );
    assert!(
        dockerignored("deploy/.env"),
        ".dockerignore should keep deploy/.env out of images"
    );
}

// ---------------------------------------------------------------------------
// Kubernetes

fn manifests() -> Vec<(String, Value)> {
    files_under(&repo().join("deploy/kubernetes"))
        .into_iter()
        .flat_map(|path| {
            let name = relative(&path);
            yaml_documents(&name)
                .into_iter()
                .map(move |doc| (name.clone(), doc))
        })
        .collect()
}

fn manifest<'a>(all: &'a [(String, Value)], kind: &str) -> &'a Value {
    let mut found = all
        .iter()
        .filter(|(_, doc)| doc["kind"].as_str() == Some(kind));
    let (_, doc) = found
        .next()
        .unwrap_or_else(|| panic!("kubernetes: no {kind}"));
    assert!(found.next().is_none(), "kubernetes: more than one {kind}");
    doc
}

fn memgate_container(deployment: &Value) -> &Value {
    seq(
        &deployment["spec"]["template"]["spec"]["containers"],
        "containers",
    )
    .iter()
    .find(|c| c["name"].as_str() == Some("memgate"))
    .expect("kubernetes: no container named memgate")
}

/// The container's env with Secret references resolved from secret.example.yaml.
fn kubernetes_env(all: &[(String, Value)]) -> Vec<(String, String)> {
    let secret = manifest(all, "Secret");
    let container = memgate_container(manifest(all, "Deployment"));
    seq(&container["env"], "env")
        .iter()
        .map(|var| {
            let name = text(&var["name"], "env name").to_string();
            let value = if let Some(value) = var["value"].as_str() {
                value.to_string()
            } else {
                let reference = &var["valueFrom"]["secretKeyRef"];
                assert_eq!(
                    reference["name"], secret["metadata"]["name"],
                    "kubernetes: {name} refers to another Secret than secret.example.yaml"
                );
                let key = text(&reference["key"], "secretKeyRef.key");
                text(&secret["stringData"][key], &format!("Secret key {key}")).to_string()
            };
            (name, value)
        })
        .collect()
}

/// The named (or numbered) container port a probe or Service port points at.
fn container_port(container: &Value, port: &Value) -> u16 {
    if let Some(number) = port.as_u64() {
        return number as u16;
    }
    let name = text(port, "port");
    let found = seq(&container["ports"], "container ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("kubernetes: the container has no port named {name}"));
    found["containerPort"].as_u64().unwrap() as u16
}

/// The `kubernetes-validate` program: `MEMGATE_KUBERNETES_VALIDATE`, else the
/// venv `.ci/run` builds from tests/requirements-kubernetes.txt, else the PATH.
fn kubernetes_validate() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MEMGATE_KUBERNETES_VALIDATE") {
        return Some(PathBuf::from(path));
    }
    let venv = repo().join(".ci/venv-k8s/bin/kubernetes-validate");
    if venv.exists() {
        return Some(venv);
    }
    let on_path = Command::new("kubernetes-validate")
        .arg("--version")
        .output();
    on_path
        .is_ok_and(|out| out.status.success())
        .then(|| PathBuf::from("kubernetes-validate"))
}

/// Every manifest in deploy/kubernetes/ is valid against the Kubernetes API
/// schemas (strict: no unknown fields), except the ServiceMonitor, a
/// Prometheus Operator resource for which no schema is bundled.
#[test]
fn kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    const REQUIRE: &str = "MEMGATE_REQUIRE_KUBERNETES_VALIDATE";
    let Some(validate) = kubernetes_validate() else {
        assert!(
            std::env::var_os(REQUIRE).is_none(),
            "{REQUIRE} is set but kubernetes-validate is not installed; run .ci/run or \
             pip install -r tests/requirements-kubernetes.txt"
        );
        eprintln!(
            "\n*** SKIPPED: kubernetes-validate is not installed, so deploy/kubernetes/ was NOT \
             checked against the Kubernetes schemas (pip install -r tests/requirements-kubernetes.txt) ***\n"
        );
        return;
    };
    let files: Vec<PathBuf> = files_under(&repo().join("deploy/kubernetes"));
    let out = Command::new(&validate)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", validate.display()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate failed:\n{report}"
    );
    let all = manifests();
    for (file, doc) in &all {
        let kind = text(&doc["kind"], file);
        let name = text(&doc["metadata"]["name"], file);
        if kind == "ServiceMonitor" {
            continue;
        }
        let passed = format!("passed for resource {}/{name}", kind.to_lowercase());
        assert!(
            report.contains(&passed),
            "{file}: {kind} {name} not validated:\n{report}"
        );
    }

    // The validator does refuse what the API would.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let deployment =
        read("deploy/kubernetes/deployment.yaml").replace("replicas: 2", "replicas: two");
    std::fs::write(&broken, deployment).unwrap();
    let out = Command::new(&validate)
        .arg("--strict")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a Deployment with replicas: two passed validation"
    );
}

/// NetworkPolicies admit only memgate's pods to mem0 and the MCP server, on
/// the ports memgate's upstream settings name.
#[test]
fn only_memgate_may_reach_the_upstreams() {
    let all = manifests();
    let deployment = manifest(&all, "Deployment");
    let pod_labels = string_map(
        &deployment["spec"]["template"]["metadata"]["labels"],
        "pod labels",
    );
    let env: BTreeMap<String, String> = kubernetes_env(&all).into_iter().collect();
    let policies: Vec<&Value> = all
        .iter()
        .filter(|(_, doc)| doc["kind"].as_str() == Some("NetworkPolicy"))
        .map(|(_, doc)| doc)
        .collect();
    for (variable, upstream_name) in [
        ("MEMGATE_MEM0__UPSTREAM", "mem0"),
        ("MEMGATE_MCP__UPSTREAM", "mcp-server"),
    ] {
        let url = url::Url::parse(&env[variable]).unwrap();
        assert_eq!(url.host_str(), Some(upstream_name), "{variable}");
        let port = url.port_or_known_default().unwrap();
        let policy = policies
            .iter()
            .find(|p| {
                p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str()
                    == Some(upstream_name)
            })
            .unwrap_or_else(|| panic!("no NetworkPolicy selects the {upstream_name} pods"));
        let types: Vec<&str> = seq(&policy["spec"]["policyTypes"], "policyTypes")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(types.contains(&"Ingress"), "{upstream_name}: {types:?}");
        let rules = seq(&policy["spec"]["ingress"], "ingress");
        assert_eq!(rules.len(), 1, "{upstream_name}: one rule, memgate's");
        let from = seq(&rules[0]["from"], "from");
        assert_eq!(from.len(), 1, "{upstream_name}: only memgate");
        let allowed = string_map(&from[0]["podSelector"]["matchLabels"], "from podSelector");
        assert!(
            !allowed.is_empty() && is_subset(&allowed, &pod_labels),
            "{upstream_name}: the rule must select memgate's pods: {allowed:?}"
        );
        assert!(
            from[0].get("namespaceSelector").is_none() && from[0].get("ipBlock").is_none(),
            "{upstream_name}: no other namespace or address"
        );
        let ports: Vec<u64> = seq(&rules[0]["ports"], "ports")
            .iter()
            .filter_map(|p| p["port"].as_u64())
            .collect();
        assert_eq!(ports, [u64::from(port)], "{upstream_name}");
    }
}

#[test]
fn kubernetes_manifests_agree_on_labels_ports_and_secrets() {
    let all = manifests();
    let deployment = manifest(&all, "Deployment");
    let service = manifest(&all, "Service");
    let monitor = manifest(&all, "ServiceMonitor");
    assert_eq!(
        monitor["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );

    let labels = string_map(&deployment["metadata"]["labels"], "Deployment labels");
    for (file, doc) in &all {
        let kind = text(&doc["kind"], file);
        assert!(
            doc["apiVersion"].is_string() && doc["metadata"]["name"].is_string(),
            "{file}: {kind}"
        );
        assert_eq!(
            string_map(&doc["metadata"]["labels"], file),
            labels,
            "{file}: {kind} should carry the same labels as the Deployment"
        );
    }
    let pod_labels = string_map(
        &deployment["spec"]["template"]["metadata"]["labels"],
        "pod labels",
    );
    let selector = string_map(
        &deployment["spec"]["selector"]["matchLabels"],
        "Deployment selector",
    );
    assert!(
        is_subset(&selector, &pod_labels),
        "kubernetes: the Deployment selects no pod of its own"
    );
    let service_selector = string_map(&service["spec"]["selector"], "Service selector");
    assert!(
        is_subset(&service_selector, &pod_labels),
        "kubernetes: the Service selects no memgate pod"
    );
    let service_labels = string_map(&service["metadata"]["labels"], "Service labels");
    let monitor_selector = string_map(
        &monitor["spec"]["selector"]["matchLabels"],
        "ServiceMonitor selector",
    );
    assert!(
        is_subset(&monitor_selector, &service_labels),
        "kubernetes: the ServiceMonitor selects no Service"
    );
    if let Some((_, pdb)) = all
        .iter()
        .find(|(_, d)| d["kind"].as_str() == Some("PodDisruptionBudget"))
    {
        let pdb_selector = string_map(&pdb["spec"]["selector"]["matchLabels"], "PDB selector");
        assert!(
            is_subset(&pdb_selector, &pod_labels),
            "kubernetes: the PodDisruptionBudget selects no pod"
        );
    }

    // Service ports lead to container ports, which are the ports memgate listens on.
    let keys = config_keys();
    let env = kubernetes_env(&all);
    for (name, _) in env.iter().filter(|(n, _)| n.starts_with("MEMGATE_")) {
        assert_config_variable(&keys, name, "deployment.yaml");
    }
    let config = check_config(Some(&container_config()), &env);
    let [mcp, mem0, admin] = listen_ports(&config);
    let container = memgate_container(deployment);
    let mut service_ports = BTreeMap::new();
    for port in seq(&service["spec"]["ports"], "Service ports") {
        let name = text(&port["name"], "Service port name").to_string();
        let target = container_port(container, &port["targetPort"]);
        assert_eq!(
            port["port"].as_u64(),
            Some(target as u64),
            "Service port {name}"
        );
        service_ports.insert(name, target);
    }
    let expected: BTreeMap<String, u16> = [
        ("mcp".into(), mcp),
        ("mem0".into(), mem0),
        ("metrics".into(), admin),
    ]
    .into();
    assert_eq!(
        service_ports, expected,
        "kubernetes: Service ports vs memgate's listeners"
    );
    for endpoint in seq(&monitor["spec"]["endpoints"], "ServiceMonitor endpoints") {
        let port = text(&endpoint["port"], "endpoint port");
        assert_eq!(
            service_ports.get(port),
            Some(&admin),
            "ServiceMonitor port {port}"
        );
        assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    }
}

#[test]
fn kubernetes_deployment_is_replicated_locked_down_and_probed_on_the_admin_port() {
    let all = manifests();
    let deployment = manifest(&all, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = memgate_container(deployment);
    let config = check_config(Some(&container_config()), &kubernetes_env(&all));
    let admin = listen_ports(&config)[2];

    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    assert!(
        get(&config, "database", "url")
            .as_str()
            .unwrap()
            .starts_with("postgres"),
        "kubernetes: replicas must share a PostgreSQL token store"
    );
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
        let http = &container[probe]["httpGet"];
        assert_eq!(http["path"].as_str(), Some(path), "{probe}");
        assert_eq!(
            container_port(container, &http["port"]),
            admin,
            "{probe} is not on the admin port"
        );
    }
    let metrics = seq(&container["ports"], "ports")
        .iter()
        .find(|p| p["name"].as_str() == Some("metrics"))
        .expect("kubernetes: no container port named metrics");
    assert_eq!(metrics["containerPort"].as_u64(), Some(admin as u64));

    let pre_stop = seq(
        &container["lifecycle"]["preStop"]["exec"]["command"],
        "preStop",
    )
    .last()
    .and_then(|s| s.as_str()?.parse::<u64>().ok())
    .unwrap_or(0);
    let grace = grace_period(&config);
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        termination >= 35 && termination > grace + pre_stop,
        "terminationGracePeriodSeconds {termination} should exceed preStop {pre_stop}s + grace {grace}s"
    );

    let pod_security = &pod["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"].as_bool(), Some(true));
    let (uid, gid) = dockerfile_user();
    assert_eq!(
        pod_security["runAsUser"].as_u64(),
        Some(uid as u64),
        "runAsUser vs the image's USER"
    );
    assert_eq!(pod_security["runAsGroup"].as_u64(), Some(gid as u64));
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    for kind in ["requests", "limits"] {
        assert!(
            container["resources"][kind]["memory"].is_string(),
            "resources.{kind}.memory"
        );
        assert!(
            !container["resources"][kind]["cpu"].is_null(),
            "resources.{kind}.cpu"
        );
    }

    // The root filesystem is read-only: the spool must be on a mounted volume.
    let volumes: BTreeSet<&str> = seq(&pod["volumes"], "volumes")
        .iter()
        .map(|v| text(&v["name"], "volume name"))
        .collect();
    let spool = get(&config, "audit", "spool_dir").as_str().unwrap();
    let mut spool_mounted = false;
    for mount in seq(&container["volumeMounts"], "volumeMounts") {
        assert!(
            volumes.contains(text(&mount["name"], "mount")),
            "mount of an undeclared volume"
        );
        spool_mounted |= Path::new(spool).starts_with(text(&mount["mountPath"], "mountPath"));
    }
    assert!(
        spool_mounted,
        "kubernetes: audit.spool_dir {spool} is on no volume"
    );
}

// ---------------------------------------------------------------------------
// A running memgate answers what the probes and health checks ask

/// The exec-form command of the Dockerfile's HEALTHCHECK.
fn dockerfile_healthcheck() -> Vec<String> {
    let healthcheck = dockerfile()
        .into_iter()
        .find(|(instruction, _)| instruction == "HEALTHCHECK")
        .expect("Dockerfile: no HEALTHCHECK")
        .1;
    let json = &healthcheck[healthcheck
        .find("CMD [")
        .expect("HEALTHCHECK CMD [exec form]")
        + 4..];
    serde_json::from_str(json).expect("HEALTHCHECK CMD is a JSON array")
}

#[test]
fn probes_and_health_checks_ask_what_a_running_memgate_answers() {
    let memgate = start_memgate();
    let all = manifests();
    let container = memgate_container(manifest(&all, "Deployment"));
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = text(&container[probe]["httpGet"]["path"], probe);
        let (status, _) = http_get(memgate.admin, path).unwrap();
        assert_eq!(status, 200, "{probe} {path}");
    }
    for endpoint in seq(
        &manifest(&all, "ServiceMonitor")["spec"]["endpoints"],
        "endpoints",
    ) {
        let path = text(&endpoint["path"], "path");
        let (status, body) = http_get(memgate.admin, path).unwrap();
        assert_eq!(status, 200, "ServiceMonitor {path}");
        // deploy/prometheus/alerts.yml pages when this one is absent.
        assert!(
            body.contains("memgate_build_info"),
            "{path} has no memgate_build_info"
        );
    }

    // One health check, in the image and in compose, and it works.
    let command = dockerfile_healthcheck();
    let compose = compose();
    let compose_test: Vec<String> = seq(&memgate_service(&compose)["healthcheck"]["test"], "test")
        .iter()
        .map(|s| text(s, "test").to_string())
        .collect();
    assert_eq!(
        compose_test.split_first(),
        Some((&"CMD".to_string(), command.as_slice())),
        "compose healthcheck vs the Dockerfile's HEALTHCHECK"
    );
    let image_admin = listen_ports(&check_config(Some(&container_config()), &[]))[2];
    let image_target = format!("/dev/tcp/127.0.0.1/{image_admin}");
    assert!(
        command.iter().any(|a| a.contains(&image_target)),
        "HEALTHCHECK is not on the admin port"
    );
    assert!(
        command.iter().any(|a| a.contains("GET /health ")),
        "HEALTHCHECK does not ask /health"
    );
    let run = |port: u16| {
        let mut args = command
            .iter()
            .map(|a| a.replace(&image_target, &format!("/dev/tcp/127.0.0.1/{port}")));
        let program = args.next().unwrap();
        Command::new(program).args(args).status().unwrap().success()
    };
    assert!(
        run(memgate.admin),
        "the health check fails against a healthy memgate"
    );
    drop(memgate);
    assert!(
        !run(free_ports::<1>()[0]),
        "the health check passes with nothing listening"
    );
}

// ---------------------------------------------------------------------------
// memgate.service

type Unit = BTreeMap<String, Vec<(String, String)>>;

fn systemd_unit() -> Unit {
    let mut unit = Unit::new();
    let mut section = None;
    for (n, line) in read("deploy/memgate.service").lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            unit.entry(name.to_string()).or_default();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("memgate.service:{}: not KEY=VALUE: {line}", n + 1));
        let section = section
            .clone()
            .expect("memgate.service: a key before any [section]");
        unit.get_mut(&section)
            .unwrap()
            .push((key.trim().to_string(), value.trim().to_string()));
    }
    unit
}

fn unit_value<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a str {
    unit.get(section)
        .and_then(|entries| entries.iter().rev().find(|(k, _)| k == key))
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("memgate.service: [{section}] {key} is missing"))
}

#[test]
fn systemd_unit_runs_memgate_unprivileged_and_stops_it_gracefully() {
    let unit = systemd_unit();
    assert_eq!(
        unit.keys().collect::<Vec<_>>(),
        ["Install", "Service", "Unit"]
    );
    for (key, expected) in [
        ("Type", "simple"),
        ("User", "memgate"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("StateDirectory", "memgate"),
        ("WorkingDirectory", "/var/lib/memgate"),
    ] {
        assert_eq!(
            unit_value(&unit, "Service", key),
            expected,
            "[Service] {key}"
        );
    }
    assert_eq!(
        unit_value(&unit, "Install", "WantedBy"),
        "multi-user.target"
    );
    let grace = grace_period(&check_config(None, &[]));
    let stop = seconds(unit_value(&unit, "Service", "TimeoutStopSec"));
    assert!(
        stop >= 35 && stop > grace,
        "TimeoutStopSec {stop}s vs the {grace}s grace period"
    );

    // ExecStart is a memgate command line that the binary accepts.
    let exec: Vec<&str> = unit_value(&unit, "Service", "ExecStart")
        .split_whitespace()
        .collect();
    assert_eq!(exec[0], "/usr/local/bin/memgate");
    let config_at = exec
        .iter()
        .position(|a| *a == "--config")
        .expect("ExecStart names --config");
    assert!(exec[config_at + 1].starts_with("/etc/memgate/"));
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("config.toml");
    std::fs::write(&empty, "").unwrap();
    let mut args: Vec<String> = exec[1..].iter().map(|a| a.to_string()).collect();
    args[config_at] = empty.display().to_string();
    assert_eq!(args.last().map(String::as_str), Some("serve"));
    args.push("--help".into());
    let out = Command::new(BIN).env_clear().args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "memgate rejects ExecStart's arguments: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed; skipping");
        return;
    }
    // verify wants ExecStart's binary to exist: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("memgate.service");
    std::fs::write(
        &unit,
        read("deploy/memgate.service").replace("/usr/local/bin/memgate", BIN),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("memgate.service"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

// ---------------------------------------------------------------------------
// Dockerfile, .dockerignore and the image's config

/// (INSTRUCTION, arguments), e.g. ("RUN", "apt-get update && ...").
type Instruction = (String, String);

/// One `FROM` and the instructions up to the next one.
struct Stage {
    name: Option<String>,
    instructions: Vec<Instruction>,
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (instruction, args) = pending
            .split_once(char::is_whitespace)
            .unwrap_or((&pending, ""));
        out.push((instruction.to_ascii_uppercase(), args.trim().to_string()));
        pending.clear();
    }
    out
}

fn dockerfile_stages() -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    for (instruction, args) in dockerfile() {
        if instruction == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                [_] => None,
                _ => panic!("Dockerfile: FROM {args}"),
            };
            stages.push(Stage {
                name,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push((instruction, args));
        }
    }
    stages
}

/// The final stage's numeric USER uid:gid.
fn dockerfile_user() -> (u32, u32) {
    let stages = dockerfile_stages();
    let user = stages
        .last()
        .unwrap()
        .instructions
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.clone())
        .expect("Dockerfile: the final stage sets no USER");
    let (uid, gid) = user.split_once(':').unwrap_or((&user, &user));
    let parse = |id: &str| {
        id.parse::<u32>().unwrap_or_else(|_| {
            panic!("Dockerfile: USER {user} is not numeric (runAsNonRoot needs numbers)")
        })
    };
    (parse(uid), parse(gid))
}

#[test]
fn dockerfile_builds_in_stages_and_runs_unprivileged() {
    let stages = dockerfile_stages();
    assert!(
        stages.len() >= 2,
        "Dockerfile: expected a builder and a final stage"
    );
    let builder = &stages[0].instructions;
    let builder_name = stages[0]
        .name
        .as_deref()
        .expect("Dockerfile: name the builder stage");
    let runs: Vec<&str> = builder
        .iter()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(
        runs.iter()
            .any(|r| r.contains("apt-get install") && r.split_whitespace().any(|w| w == "cmake")),
        "Dockerfile: the builder must install cmake (pingora builds zlib-ng with it)"
    );
    assert!(
        runs.iter()
            .any(|r| r.contains("cargo build --release --locked"))
    );

    let last = &stages.last().unwrap().instructions;
    let find = |name: &str| -> Vec<&str> {
        last.iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let (uid, _) = dockerfile_user();
    assert!(uid != 0, "Dockerfile: the final stage runs as root");
    let exposed: BTreeSet<u16> = find("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    let image_config = check_config(Some(&container_config()), &[]);
    assert_eq!(
        exposed,
        listen_ports(&image_config).into(),
        "EXPOSE vs the image's listeners"
    );
    assert_eq!(find("ENTRYPOINT"), [r#"["memgate"]"#]);
    assert_eq!(find("CMD"), [r#"["serve"]"#]);

    // The binary comes from the builder; the config file MEMGATE_CONFIG names is copied in.
    let copies = find("COPY");
    assert!(
        copies
            .iter()
            .any(|c| c.starts_with(&format!("--from={builder_name} ")) && c.contains("memgate"))
    );
    let config_path = find("ENV")
        .iter()
        .find_map(|e| e.strip_prefix("MEMGATE_CONFIG="))
        .expect("Dockerfile: ENV MEMGATE_CONFIG")
        .to_string();
    assert!(
        copies.contains(&format!("deploy/container.toml {config_path}").as_str()),
        "Dockerfile: MEMGATE_CONFIG={config_path} is not the copied deploy/container.toml"
    );
    for stage in &stages {
        for (instruction, args) in &stage.instructions {
            if instruction == "COPY" && !args.starts_with("--from") {
                let source = args.split_whitespace().next().unwrap();
                assert!(
                    repo().join(source).exists(),
                    "Dockerfile: COPY {source} does not exist"
                );
                if source != "." {
                    assert!(
                        !dockerignored(source),
                        "Dockerfile: COPY {source} is in .dockerignore"
                    );
                }
            }
        }
    }
}

#[test]
fn the_image_config_is_valid_and_listens_on_all_interfaces() {
    let keys = config_keys();
    let file: toml::Table = read("deploy/container.toml").parse().unwrap();
    for (section, entries) in &file {
        for key in entries.as_table().expect("sections").keys() {
            assert!(
                keys.get(section).is_some_and(|k| k.contains(key)),
                "deploy/container.toml: [{section}] {key} is no config key"
            );
        }
    }
    let config = check_config(Some(&container_config()), &[]);
    for listener in ["mcp", "mem0", "admin"] {
        assert!(
            get(&config, listener, "listen")
                .as_str()
                .unwrap()
                .starts_with("0.0.0.0:")
        );
    }
    // Relative paths would depend on the working directory of `docker exec`.
    let url = get(&config, "database", "url").as_str().unwrap();
    assert!(
        url.starts_with("sqlite:///") || url.starts_with("postgres"),
        "database.url {url}"
    );
    assert!(
        get(&config, "audit", "spool_dir")
            .as_str()
            .unwrap()
            .starts_with('/')
    );
}

/// Whether `.dockerignore` keeps `path` (relative to the repository) out of the
/// build context. Patterns: `*` within a path component, `**` across them.
fn dockerignored(path: &str) -> bool {
    fn matches(pattern: &[&str], path: &[&str]) -> bool {
        match (pattern.first(), path.first()) {
            (None, _) => true, // a matched directory takes everything under it
            (Some(&"**"), _) => (0..=path.len()).any(|skip| matches(&pattern[1..], &path[skip..])),
            (Some(p), Some(c)) => glob(p, c) && matches(&pattern[1..], &path[1..]),
            (Some(_), None) => false,
        }
    }
    fn glob(pattern: &str, name: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == name,
            Some((head, tail)) => {
                name.starts_with(head) && (head.len()..=name.len()).any(|i| glob(tail, &name[i..]))
            }
        }
    }
    let path: Vec<&str> = path.split('/').collect();
    let mut ignored = false;
    for line in read(".dockerignore").lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (negated, pattern) = match line.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, line),
        };
        let pattern: Vec<&str> = pattern.trim_matches('/').split('/').collect();
        if matches(&pattern, &path) {
            ignored = !negated;
        }
    }
    ignored
}

#[test]
fn dockerignore_keeps_out_build_output_and_history_but_not_sources() {
    for path in [
        ".git/HEAD",
        "target/release/memgate",
        "fuzz/target/x",
        "memgate.db",
        "deploy/.env",
    ] {
        assert!(dockerignored(path), ".dockerignore should exclude {path}");
    }
    // Everything cargo needs to build: the manifest, the lock file, every
    // declared target, the embedded migrations and the image's config.
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let mut needed = vec![
        "Cargo.toml".to_string(),
        "Cargo.lock".into(),
        "deploy/container.toml".into(),
    ];
    for kind in ["lib", "bin", "bench", "test", "example"] {
        let targets = match manifest.get(kind) {
            Some(toml::Value::Array(items)) => items.clone(),
            Some(table) => vec![table.clone()],
            None => Vec::new(),
        };
        needed.extend(
            targets
                .iter()
                .filter_map(|t| t.get("path")?.as_str().map(String::from)),
        );
    }
    for dir in ["src", "migrations"] {
        needed.extend(files_under(&repo().join(dir)).iter().map(|p| relative(p)));
    }
    for path in needed {
        assert!(repo().join(&path).exists(), "{path} does not exist");
        assert!(
            !dockerignored(&path),
            ".dockerignore excludes {path}, which the build needs"
        );
    }
}

#[test]
fn deploy_readme_covers_every_file() {
    let readme = read("deploy/README.md");
    for path in files_under(&repo().join("deploy")) {
        let name = relative(&path);
        let name = name.strip_prefix("deploy/").unwrap();
        if name == "README.md" || name == ".gitignore" {
            continue;
        }
        let file_name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            readme.contains(name) || readme.contains(file_name),
            "deploy/README.md does not mention {name}"
        );
    }
    for command in [
        "docker compose",
        "kubectl exec",
        "token create",
        "systemctl",
    ] {
        assert!(
            readme.contains(command),
            "deploy/README.md does not show `{command}`"
        );
    }
}

/// `docker-compose.per-user.yml`: memgate's templated upstream names exactly
/// the service that serves each user, and every such server is fixed to its
/// user and reachable only on the backend network.
#[test]
fn the_per_user_compose_variant_gives_each_user_the_server_memgate_names() {
    use memgate::policy::upstream_name::expand;
    let variant = yaml("deploy/docker-compose.per-user.yml");
    let env = compose_environment(&variant["services"]["memgate"], "memgate");
    let template = env
        .iter()
        .find(|(name, _)| name == "MEMGATE_MCP__UPSTREAM")
        .map(|(_, value)| value.clone())
        .expect("the variant sets MEMGATE_MCP__UPSTREAM");
    let mut users = Vec::new();
    for (name, service) in services(&variant) {
        if !name.starts_with("mcp-") || name == "mcp-server" {
            continue;
        }
        let env = compose_environment(service, &name);
        let value = |key: &str| {
            env.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{name}: no {key}"))
        };
        assert_eq!(value("PROJECT_ID_MODE"), "manual", "{name}");
        let user = value("DEFAULT_USER_ID");
        assert_eq!(
            expand(&template, &user, &user),
            format!("http://{name}:8081"),
            "{name} must be the host memgate sends {user} to"
        );
        assert_eq!(
            service["networks"].as_sequence().map(Vec::len),
            Some(1),
            "{name}"
        );
        assert_eq!(service["networks"][0], "backend", "{name}");
        assert!(
            variant["services"]["memgate"]["depends_on"][name.as_str()].is_mapping(),
            "memgate waits for {name}"
        );
        users.push(user);
    }
    assert!(users.len() >= 2, "{users:?}");
    assert!(
        variant["services"]["mcp-server"]["profiles"].is_sequence(),
        "the shared server is left out of this layout"
    );
}
