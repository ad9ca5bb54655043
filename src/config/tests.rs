use super::mcp::validate_mcp_upstream;
use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every key memgate accepts is written out in the shipped config.toml
/// (the operator's reference), with the built-in default as its value.
#[test]
fn the_shipped_config_file_lists_every_key_with_its_default() {
    let shipped: toml::Table = toml::from_str(include_str!("../../config.toml")).unwrap();
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    for (section, keys) in &defaults {
        let keys = keys.as_table().expect("sections are tables");
        let written = shipped
            .get(section)
            .and_then(|v| v.as_table())
            .unwrap_or_else(|| panic!("config.toml has no [{section}]"));
        for (key, value) in keys {
            if value.as_table().is_some_and(|t| t.is_empty()) {
                continue; // e.g. [mcp.tools]: documented as a commented example
            }
            assert_eq!(
                written.get(key),
                Some(value),
                "config.toml: {section}.{key} missing or not the default"
            );
        }
    }
}

#[test]
fn defaults_are_valid_and_match_design() {
    let c = from_parts(None, "none", &[]).unwrap();
    assert_eq!(c.database.url, "sqlite://memgate.db?mode=rwc");
    assert_eq!(c.mcp.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.mcp.upstream, "http://127.0.0.1:8081");
    assert_eq!(c.mem0.listen.to_string(), "127.0.0.1:8000");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9464");
    assert_eq!(c.auth.cache_ttl_secs, 30);
}

#[test]
fn shipped_config_file_parses_to_the_defaults() {
    let text = include_str!("../../config.toml");
    let c = from_parts(Some(text), "config.toml", &[]).unwrap();
    assert_eq!(
        toml::to_string(&c).unwrap(),
        toml::to_string(&Config::default()).unwrap()
    );
}

#[test]
fn env_overrides_use_the_key_type() {
    let c = from_parts(
        Some("[mem0]\nlisten = \"127.0.0.1:7000\"\nupstream = \"http://a:1\"\n"),
        "f",
        &env(&[
            ("MEMGATE_MEM0__UPSTREAM", "http://mem0:8000"),
            ("MEMGATE_AUTH__CACHE_TTL_SECS", "7"),
            ("MEMGATE_MCP__FORWARD_CREDENTIALS", "true"),
            ("MEMGATE_CONFIG", "ignored.toml"),
            ("OTHER", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(c.mem0.upstream, "http://mem0:8000");
    assert_eq!(c.mem0.listen.to_string(), "127.0.0.1:7000");
    assert_eq!(c.auth.cache_ttl_secs, 7);
    assert!(c.mcp.forward_credentials);
}

#[test]
fn mcp_allowed_paths_come_from_the_file_or_the_environment() {
    let c = from_parts(Some("[mcp]\nallowed_paths = [\"/health\"]\n"), "f", &[]).unwrap();
    assert_eq!(c.mcp.allowed_paths, ["/health"]);
    let c = from_parts(
        None,
        "f",
        &env(&[(
            "MEMGATE_MCP__ALLOWED_PATHS",
            r#"["/health", "/.well-known/oauth-protected-resource"]"#,
        )]),
    )
    .unwrap();
    assert_eq!(
        c.mcp.allowed_paths,
        ["/health", "/.well-known/oauth-protected-resource"]
    );
    for bad in [
        r#"["health"]"#,
        r#"["/a?b"]"#,
        r#"["/a/../b"]"#,
        "\"/health\"",
    ] {
        let err = from_parts(None, "f", &env(&[("MEMGATE_MCP__ALLOWED_PATHS", bad)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ALLOWED_PATHS") || err.contains("allowed_paths"),
            "{err}"
        );
    }
}

#[test]
fn spawn_defaults_its_upstream_and_checks_its_keys() {
    let on = "[mcp.spawn]\ncommand = \"server\"\nenv = { MEM0_USER = \"{scope}\" }";
    let c = from_parts(Some(on), "f", &[]).unwrap();
    assert_eq!(c.mcp.upstream, SPAWN_UPSTREAM);
    let spawn = c.mcp.spawn.as_ref().unwrap();
    assert_eq!(
        (
            spawn.max_processes,
            spawn.idle_secs,
            spawn.ready_timeout_secs,
            spawn.stop_grace_secs
        ),
        (32, 600, 20, 5)
    );
    assert!(c.to_masked_toml().contains("MEM0_USER = \"****\""));
    let set = format!("[mcp]\nupstream = \"http://localhost:{{port}}\"\n{on}");
    assert_eq!(
        from_parts(Some(&set), "f", &[]).unwrap().mcp.upstream,
        "http://localhost:{port}"
    );
    let stdio = format!("{on}\ntransport = \"stdio\"");
    let c = from_parts(Some(&stdio), "f", &[]).unwrap();
    assert_eq!(c.mcp.spawn.unwrap().transport, SpawnTransport::Stdio);
    assert_eq!(c.mcp.upstream, SPAWN_UPSTREAM);
    let cases: &[(&str, &str)] = &[
        ("[mcp.spawn]\nargs = [\"x\"]", "mcp.spawn.command"),
        (
            "[mcp]\nupstream = \"http://127.0.0.1:8081\"\n[mcp.spawn]\ncommand = \"s\"",
            "mcp.upstream",
        ),
        (
            "[mcp]\nupstream = \"http://{port}:80\"\n[mcp.spawn]\ncommand = \"s\"",
            "mcp.upstream",
        ),
        (
            "[mcp]\nupstream = \"http://127.0.0.1:{port}\"",
            "mcp.upstream",
        ),
        (
            "[mcp.spawn]\ncommand = \"s\"\nmax_processes = 0",
            "mcp.spawn.max_processes",
        ),
        (
            "[mcp.spawn]\ncommand = \"s\"\ninherit_env = [\"A=B\"]",
            "mcp.spawn.inherit_env",
        ),
        ("[mcp.spawn]\ncommand = \"s\"\nbogus = 1", "bogus"),
        (
            "[mcp.spawn]\ncommand = \"s\"\ntransport = \"stdio\"\nargs = [\"--port={port}\"]",
            "mcp.spawn.args",
        ),
        (
            "[mcp]\nupstream = \"http://127.0.0.1:8081\"\n[mcp.spawn]\ncommand = \"s\"\ntransport = \"stdio\"",
            "mcp.upstream",
        ),
    ];
    for (text, key) in cases {
        let err = from_parts(Some(text), "f", &[]).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err:?} should name {key}");
    }
}

#[test]
fn errors_name_the_key() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "[mcp]\nlisten = \"nope\"\nupstream = \"http://a:1\"",
            &[],
            "mcp.listen",
        ),
        ("[auth]\ncache_ttl_secs = \"x\"", &[], "auth.cache_ttl_secs"),
        ("[auth]\nbogus = 1", &[], "auth"),
        (
            "",
            &[("MEMGATE_AUTH__CACHE_TTL_SECS", "soon")],
            "MEMGATE_AUTH__CACHE_TTL_SECS",
        ),
        ("", &[("MEMGATE_AUTH__NOPE", "1")], "MEMGATE_AUTH__NOPE"),
        (
            "",
            &[("MEMGATE_MEM0__UPSTREAM", "ftp://x")],
            "mem0.upstream",
        ),
        (
            "",
            &[("MEMGATE_DATABASE__URL", "mysql://x")],
            "database.url",
        ),
        (
            "",
            &[("MEMGATE_ADMIN__LISTEN", "127.0.0.1:8000")],
            "admin.listen",
        ),
        ("", &[("MEMGATE_SERVER__THREADS", "0")], "server.threads"),
    ];
    for (text, vars, key) in cases {
        let err = from_parts(Some(text), "f", &env(vars))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{err:?} should name {key}");
    }
}

#[test]
fn other_memgate_variables_are_not_overrides_and_near_misses_are_named() {
    let vars = env(&[
        ("MEMGATE_TEST_PG", "postgres://postgres@127.0.0.1:5432"),
        ("MEMGATE_BIN", "/x/memgate"),
        ("MEMGATE_MEM0_UPSTREAM", "http://mem0:9"),
        ("MEMGATE_AUTH_CACHE_TTL_SECS", "7"),
    ]);
    let c = from_parts(None, "f", &vars).unwrap();
    assert_eq!(c.mem0.upstream, Config::default().mem0.upstream);
    assert_eq!(c.auth.cache_ttl_secs, Config::default().auth.cache_ttl_secs);
    let warnings = near_miss_overrides(&vars);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("MEMGATE_MEM0_UPSTREAM")
            && warnings[0].contains("MEMGATE_MEM0__UPSTREAM")
    );
    assert!(warnings[1].contains("MEMGATE_AUTH__CACHE_TTL_SECS"));
    assert!(
        warnings.iter().all(|w| !w.contains("mem0:9")),
        "values may be secrets"
    );
    // A SECTION__KEY name is an override, so a wrong key still stops memgate.
    assert!(from_parts(None, "f", &env(&[("MEMGATE_AUTH__NOPE", "1")])).is_err());
}

#[test]
fn time_spans_are_bounded_to_a_hundred_years() {
    for (text, key) in [
        (
            "[audit]\nretention_days = 4294967295",
            "audit.retention_days",
        ),
        (
            "[mcp]\nsession_idle_secs = 9000000000000000",
            "mcp.session_idle_secs",
        ),
        (
            "[redis]\ntimeout_ms = 9000000000000000000",
            "redis.timeout_ms",
        ),
        (
            "[mcp.spawn]\ncommand = \"x\"\nidle_secs = 9000000000000000",
            "mcp.spawn.idle_secs",
        ),
    ] {
        let err = from_parts(Some(text), "f", &[]).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains("100 years"), "{err}");
    }
    let c = from_parts(Some("[audit]\nretention_days = 36500"), "f", &[]).unwrap();
    assert_eq!(c.audit.retention_days, 36_500);
}

#[test]
fn masks_database_password() {
    let mut c = Config::default();
    c.database.url = "postgres://memgate:s3cret@db:5432/memgate".into();
    let shown = c.to_masked_toml();
    assert!(!shown.contains("s3cret"));
    assert!(shown.contains("memgate:****@db"));
}

#[test]
fn masks_every_credential_in_urls() {
    for (url, secret, shown) in [
        (
            "redis://:pw-r1@redis:6379/0",
            "pw-r1",
            "redis://:****@redis:6379/0",
        ),
        ("redis://u:pw-r2@redis", "pw-r2", "redis://u:****@redis"),
        (
            "postgres://db/m?user=u&password=pw-q&sslmode=require",
            "pw-q",
            "postgres://db/m?user=u&password=****&sslmode=require",
        ),
        (
            "http://:pw-t@mcp-{scope}:8080",
            "pw-t",
            "http://:****@mcp-{scope}:8080/",
        ),
        (
            "postgres://u:pw-x@h:5432:1/db",
            "pw-x",
            "postgres://****@h:5432:1/db",
        ),
    ] {
        let masked = mask_url_password(url);
        assert!(!masked.contains(secret), "{masked}");
        assert_eq!(masked, shown);
    }
    for plain in [
        "sqlite://memgate.db?mode=rwc",
        "redis://127.0.0.1:6379",
        "http://mem0:8000",
    ] {
        assert_eq!(mask_url_password(plain), plain);
    }
    let mut c = Config::default();
    c.redis.url = "redis://:pw-redis@redis:6379/0".into();
    c.database.url = "postgres://db/m?password=pw-db".into();
    let shown = c.to_masked_toml();
    assert!(
        !shown.contains("pw-redis") && !shown.contains("pw-db"),
        "{shown}"
    );
}

#[test]
fn parses_upstreams() {
    let u = Upstream::parse("k", "https://mem0.internal").unwrap();
    assert_eq!(
        (u.host.as_str(), u.port, u.tls),
        ("mem0.internal", 443, true)
    );
    assert!(Upstream::parse("k", "http://x:1/prefix").is_err());
    assert!(Upstream::parse("k", "http://u:p@x:1").is_err());
    for good in [
        "http://mcp-{scope}:8080",
        "http://{user}.mcp.internal:8080",
        "https://{scope}-{user}.svc",
    ] {
        assert!(validate_mcp_upstream(good).is_ok(), "{good}");
    }
    for bad in [
        "http://mcp:8080/{scope}",
        "http://mcp:{scope}",
        "http://{scope}@mcp:8080",
        "http://mcp:8080/?u={user}",
        "http://mcp:8080/#{scope}",
        "{scope}://mcp:8080",
        "http://mcp-{project}:8080",
        "http://mcp-{scope:8080",
    ] {
        let err = validate_mcp_upstream(bad).unwrap_err().to_string();
        assert!(err.contains("mcp.upstream"), "{bad}: {err}");
    }
}

#[test]
fn upstream_headers_are_read_from_strings_the_environment_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "from-file\n").unwrap();
    let text = format!(
        "[mem0]\nupstream_headers = {{ \"X-API-Key\" = {{ env = \"MEM0_KEY\" }}, \
         \"X-Other\" = {{ file = {key_file:?} }}, \"X-Plain\" = \"literal-secret\" }}\n\
         [mcp]\npreserve_host = true\n"
    );
    let c = from_parts(Some(&text), "f", &[]).unwrap();
    assert!(c.mcp.preserve_host && !c.mem0.preserve_host);
    let env = |var: &str| (var == "MEM0_KEY").then(|| "from-env".to_string());
    let resolved = resolve_upstream_headers("mem0", &c.mem0.upstream_headers, env).unwrap();
    let shown: Vec<(&str, &str)> = resolved
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    assert_eq!(
        shown,
        [
            ("x-api-key", "from-env"),
            ("x-other", "from-file"),
            ("x-plain", "literal-secret")
        ]
    );
    // Secrets show neither in Debug output nor in check-config's TOML.
    let debug = format!("{c:?} {:?}", c.mem0.listener());
    assert!(!debug.contains("literal-secret"), "{debug}");
    let masked = c.to_masked_toml();
    assert!(
        !masked.contains("literal-secret") && masked.contains("MEM0_KEY"),
        "{masked}"
    );
    assert!(
        from_parts(Some(&masked), "f", &[]).is_ok(),
        "the masked form reads back"
    );

    // A missing variable or file names the key, never a value.
    let err = resolve_upstream_headers("mem0", &c.mem0.upstream_headers, |_| None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "mem0.upstream_headers.X-API-Key: environment variable MEM0_KEY is not set"
    );
    std::fs::remove_file(&key_file).unwrap();
    let err = resolve_upstream_headers("mem0", &c.mem0.upstream_headers, env)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("mem0.upstream_headers.X-Other: cannot read file"),
        "{err}"
    );
    let bad = |var: &str| (var == "MEM0_KEY").then(|| "a\r\nx-evil: 1".to_string());
    let err = resolve_upstream_headers("mem0", &c.mem0.upstream_headers, bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("X-API-Key") && !err.contains("evil"), "{err}");
}

#[test]
fn upstream_header_names_and_values_are_checked_when_loading() {
    for (table, key) in [
        ("{ \"bad name\" = \"v\" }", "mcp.upstream_headers.bad name"),
        ("{ Host = \"v\" }", "mcp.upstream_headers.Host"),
        (
            "{ \"Content-Length\" = \"1\" }",
            "mcp.upstream_headers.Content-Length",
        ),
        ("{ \"X-A\" = \"\" }", "mcp.upstream_headers.X-A"),
        ("{ \"X-A\" = \"a\\nb\" }", "mcp.upstream_headers.X-A"),
        ("{ \"X-A\" = { env = \"\" } }", "mcp.upstream_headers.X-A"),
        (
            "{ \"X-A\" = \"1\", \"x_a\" = \"2\" }",
            "mcp.upstream_headers.x_a",
        ),
        ("{ \"X-A\" = { nope = \"x\" } }", "mcp.upstream_headers"),
        ("{ \"X-A\" = 1 }", "mcp.upstream_headers"),
    ] {
        let err = from_parts(
            Some(&format!("[mcp]\nupstream_headers = {table}")),
            "f",
            &[],
        )
        .unwrap_err()
        .to_string();
        // Named where the file sets it: the header's line and column.
        assert!(err.starts_with("f:2:"), "{table}: {err}");
        assert!(err.contains(&format!(" {key}")), "{table}: {err}");
    }
    // The environment can set the whole table, in TOML's inline form.
    let c = from_parts(
        None,
        "f",
        &env(&[
            (
                "MEMGATE_MEM0__UPSTREAM_HEADERS",
                "{ \"X-API-Key\" = { env = \"MEM0_API_KEY\" } }",
            ),
            ("MEMGATE_MEM0__PRESERVE_HOST", "true"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.mem0.upstream_headers["X-API-Key"],
        HeaderSource::Env {
            env: "MEM0_API_KEY".into()
        }
    );
    assert!(c.mem0.preserve_host);
    let err = from_parts(
        None,
        "f",
        &env(&[("MEMGATE_MEM0__UPSTREAM_HEADERS", "X-API-Key=abc")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("MEMGATE_MEM0__UPSTREAM_HEADERS") && !err.contains("abc"),
        "{err}"
    );
}

#[test]
fn secret_guard_rules_are_checked_when_loading() {
    let c = from_parts(
        Some(
            "[secret_guard]\nmode = \"refuse\"\n[secret_guard.rules.internal_key]\n\
             pattern = \"ik_[a-z0-9]{32}\"\nallow = [\"^ik_0+$\"]\n[secret_guard.rules.jwt]\nenabled = false\n",
        ),
        "f",
        &[],
    )
    .unwrap();
    assert_eq!(c.secret_guard.mode, GuardMode::Refuse);
    assert!(!c.secret_guard.rules["jwt"].enabled);
    let c = from_parts(None, "f", &env(&[("MEMGATE_SECRET_GUARD__MODE", "off")])).unwrap();
    assert_eq!(c.secret_guard.mode, GuardMode::Off);
    let cases: &[(&str, &str)] = &[
        ("[secret_guard]\nmode = \"block\"", "secret_guard.mode"),
        (
            "[secret_guard.rules.mine]\npattern = \"ik_(\"",
            "secret_guard.rules.mine.pattern",
        ),
        (
            "[secret_guard.rules.mine]\npattern = \"ik_[a-z]{8}\"\nallow = [\"\"]",
            "secret_guard.rules.mine.allow",
        ),
        (
            "[secret_guard.rules.My-Rule]\npattern = \"ik_[a-z]{8}\"",
            "secret_guard.rules.My-Rule",
        ),
        (
            "[secret_guard.rules.github_token]\npattern = \"gh_[a-z]{8}\"",
            "secret_guard.rules.github_token.pattern",
        ),
        (
            "[secret_guard.rules.mine]\nallow = [\"x\"]",
            "secret_guard.rules.mine.pattern",
        ),
        (
            "[secret_guard.rules.mine]\npattern = \"x\"\nenable = true",
            "secret_guard.rules.mine",
        ),
    ];
    for (text, key) in cases {
        let err = from_parts(Some(text), "f", &[]).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err:?} should name {key}");
    }
    let err = from_parts(None, "f", &env(&[("MEMGATE_SECRET_GUARD__MODE", "block")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("secret_guard.mode") || err.contains("SECRET_GUARD__MODE"),
        "{err}"
    );
}
