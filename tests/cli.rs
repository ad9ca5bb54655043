//! The `memgate` command line against real stores: token lifecycle, prefix
//! rules, confirmation, config errors.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

/// A config for `db`, whose store is created (only `migrate` and `serve` may).
fn config_for(db: &TestDb, dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, format!("[database]\nurl = {:?}\n", db.url)).unwrap();
    ok(&cli(&path, &["migrate"]));
    path
}

/// `memgate args…` in `dir` with no config file named and none of the
/// environment's `MEMGATE_*` settings, plus `env`.
fn run_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("MEMGATE_") {
            command.env_remove(name);
        }
    }
    command
        .current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_lifecycle_on_both_backends() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_for(&db, &dir);

        let text = ok(&cli(
            &cfg,
            &[
                "token",
                "create",
                "--user-id",
                "alice",
                "--name",
                "Alice",
                "--email",
                "a@example.com",
            ],
        ));
        let token_line = text
            .lines()
            .find(|l| l.starts_with("Token: "))
            .expect("Token: line");
        let token = token_line.trim_start_matches("Token: ").to_string();
        assert!(memgate::token::is_well_formed(&token), "{token}");

        let created: Value = serde_json::from_str(&ok(&cli(
            &cfg,
            &[
                "token",
                "create",
                "--user-id",
                "bob",
                "--permissions",
                "read",
                "--expires-days",
                "0",
                "--json",
            ],
        )))
        .unwrap();
        for key in ["token", "prefix", "user_id", "permissions", "expires_at"] {
            assert!(created.get(key).is_some(), "{key} missing from {created}");
        }
        assert_eq!(created["permissions"], serde_json::json!(["read"]));
        assert_eq!(created["expires_at"], Value::Null);

        // Only the hash is stored; the list never shows a token.
        let listed = ok(&cli(&cfg, &["token", "list", "--json"]));
        assert!(!listed.contains(&token) && !listed.contains(created["token"].as_str().unwrap()));
        let list: Vec<Value> = serde_json::from_str(&listed).unwrap();
        assert_eq!(list.len(), 2);
        for key in [
            "prefix",
            "user_id",
            "name",
            "email",
            "permissions",
            "status",
            "created_at",
            "last_used_at",
            "expires_at",
        ] {
            assert!(list[0].get(key).is_some(), "{key} missing from {}", list[0]);
        }
        assert_eq!(list[0]["status"], "active");
        let store = db.store().await;
        let stored = store
            .token_by_hash(&memgate::token::hash_hex(&token))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.token_hash.len(), 64);
        assert_eq!(stored.prefix, &token[..12]);
        let every = format!("{:?}", store.tokens(None).await.unwrap());
        assert!(!every.contains(&token[12..]), "a token secret is stored");

        let bob_only: Vec<Value> = serde_json::from_str(&ok(&cli(
            &cfg,
            &["token", "list", "--user-id", "bob", "--json"],
        )))
        .unwrap();
        assert_eq!(bob_only.len(), 1);

        // Destructive commands need --yes when not on a terminal.
        let prefix = &token[..12];
        assert!(err(&cli(&cfg, &["token", "revoke", prefix])).contains("--yes"));
        assert!(err(&cli(&cfg, &["token", "delete", prefix])).contains("--yes"));
        ok(&cli(&cfg, &["token", "revoke", prefix, "--yes"]));
        let list: Vec<Value> = serde_json::from_str(&ok(&cli(
            &cfg,
            &["token", "list", "--user-id", "alice", "--json"],
        )))
        .unwrap();
        assert_eq!(list[0]["status"], "revoked");
        ok(&cli(&cfg, &["token", "enable", prefix]));

        let rotated: Value =
            serde_json::from_str(&ok(&cli(&cfg, &["token", "rotate", prefix, "--json"]))).unwrap();
        assert_eq!(rotated["revoked_prefix"], prefix);
        assert_eq!(rotated["user_id"], "alice");
        assert_ne!(rotated["token"], token.as_str());

        ok(&cli(&cfg, &["token", "delete", prefix, "--yes"]));
        let list: Vec<Value> = serde_json::from_str(&ok(&cli(
            &cfg,
            &["token", "list", "--user-id", "alice", "--json"],
        )))
        .unwrap();
        assert_eq!(list.len(), 1, "only the rotated token is left");
        assert!(err(&cli(&cfg, &["token", "revoke", prefix, "--yes"])).contains("no token"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_prefix_is_refused_and_the_matches_listed() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    for suffix in ["1111", "2222"] {
        store
            .insert_token(&memgate::store::NewToken {
                token_hash: memgate::token::hash_hex(suffix),
                prefix: format!("mcp_AAAA{suffix}"),
                user_id: format!("user{suffix}"),
                name: None,
                email: None,
                permissions: memgate::identity::Permissions::READ_WRITE,
                created_at: chrono::Utc::now(),
                created_by: None,
                expires_at: None,
                rate_limit_rps: None,
            })
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for(&db, &dir);
    let message = err(&cli(&cfg, &["token", "revoke", "mcp_AAAA", "--yes"]));
    assert!(
        message.contains("mcp_AAAA1111") && message.contains("mcp_AAAA2222"),
        "{message}"
    );
    // Nothing was revoked.
    assert!(store.tokens(None).await.unwrap().iter().all(|t| t.enabled));
    ok(&cli(&cfg, &["token", "revoke", "mcp_AAAA2", "--yes"]));
    let tokens = store.tokens(None).await.unwrap();
    assert!(
        tokens
            .iter()
            .any(|t| t.prefix == "mcp_AAAA2222" && !t.enabled)
    );
    assert!(
        tokens
            .iter()
            .any(|t| t.prefix == "mcp_AAAA1111" && t.enabled)
    );
    // `_` is a token character, not a wildcard.
    assert!(err(&cli(&cfg, &["token", "revoke", "mcp_A_AA", "--yes"])).contains("no token"));
}

#[test]
fn bad_input_exits_non_zero_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[database]\nurl = \"sqlite://x.db?mode=rwc\"\n[mem0]\nlisten = \"not an address\"\n",
    )
    .unwrap();
    let message = err(&cli(&path, &["check-config"]));
    assert!(message.contains("mem0.listen"), "{message}");
    // serve refuses before binding anything.
    let message = err(&cli(&path, &["serve"]));
    assert!(message.contains("mem0.listen"), "{message}");

    let missing = dir.path().join("absent.toml");
    assert!(err(&cli(&missing, &["check-config"])).contains("absent.toml"));

    std::fs::write(
        &path,
        format!(
            "[database]\nurl = \"sqlite://{}/t.db?mode=rwc\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    ok(&cli(&path, &["migrate"]));
    assert!(
        err(&cli(
            &path,
            &[
                "token",
                "create",
                "--user-id",
                "alice",
                "--permissions",
                "root"
            ]
        ))
        .contains("--permissions")
    );
    assert!(err(&cli(&path, &["token", "create", "--user-id", " alice"])).contains("--user-id"));
    assert!(err(&cli(&path, &["token", "revoke", "abc", "--yes"])).contains("prefix"));

    let unreachable = dir.path().join("pg.toml");
    std::fs::write(
        &unreachable,
        format!(
            "[database]\nurl = \"postgres://postgres@127.0.0.1:{}/x\"\nconnect_timeout_secs = 1\n",
            free_port()
        ),
    )
    .unwrap();
    let message = err(&cli(&unreachable, &["token", "list"]));
    assert!(message.contains("cannot open the store"), "{message}");
    assert_eq!(
        message.trim().lines().count(),
        1,
        "one-line reason: {message}"
    );
}

#[test]
fn check_config_masks_secrets_and_reports_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[database]\nurl = \"postgres://memgate:hunter2@db:5432/memgate\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .env("MEMGATE_MEM0__UPSTREAM", "http://mem0:8000")
        .output()
        .unwrap();
    let text = ok(&out);
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("memgate:****@db"));
    assert!(text.contains("upstream = \"http://mem0:8000\""));
}

#[test]
fn memgate_variables_that_are_not_overrides_do_not_stop_memgate() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(
        dir.path(),
        &["check-config"],
        &[
            ("MEMGATE_TEST_PG", "postgres://postgres@127.0.0.1:5432"),
            ("MEMGATE_MEM0_UPSTREAM", "http://mem0:9"),
        ],
    );
    let text = ok(&out);
    assert!(
        !text.contains("mem0:9"),
        "a near-miss is not applied: {text}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("MEMGATE_MEM0_UPSTREAM") && stderr.contains("MEMGATE_MEM0__UPSTREAM"),
        "a near-miss is warned about, with the right name: {stderr}"
    );
    assert!(!stderr.contains("MEMGATE_TEST_PG"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_serve_and_migrate_create_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let db_file = dir.path().join("memgate.db");
    for args in [
        &["token", "list"][..],
        &["token", "create", "--user-id", "alice"],
        &["audit"],
        &["stats", "alice"],
        &["user", "export", "--user-id", "alice"],
    ] {
        let message = err(&run_in(dir.path(), args, &[]));
        assert!(
            message.contains("no store at sqlite://memgate.db")
                && message.contains("memgate migrate")
                && message.trim().lines().count() == 1,
            "{args:?}: {message}"
        );
        assert!(!db_file.exists(), "{args:?} created the store");
    }
    ok(&run_in(dir.path(), &["check-config"], &[]));
    assert!(!db_file.exists(), "check-config opened the store");
    ok(&run_in(dir.path(), &["migrate"], &[]));
    assert!(db_file.exists());
    assert_eq!(
        ok(&run_in(dir.path(), &["token", "list"], &[])).trim(),
        "No tokens."
    );

    // A PostgreSQL database without memgate's tables is not a store either
    // (and the password in its URL is not shown).
    let pg = TestDb::new(Backend::Postgres).await;
    let url = pg.url.replacen("postgres@", "postgres:hunter2@", 1);
    let env = [("MEMGATE_DATABASE__URL", url.as_str())];
    let message = err(&run_in(dir.path(), &["token", "list"], &env));
    assert!(
        message.contains("no store at") && message.contains("memgate migrate"),
        "{message}"
    );
    assert!(
        !message.contains("hunter2") && message.contains("****"),
        "{message}"
    );
    ok(&run_in(dir.path(), &["migrate"], &env));
    ok(&run_in(dir.path(), &["token", "list"], &env));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_shows_the_newest_events_and_says_when_rows_were_cut() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_for(&db, &dir);
        let now = chrono::Utc::now();
        // One failure an hour, 1 to 5 hours ago: reason "h1" … "h5".
        let events: Vec<_> = (1..=5)
            .map(|h| {
                let mut e = memgate::audit::AuditEvent::new("auth_failure", false);
                e.time = now - chrono::Duration::hours(h);
                e.reason = Some(format!("h{h}"));
                e
            })
            .collect();
        db.store().await.insert_audit(&events).await.unwrap();
        let reasons = |args: &[&str]| {
            let mut all = vec!["audit", "--event", "auth_failure", "--json"];
            all.extend_from_slice(args);
            let out = cli(&cfg, &all);
            let rows: Vec<Value> = serde_json::from_str(&ok(&out)).unwrap();
            let reasons: Vec<String> = rows
                .iter()
                .map(|r| r["reason"].as_str().unwrap().to_string())
                .collect();
            (reasons, String::from_utf8_lossy(&out.stderr).to_string())
        };

        let (shown, note) = reasons(&["--limit", "2"]);
        assert_eq!(shown, ["h1", "h2"], "{backend:?}: newest first");
        assert!(
            note.contains("showing the newest 2 of at least 3 events; use --limit or --since"),
            "{backend:?}: {note}"
        );
        let (shown, note) = reasons(&[]);
        assert_eq!(shown, ["h1", "h2", "h3", "h4", "h5"], "{backend:?}");
        assert!(
            !note.contains("showing"),
            "{backend:?}: nothing was cut: {note}"
        );
        let (shown, _) = reasons(&["--limit", "2", "--oldest-first"]);
        assert_eq!(shown, ["h5", "h4"], "{backend:?}");
        let (shown, note) = reasons(&["--since", "150m"]);
        assert_eq!(shown, ["h1", "h2"], "{backend:?}");
        assert!(!note.contains("showing"), "{backend:?}: {note}");
        let until = (now - chrono::Duration::minutes(150)).to_rfc3339();
        let (shown, _) = reasons(&["--since", "270m", "--until", &until]);
        assert_eq!(shown, ["h3", "h4"], "{backend:?}");
        let (shown, _) = reasons(&["--days", "1", "--until", "150m"]);
        assert_eq!(shown, ["h3", "h4", "h5"], "{backend:?}");
        assert!(err(&cli(&cfg, &["audit", "--since", "1h", "--until", "2h"])).contains("--until"));
    }
}

/// Secrets that must never appear in anything memgate prints or logs.
const SECRETS: [&str; 5] = [
    "redis-pw-1",
    "db-pw-1",
    "db-pw-2",
    "hdr-secret-1",
    "key-secret-1",
];

fn assert_masked(what: &str, out: &std::process::Output) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows {secret}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_masked_wherever_they_are_printed_or_logged() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot-a-cert\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nkey-secret-1\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[mem0]\nupstream_headers = { \"X-API-Key\" = \"hdr-secret-1\" }\n",
    )
    .unwrap();
    let closed = free_port();
    let redis = format!("redis://:redis-pw-1@127.0.0.1:{closed}/0");
    let database = format!("postgres://u:db-pw-1@127.0.0.1:{closed}/m?password=db-pw-2");
    // serve must get as far as the store (or TLS), whatever else listens here.
    let listen = free_ports::<3>().map(|port| format!("127.0.0.1:{port}"));
    let env = [
        ("MEMGATE_MCP__LISTEN", listen[0].as_str()),
        ("MEMGATE_MEM0__LISTEN", listen[1].as_str()),
        ("MEMGATE_ADMIN__LISTEN", listen[2].as_str()),
        ("MEMGATE_REDIS__URL", redis.as_str()),
        ("MEMGATE_RATE_LIMIT__BACKEND", "redis"),
        ("MEMGATE_DATABASE__URL", database.as_str()),
        ("MEMGATE_DATABASE__CONNECT_TIMEOUT_SECS", "1"),
    ];

    let out = run_in(dir.path(), &["check-config"], &env);
    let text = ok(&out);
    assert!(
        text.contains("redis://:****@127.0.0.1") && text.contains("u:****@127.0.0.1"),
        "{text}"
    );
    assert!(text.contains("password=****"), "{text}");
    assert_masked("check-config", &out);

    // The store cannot be reached: the errors name it, masked.
    for args in [&["token", "list"][..], &["migrate"], &["serve"]] {
        let out = run_in(dir.path(), args, &env);
        assert!(err(&out).contains("u:****@127.0.0.1"), "{args:?}");
        assert_masked(&format!("{args:?}"), &out);
    }

    // A TLS key that does not load: the error names the file, never its contents.
    let tls = [
        env[0],
        env[1],
        env[2],
        ("MEMGATE_TLS__CERT", cert.to_str().unwrap()),
        ("MEMGATE_TLS__KEY", key.to_str().unwrap()),
        ("MEMGATE_DATABASE__URL", "sqlite://memgate.db?mode=rwc"),
    ];
    let out = run_in(dir.path(), &["serve"], &tls);
    assert!(!out.status.success());
    assert_masked("serve with a bad TLS key", &out);

    // A running server logs which store and Redis it uses, masked, and
    // Redis being unreachable.
    let db = TestDb::new(Backend::Postgres).await;
    let upstream = Upstream::start().await;
    let mut cfg = MemgateConfig::new(
        &db.url.replacen("postgres@", "postgres:db-pw-1@", 1),
        &upstream.url(),
    );
    cfg.rate_limit =
        "backend = \"redis\"\nper_token_rps = 100\nfailed_auth_per_ip_per_min = 1000000".into();
    cfg.extra = format!("[redis]\nurl = {redis:?}\ntimeout_ms = 200\n");
    let gate = Memgate::start(cfg).await;
    let token = gate.create_token("alice", &[]);
    let status = reqwest::Client::new()
        .get(gate.mem0_url("/memories"))
        .header("X-MCP-Token", token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "local limits when Redis is down");
    let log = gate.log();
    assert!(
        log.contains("store ready") && log.contains("postgres:****@"),
        "{log}"
    );
    assert!(log.contains("redis://:****@127.0.0.1"), "{log}");
    assert!(log.contains("Redis unreachable"), "{log}");
    for secret in SECRETS {
        assert!(!log.contains(secret), "the serve log shows {secret}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_plaintext_tokens_are_imported_as_hashes_and_keep_working() {
    use sqlx::Connection;
    let legacy = TestDb::new(Backend::Postgres).await;
    let mut conn = sqlx::PgConnection::connect(&legacy.url).await.unwrap();
    // The Mem0 MCP Server stack's table, plaintext tokens and all.
    sqlx::query(
        "CREATE TABLE mcp_auth_tokens (token TEXT PRIMARY KEY, user_id TEXT NOT NULL, \
         user_email TEXT, display_name TEXT, enabled BOOLEAN DEFAULT TRUE, \
         created_at TIMESTAMP DEFAULT NOW(), last_used_at TIMESTAMP, expires_at TIMESTAMP, \
         created_by TEXT, permissions TEXT[] DEFAULT '{read,write}')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let alice = memgate::token::generate().unwrap();
    let bob = memgate::token::generate().unwrap();
    for (token, user, enabled) in [
        (&alice, "alice", true),
        (&bob, "bob", false),
        (&"not-a-token".to_string(), "carol", true),
    ] {
        sqlx::query("INSERT INTO mcp_auth_tokens (token, user_id, user_email, enabled, created_by) VALUES ($1, $2, $3, $4, 'mcp-token.py')")
            .bind(token)
            .bind(user)
            .bind(format!("{user}@example.com"))
            .bind(enabled)
            .execute(&mut conn)
            .await
            .unwrap();
    }

    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let gate = Memgate::start(MemgateConfig::new(&db.url, &upstream.url())).await;
    let text = ok(&gate.cli(&["token", "import-legacy", "--from", &legacy.url]));
    assert!(text.contains("Imported 2 token(s)"), "{text}");
    assert!(
        text.contains("1 skipped") && text.contains("row 3"),
        "{text}"
    );
    assert!(
        text.contains("DELETE FROM mcp_auth_tokens WHERE token LIKE 'mcp\\_%'")
            && !text.contains("DROP TABLE"),
        "the stack's server still reads its table: {text}"
    );
    assert!(
        !text.contains("not-a-token"),
        "a skipped value is never printed"
    );

    let status = |token: String| {
        let url = gate.mem0_url("/memories");
        async move {
            reqwest::Client::new()
                .get(url)
                .header("X-MCP-Token", token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        status(alice.clone()).await,
        200,
        "the old token works through memgate"
    );
    assert_eq!(
        status(bob.clone()).await,
        401,
        "a disabled old token stays disabled"
    );

    // Running it again changes nothing.
    let again = ok(&gate.cli(&["token", "import-legacy", "--from", &legacy.url, "--json"]));
    let v: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(v["imported"], 0);
    assert_eq!(v["already_present"], 2);
    let stored = format!("{:?}", db.store().await.tokens(None).await.unwrap());
    assert!(
        !stored.contains(&alice[12..]) && !stored.contains(&bob[12..]),
        "only hashes are stored"
    );
    let listed: Vec<Value> =
        serde_json::from_str(&ok(&gate.cli(&["token", "list", "--json"]))).unwrap();
    let alice_row = listed.iter().find(|t| t["user_id"] == "alice").unwrap();
    assert_eq!(alice_row["email"], "alice@example.com");
    assert_eq!(
        alice_row["permissions"],
        serde_json::json!(["read", "write"])
    );
}

/// Every configuration error is one line that says what is wrong, where
/// (`file:line:column`, or the key or variable) and what to do about it.
#[test]
fn config_errors_are_one_line_with_what_where_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let missing = dir.path().join("absent.toml");
    /// (config file, environment, what the message must contain)
    type Case<'a> = (std::path::PathBuf, Vec<(&'a str, &'a str)>, Vec<String>);
    let cases: Vec<Case> = vec![
        (
            missing.clone(),
            vec![],
            vec![
                format!("{}: cannot read", missing.display()),
                "--config".into(),
            ],
        ),
        (
            write("unknown.toml", "[server]\nthreads = 2\nbogus = 1\n"),
            vec![],
            vec![
                "unknown.toml:3:1: server.bogus".into(),
                "keepalive_idle_secs".into(),
                "remove it or correct the spelling".into(),
            ],
        ),
        (
            write("syntax.toml", "[database]\nurl = \"x\"\n[server\n"),
            vec![],
            vec!["syntax.toml:3:8: not valid TOML".into(), "correct".into()],
        ),
        (
            write("type.toml", "[server]\nmax_connections = \"many\"\n"),
            vec![],
            vec![
                "type.toml:2:1: server.max_connections".into(),
                "a whole number".into(),
            ],
        ),
        (
            write(
                "tls.toml",
                "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
            ),
            vec![],
            vec![
                "tls.toml:2:1: tls.cert".into(),
                "/nonexistent/cert.pem".into(),
                "give the path of a PEM file".into(),
            ],
        ),
        (
            write("empty.toml", ""),
            vec![("MEMGATE_SERVER__NOPE", "1")],
            vec![
                "MEMGATE_SERVER__NOPE".into(),
                "server.nope".into(),
                "unset the variable".into(),
            ],
        ),
    ];
    for (config, env, wanted) in cases {
        let mut command = std::process::Command::new(BIN);
        command
            .arg("--config")
            .arg(&config)
            .arg("check-config")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null());
        let message = err(&command.output().unwrap());
        assert_eq!(message.trim().lines().count(), 1, "one line: {message}");
        assert!(!message.contains("os error"), "{message}");
        for part in &wanted {
            assert!(
                message.contains(part.as_str()),
                "{part:?} missing: {message}"
            );
        }
    }
}

/// Arguments that would do nothing are refused instead of ignored: `--yes`
/// on `token enable` (which asks nothing), an event kind memgate never
/// writes, `stats` for a user memgate has never seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_that_would_do_nothing_are_refused() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_for(&db, &dir);
    let created: Value = serde_json::from_str(&ok(&cli(
        &cfg,
        &["token", "create", "--user-id", "alice", "--json"],
    )))
    .unwrap();
    let prefix = created["prefix"].as_str().unwrap();
    ok(&cli(&cfg, &["token", "revoke", prefix, "--yes"]));

    let message = err(&cli(&cfg, &["token", "enable", prefix, "--yes"]));
    assert!(message.contains("--yes"), "{message}");
    ok(&cli(&cfg, &["token", "enable", prefix]));

    let message = err(&cli(&cfg, &["audit", "--event", "bogus"]));
    assert!(
        message.contains("bogus") && message.contains("auth_failure"),
        "the valid kinds are listed: {message}"
    );
    let rows: Vec<Value> = serde_json::from_str(&ok(&cli(
        &cfg,
        &["audit", "--event", "token_admin", "--json"],
    )))
    .unwrap();
    assert_eq!(rows.len(), 3, "create, revoke, enable: {rows:?}");

    let message = err(&cli(&cfg, &["stats", "nobody"]));
    assert!(
        message.contains("nobody") && message.contains("token list"),
        "{message}"
    );
    assert_eq!(message.trim().lines().count(), 1, "{message}");
    assert!(ok(&cli(&cfg, &["stats", "alice"])).contains("User:            alice"));
}

/// `check-config --json` is the same configuration as the TOML output, and
/// both show the built-in `[mcp.tools]` rules with the file's merged in.
#[test]
fn check_config_shows_the_tool_rules_in_effect_as_toml_or_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[database]\nurl = \"postgres://memgate:hunter2@db:5432/memgate\"\n\
         [mcp.tools.recall]\npermission = \"read\"\nscoped_by = \"none\"\n",
    )
    .unwrap();
    let text = ok(&cli(&path, &["check-config"]));
    for table in ["[mcp.tools.add_memory]", "[mcp.tools.recall]"] {
        assert!(text.contains(table), "{table} missing: {text}");
    }
    let json: Value = serde_json::from_str(&ok(&cli(&path, &["check-config", "--json"]))).unwrap();
    assert_eq!(json["file"], path.display().to_string());
    let config = &json["config"];
    assert_eq!(
        config["database"]["url"],
        "postgres://memgate:****@db:5432/memgate"
    );
    assert_eq!(config["mcp"]["tools"]["recall"]["scoped_by"], "none");
    assert_eq!(
        config["mcp"]["tools"]["add_memory"]["scoped_by"],
        "argument"
    );
    let from_toml: toml::Table = text.parse().unwrap();
    assert_eq!(
        serde_json::to_value(&from_toml).unwrap(),
        *config,
        "the TOML and JSON outputs agree"
    );
}

/// Every subcommand path and every flag of the parser, from the parser itself.
fn every_command_and_flag() -> (Vec<String>, Vec<String>) {
    fn walk(command: &clap::Command, path: &str, paths: &mut Vec<String>, flags: &mut Vec<String>) {
        // Global flags are listed once, under memgate itself.
        for arg in command
            .get_arguments()
            .filter(|a| path == "memgate" || !a.is_global_set())
        {
            if let Some(long) = arg.get_long()
                && long != "help"
                && long != "version"
            {
                flags.push(format!("{path}: --{long}"));
            }
        }
        for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
            let sub_path = format!("{path} {}", sub.get_name());
            paths.push(sub_path.clone());
            walk(sub, &sub_path, paths, flags);
        }
    }
    let (mut paths, mut flags) = (Vec::new(), Vec::new());
    let mut command = <memgate::cli::Cli as clap::CommandFactory>::command();
    command.build();
    walk(&command, "memgate", &mut paths, &mut flags);
    (paths, flags)
}

/// `memgate completions SHELL` and `memgate man` know every subcommand and
/// flag, and need no config file.
#[test]
fn completions_and_the_man_page_cover_every_command_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.toml");
    let (paths, flags) = every_command_and_flag();
    assert!(paths.len() > 15 && flags.len() > 20, "{paths:?} {flags:?}");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = ok(&cli(&absent, &["completions", shell]));
        for path in &paths {
            let name = path.rsplit(' ').next().unwrap();
            assert!(script.contains(name), "{shell} completion lacks {path}");
        }
        for flag in &flags {
            let long = flag.rsplit("--").next().unwrap();
            assert!(script.contains(long), "{shell} completion lacks {flag}");
        }
    }
    let page = ok(&cli(&absent, &["man"])).replace("\\-", "-");
    assert!(
        page.starts_with(".ie") || page.contains(".TH memgate 1"),
        "{page}"
    );
    for path in &paths {
        assert!(page.contains(path.as_str()), "the man page lacks {path}");
    }
    for flag in &flags {
        let (path, long) = flag.split_once(": ").unwrap();
        // Each command's flags follow its own entry.
        let at = page
            .find(&format!("\\fB{path}"))
            .or_else(|| (path == "memgate").then_some(0))
            .unwrap_or_else(|| panic!("no entry for {path}"));
        assert!(page[at..].contains(long), "the man page lacks {flag}");
    }
    let message = err(&cli(&absent, &["completions", "tcsh"]));
    assert!(message.contains("bash"), "the shells are listed: {message}");
}

/// `memgate audit --follow` prints the window's events, then each event as
/// it is stored (a spool replay's older timestamps included), filtered, as
/// NDJSON with `--json` and as table rows without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_follow_prints_events_as_they_are_stored() {
    use std::io::BufRead;
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_for(&db, &dir);
        let store = db.store().await;
        let event = |kind: &str, user: &str| {
            let mut e = memgate::audit::AuditEvent::new(kind, kind == "auth_success");
            e.user_id = Some(user.into());
            e.reason = Some("unknown".into());
            e
        };
        store
            .insert_audit(&[
                event("auth_failure", "before"),
                event("auth_success", "before-ok"),
            ])
            .await
            .unwrap();

        let follow = |extra: &[&str]| {
            let mut child = std::process::Command::new(BIN)
                .arg("--config")
                .arg(&cfg)
                .args(["audit", "--follow", "--event", "auth_failure"])
                .args(extra)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let (send, lines) = std::sync::mpsc::channel::<String>();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if send.send(line).is_err() {
                        break;
                    }
                }
            });
            (child, lines)
        };
        let next = |lines: &std::sync::mpsc::Receiver<String>| {
            lines
                .recv_timeout(Duration::from_secs(10))
                .expect("the follower printed nothing within 10 s")
        };

        let (mut child, lines) = follow(&["--json"]);
        let first: Value = serde_json::from_str(&next(&lines)).unwrap();
        assert_eq!(first["user_id"], "before", "{first}");
        let mut replayed = event("auth_failure", "replayed");
        replayed.time = chrono::Utc::now() - chrono::Duration::hours(3);
        store
            .insert_audit(&[
                event("auth_failure", "new-1"),
                event("auth_success", "filtered-out"),
                event("auth_failure", "new-2"),
            ])
            .await
            .unwrap();
        store.insert_audit(&[replayed]).await.unwrap();
        let users: Vec<String> = (0..3)
            .map(|_| {
                let line = next(&lines);
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
                assert_eq!(v["event"], "auth_failure", "{v}");
                v["user_id"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(users, ["new-1", "new-2", "replayed"], "{backend:?}");
        assert!(
            lines.recv_timeout(Duration::from_millis(1500)).is_err(),
            "each event is printed once"
        );
        child.kill().unwrap();
        child.wait().unwrap();

        // The window (the last hour) is printed oldest first.
        let (mut child, lines) = follow(&["--since", "1h"]);
        assert!(next(&lines).starts_with("TIME  EVENT  RESULT"));
        let window: Vec<String> = (0..3).map(|_| next(&lines)).collect();
        for (row, user) in window.iter().zip(["before", "new-1", "new-2"]) {
            assert!(row.contains(&format!("  {user}  ")), "{window:?}");
        }
        store
            .insert_audit(&[event("auth_failure", "text-user")])
            .await
            .unwrap();
        let row = next(&lines);
        assert!(row.contains("auth_failure  FAIL  text-user"), "{row}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let message = err(&cli(
        &std::path::PathBuf::from("/nonexistent.toml"),
        &["audit", "--follow", "--until", "1h"],
    ));
    assert!(message.contains("--until"), "{message}");
}
