//! `memgate user export|delete` (docs/design.md §8) end to end: a real memgate in
//! `auto` isolation in front of the mem0-shaped fake, memories created through
//! memgate for two users in several scopes, then the CLI against the same
//! store and the same mem0. Also the `user_scopes` store methods and
//! `ScopeLog` on both backends.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{Duration as Days, Utc};
use serde_json::{Value, json};
use support::mem0::Mem0;
use support::*;

const AUTO: &str = "[isolation]\nmode = \"auto\"\n";
const APP: &str = "/home/alice/src/app";
const WEB: &str = "/home/alice/src/web";

fn scope(user: &str, project: &str) -> String {
    memgate::policy::scope::project_scope(user, project)
}

/// Creates one memory through memgate; returns its id.
async fn remember(gate: &Memgate, token: &str, project: Option<&str>, text: &str) -> String {
    let mut req = reqwest::Client::new()
        .post(gate.mem0_url("/memories"))
        .header("X-MCP-Token", token)
        .json(&json!({"messages": [{"role": "user", "content": text}]}));
    if let Some(project) = project {
        req = req.header("X-MCP-Project", project);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["results"][0]["id"].as_str().unwrap().to_string()
}

async fn list_status(gate: &Memgate, token: &str) -> u16 {
    reqwest::Client::new()
        .get(gate.mem0_url("/memories"))
        .header("X-MCP-Token", token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn ids_in(memories: &[Value]) -> BTreeSet<String> {
    memories
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every memory id in an export document, and the scopes it lists.
fn exported(doc: &Value) -> (BTreeSet<String>, Vec<String>) {
    let mut ids = BTreeSet::new();
    let mut scopes = Vec::new();
    for s in doc["scopes"].as_array().expect("scopes") {
        let name = s["scope"].as_str().unwrap().to_string();
        for m in s["memories"].as_array().expect("memories") {
            assert_eq!(m["user_id"], name.as_str(), "a memory outside its scope");
            ids.insert(m["id"].as_str().unwrap().to_string());
        }
        scopes.push(name);
    }
    (ids, scopes)
}

struct World {
    db: TestDb,
    mem0: Mem0,
    gate: Memgate,
    alice: String,
    bob: String,
    alice_ids: BTreeSet<String>,
    others: BTreeSet<String>,
}

/// alice: one memory in her own scope and one in each of two projects; bob:
/// one in his own scope and one in a project with the same path as alice's;
/// plus memories of the shared scope and of a user whose id starts like hers.
async fn world(backend: Backend) -> World {
    let db = TestDb::new(backend).await;
    let mem0 = Mem0::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &mem0.url());
    cfg.extra = AUTO.into();
    let gate = Memgate::start(cfg).await;
    let alice = gate.create_token("alice", &["--name", "Alice", "--email", "a@example.com"]);
    let bob = gate.create_token("bob", &[]);

    let mut alice_ids = BTreeSet::new();
    alice_ids.insert(remember(&gate, &alice, None, "alice likes tea").await);
    alice_ids.insert(remember(&gate, &alice, Some(APP), "app uses axum").await);
    alice_ids.insert(remember(&gate, &alice, Some(WEB), "web uses svelte").await);
    let mut others = BTreeSet::new();
    others.insert(remember(&gate, &bob, None, "bob likes coffee").await);
    others.insert(remember(&gate, &bob, Some(APP), "bob's app uses actix").await);
    others.insert(mem0.seed("shared_knowledge_base", "shared fact"));
    others.insert(mem0.seed("alice2", "another alice"));

    // What the proxy records by itself (ScopeLog), without waiting for it.
    let now = Utc::now();
    db.store()
        .await
        .record_scopes(&[
            ("alice".into(), scope("alice", APP), now),
            ("alice".into(), scope("alice", WEB), now),
            ("bob".into(), scope("bob", APP), now),
        ])
        .await
        .unwrap();
    World {
        db,
        mem0,
        gate,
        alice,
        bob,
        alice_ids,
        others,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_holds_exactly_the_users_memories_tokens_and_audit() {
    for backend in BACKENDS {
        let w = world(backend).await;
        let text = ok(&w.gate.cli(&["user", "export", "--user-id", "alice"]));
        let doc: Value = serde_json::from_str(&text).expect("one JSON document");
        assert_eq!(doc["user_id"], "alice");

        let (ids, scopes) = exported(&doc);
        assert_eq!(ids, w.alice_ids, "{backend:?}: exactly alice's memories");
        assert_eq!(
            scopes,
            [
                "alice".to_string(),
                scope("alice", APP),
                scope("alice", WEB)
            ],
            "{backend:?}: her own scope first, then every recorded one; never bob's or the shared one"
        );
        assert_eq!(doc["memory_count"], 3);
        assert_eq!(doc["warnings"], json!([]));

        // Tokens: hers, described, never the secret nor its hash.
        let tokens = doc["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 1);
        let t = &tokens[0];
        assert_eq!(t["prefix"], &w.alice[..12]);
        assert_eq!(t["user_id"], "alice");
        assert_eq!(t["name"], "Alice");
        assert_eq!(t["email"], "a@example.com");
        assert_eq!(t["permissions"], json!(["read", "write"]));
        assert_eq!(t["status"], "active");
        for key in ["created_at", "expires_at", "last_used_at"] {
            assert!(t.get(key).is_some(), "{key} missing from {t}");
        }
        assert!(t.get("token").is_none() && t.get("token_hash").is_none());
        assert!(!text.contains(&w.alice[12..]), "the token secret leaked");
        assert!(!text.contains(&memgate::token::hash_hex(&w.alice)));
        assert!(!text.contains(&w.bob[..12]), "bob's token is not alice's");

        // Audit: all of alice's rows, hers only.
        let audit = doc["audit"].as_array().unwrap();
        assert!(audit.iter().all(|e| e["user_id"] == "alice"), "{audit:?}");
        assert!(
            audit.iter().any(|e| e["event"] == "token_admin"
                && e["reason"] == "create"
                && e["token_prefix"] == w.alice[..12]),
            "{audit:?}"
        );
        let stored =
            w.db.store()
                .await
                .audit_events(&memgate::store::AuditFilter {
                    since: Utc::now() - Days::days(1),
                    until: None,
                    user_id: Some("alice".into()),
                    event: None,
                    limit: 100_000,
                    newest_first: false,
                })
                .await
                .unwrap();
        assert!(audit.len() <= stored.len());

        // --output: the same document in a private file; the export is audited.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alice.json");
        let said = ok(&w.gate.cli(&[
            "user",
            "export",
            "--user-id",
            "alice",
            "--output",
            file.to_str().unwrap(),
        ]));
        assert!(said.contains("3 memories in 3 scopes, 1 token"), "{said}");
        let from_file: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(exported(&from_file).0, w.alice_ids);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let store = w.db.store().await;
        let admin = store
            .audit_events(&memgate::store::AuditFilter {
                since: Utc::now() - Days::days(1),
                until: None,
                user_id: Some("alice".into()),
                event: Some("user_admin".into()),
                limit: 100,
                newest_first: false,
            })
            .await
            .unwrap();
        assert_eq!(admin.len(), 2, "each export is audited");
        assert!(
            admin[0]
                .reason
                .as_deref()
                .unwrap()
                .starts_with("user export: 3 memories in 3 scopes, 1 token")
        );

        // Nothing was changed by exporting.
        assert_eq!(w.mem0.memories().len(), 7);
        assert_eq!(list_status(&w.gate, &w.alice).await, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_exactly_the_users_memories_and_tokens_and_can_be_rerun() {
    for backend in BACKENDS {
        let w = world(backend).await;
        let store = w.db.store().await;

        // Refused without --yes when stdin is not a terminal; nothing is touched.
        w.mem0.clear();
        let refusal = err(&w.gate.cli(&["user", "delete", "--user-id", "alice"]));
        assert!(refusal.contains("--yes"), "{refusal}");
        assert_eq!(w.mem0.memories().len(), 7);
        assert!(w.mem0.requests().is_empty(), "mem0 was contacted");
        assert_eq!(store.tokens(Some("alice")).await.unwrap().len(), 1);
        assert_eq!(list_status(&w.gate, &w.alice).await, 200);

        w.mem0.clear();
        let said = ok(&w
            .gate
            .cli(&["user", "delete", "--user-id", "alice", "--yes"]));
        assert!(
            said.contains("3 memories in 3 scopes, 1 token"),
            "{backend:?}: {said}"
        );
        assert!(said.contains(&w.alice[..12]), "{said}");
        for s in [
            "alice".to_string(),
            scope("alice", APP),
            scope("alice", WEB),
        ] {
            assert!(said.contains(&s), "{s} missing from {said}");
        }

        // Exactly alice's memories are gone; everyone else's are all there.
        let left = ids_in(&w.mem0.memories());
        assert_eq!(left, w.others, "{backend:?}");
        // One memory at a time: never the collection-wide DELETE /memories,
        // which drops every user's memories on mem0 0.1.118–1.0.5.
        let log = w.mem0.requests();
        assert!(
            !log.iter()
                .any(|r| r.method == "DELETE" && r.uri.starts_with("/memories?")),
            "{log:?}"
        );
        assert_eq!(log.iter().filter(|r| r.method == "DELETE").count(), 3);

        // Her tokens are gone and no longer work; bob's still does.
        assert!(store.tokens(Some("alice")).await.unwrap().is_empty());
        let refused = within(Duration::from_secs(5), || async {
            list_status(&w.gate, &w.alice).await == 401
        })
        .await;
        assert!(refused.is_some(), "alice's token still works");
        assert_eq!(list_status(&w.gate, &w.bob).await, 200);
        assert_eq!(store.tokens(Some("bob")).await.unwrap().len(), 1);

        // Recorded scopes are forgotten; the audit trail is kept and says what happened.
        assert!(store.user_scopes("alice").await.unwrap().is_empty());
        assert_eq!(store.user_scopes("bob").await.unwrap(), [scope("bob", APP)]);
        let since = Utc::now() - Days::days(1);
        let audit = store
            .audit_events(&memgate::store::AuditFilter {
                since,
                until: None,
                user_id: Some("alice".into()),
                event: None,
                limit: 100_000,
                newest_first: false,
            })
            .await
            .unwrap();
        assert!(audit.iter().any(|e| e.event == "token_admin"), "audit kept");
        let deletes: Vec<_> = audit.iter().filter(|e| e.event == "user_admin").collect();
        assert_eq!(deletes.len(), 1);
        assert!(deletes[0].success);
        assert_eq!(
            deletes[0].reason.as_deref(),
            Some("user delete: 3 memories in 3 scopes, 1 token")
        );

        // Again: nothing left, still a success.
        let again = ok(&w
            .gate
            .cli(&["user", "delete", "--user-id", "alice", "--yes"]));
        assert!(again.contains("Nothing left"), "{again}");
        let json: Value = serde_json::from_str(&ok(&w.gate.cli(&[
            "user",
            "delete",
            "--user-id",
            "alice",
            "--yes",
            "--json",
        ])))
        .unwrap();
        assert_eq!(json["nothing_left"], true);
        assert_eq!(json["memories_deleted"], 0);
        assert_eq!(ids_in(&w.mem0.memories()), w.others);

        // And the export of a deleted user is empty but for the audit trail.
        let doc: Value =
            serde_json::from_str(&ok(&w.gate.cli(&["user", "export", "--user-id", "alice"])))
                .unwrap();
        assert_eq!(doc["memory_count"], 0);
        assert_eq!(doc["tokens"], json!([]));
        assert!(!doc["audit"].as_array().unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrongly_recorded_scope_is_never_exported_or_deleted() {
    let w = world(Backend::Sqlite).await;
    // A proxy that recorded the shared scope or another user's id for alice
    // (which a correct one never does) must not make her delete theirs.
    w.db.store()
        .await
        .record_scopes(&[
            ("alice".into(), "shared_knowledge_base".into(), Utc::now()),
            ("alice".into(), "bob".into(), Utc::now()),
        ])
        .await
        .unwrap();
    let out = w.gate.cli(&["user", "export", "--user-id", "alice"]);
    let doc: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(exported(&doc).0, w.alice_ids);
    assert_eq!(doc["warnings"].as_array().unwrap().len(), 2, "{doc}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped"));
    ok(&w
        .gate
        .cli(&["user", "delete", "--user-id", "alice", "--yes"]));
    assert_eq!(ids_in(&w.mem0.memories()), w.others);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_mem0_fails_the_command_and_changes_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = {:?}\n[mem0]\nupstream = \"http://127.0.0.1:{}\"\nconnect_timeout_secs = 1\n",
            db.url,
            free_port()
        ),
    )
    .unwrap();
    ok(&cli(&config, &["migrate"]));
    ok(&cli(&config, &["token", "create", "--user-id", "alice"]));
    let e = err(&cli(&config, &["user", "export", "--user-id", "alice"]));
    assert!(e.starts_with("error: ") && e.contains("mem0"), "{e}");
    let e = err(&cli(
        &config,
        &["user", "delete", "--user-id", "alice", "--yes"],
    ));
    assert!(e.contains("mem0"), "{e}");
    let tokens = db.store().await.tokens(Some("alice")).await.unwrap();
    assert_eq!(tokens.len(), 1);
    assert!(
        tokens[0].enabled,
        "nothing changes when mem0 cannot be reached"
    );
    let e = err(&cli(
        &config,
        &["user", "delete", "--user-id", " bad", "--yes"],
    ));
    assert!(e.contains("--user-id"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_scopes_are_upserted_listed_and_forgotten_on_both_backends() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let t0 = Utc::now() - Days::minutes(10);
        let t1 = t0 + Days::minutes(5);
        // The same pair twice in one batch (PostgreSQL refuses an upsert that
        // touches a row twice unless merged), then an older sighting.
        store
            .record_scopes(&[
                ("alice".into(), "project_a_000000000000".into(), t0),
                ("alice".into(), "project_a_000000000000".into(), t1),
                ("bob".into(), "project_a_111111111111".into(), t0),
            ])
            .await
            .unwrap();
        store
            .record_scopes(&[
                ("alice".into(), "project_b_222222222222".into(), t1),
                ("alice".into(), "project_a_000000000000".into(), t0),
            ])
            .await
            .unwrap();
        store.record_scopes(&[]).await.unwrap();
        assert_eq!(
            store.user_scopes("alice").await.unwrap(),
            ["project_a_000000000000", "project_b_222222222222"],
            "{backend:?}: oldest first"
        );
        let last_seen: String = match backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
                sqlx::query_scalar(
                    "SELECT last_seen FROM user_scopes WHERE scope = 'project_a_000000000000'",
                )
                .fetch_one(&pool)
                .await
                .unwrap()
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                let at: chrono::DateTime<Utc> = sqlx::query_scalar(
                    "SELECT last_seen FROM user_scopes WHERE scope = 'project_a_000000000000'",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                at.to_rfc3339()
            }
        };
        let last_seen = chrono::DateTime::parse_from_rfc3339(&last_seen).unwrap();
        assert_eq!(
            last_seen.timestamp_micros(),
            t1.timestamp_micros(),
            "{backend:?}: last_seen never moves back"
        );

        // ScopeLog: notes are batched and land in the store on flush.
        let log = memgate::scopes::ScopeLog::new(Duration::from_secs(60));
        log.note("carol", "carol");
        log.note("carol", "project_c_333333333333");
        log.note("carol", "project_c_333333333333");
        assert_eq!(log.pending_len(), 1);
        log.flush(store.as_ref()).await.unwrap();
        assert_eq!(log.pending_len(), 0);
        assert_eq!(
            store.user_scopes("carol").await.unwrap(),
            ["project_c_333333333333"]
        );

        assert_eq!(store.forget_user_scopes("alice").await.unwrap(), 2);
        assert!(store.user_scopes("alice").await.unwrap().is_empty());
        assert_eq!(store.user_scopes("bob").await.unwrap().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_keeps_the_notes_for_the_next_one() {
    let db = TestDb::new(Backend::Postgres).await;
    let relay = Relay::start(pg_addr()).await;
    let store = memgate::store::connect(&db.url_via(relay.addr), 2, Duration::from_secs(1))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let log = memgate::scopes::ScopeLog::new(Duration::from_secs(60));
    log.note("alice", "project_a_000000000000");
    relay.cut();
    assert!(log.flush(store.as_ref()).await.is_err());
    assert_eq!(log.pending_len(), 1, "kept for the next flush");
    relay.restore();
    let flushed = within(Duration::from_secs(10), || async {
        log.flush(store.as_ref()).await.is_ok()
    })
    .await;
    assert!(flushed.is_some());
    assert_eq!(
        db.store().await.user_scopes("alice").await.unwrap(),
        ["project_a_000000000000"]
    );
}

/// Needs the proxy to note scopes in a `ScopeLog` and flush it periodically
/// (wired in the proxy path and the housekeeping loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_records_auto_scopes_by_itself() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mem0 = Mem0::start().await;
    let mut cfg = MemgateConfig::new(&db.url, &mem0.url());
    cfg.extra = AUTO.into();
    let gate = Memgate::start(cfg).await;
    let alice = gate.create_token("alice", &[]);
    let own = remember(&gate, &alice, None, "alice likes tea").await;
    let in_app = remember(&gate, &alice, Some(APP), "app uses axum").await;

    let store = db.store().await;
    let recorded = within(Duration::from_secs(8), || async {
        store.user_scopes("alice").await.unwrap() == [scope("alice", APP)]
    })
    .await;
    assert!(
        recorded.is_some(),
        "the proxy did not record alice's project scope within 8 s: {:?}",
        store.user_scopes("alice").await.unwrap()
    );
    let doc: Value =
        serde_json::from_str(&ok(&gate.cli(&["user", "export", "--user-id", "alice"]))).unwrap();
    assert_eq!(exported(&doc).0, BTreeSet::from([own, in_app]));
}

// ---------------------------------------------------------------------------
// mem0's listing limits

/// A config file for the CLI alone: the store and the mem0 stand-in.
fn cli_config(dir: &std::path::Path, db: &TestDb, mem0: &Mem0) -> std::path::PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = {:?}\n[mem0]\nupstream = {:?}\n",
            db.url,
            mem0.url()
        ),
    )
    .unwrap();
    ok(&cli(&config, &["migrate"]));
    config
}

fn seed_many(mem0: &Mem0, user: &str, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|i| mem0.seed(user, &format!("{user}'s memory {i}")))
        .collect()
}

fn held_by(mem0: &Mem0, user: &str) -> usize {
    mem0.memories()
        .iter()
        .filter(|m| m["user_id"] == user)
        .count()
}

/// Each mem0's `GET /memories` stops at a limit and none pages (1.0.x: 100,
/// `top_k` ignored; 2.0.0–2.0.7: 20, `top_k` ignored; 2.0.8+: `top_k` up to
/// 1000, 20 without it). Export asks for the most and says when it was cut;
/// delete lists and deletes until nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_delete_get_past_each_mem0_versions_listing_limit() {
    use support::mem0::{Listing, V2_TOP_K_MAX};
    // (server, its most per listing, whether it takes top_k)
    let versions = [
        (Listing::V2, V2_TOP_K_MAX, true),
        (Listing::V1, 100, false),
        (Listing::V2Early, 20, false),
    ];
    for (listing, most, takes_top_k) in versions {
        let db = TestDb::new(Backend::Sqlite).await;
        let mem0 = Mem0::start().await;
        mem0.set_listing(listing);
        let dir = tempfile::tempdir().unwrap();
        let config = cli_config(dir.path(), &db, &mem0);
        let alice = seed_many(&mem0, "alice", 36);
        let carol = seed_many(&mem0, "carol", most + 7);
        let bob = seed_many(&mem0, "bob", 3);

        // 36 memories: all of them, where the server allows 36 in one listing.
        mem0.clear();
        let out = cli(&config, &["user", "export", "--user-id", "alice"]);
        let doc: Value = serde_json::from_str(&ok(&out)).unwrap();
        let asked = mem0.requests();
        assert!(
            asked[0].uri.contains("top_k=1000"),
            "{listing:?}: not asked for the most: {}",
            asked[0].uri
        );
        if 36 <= most {
            assert_eq!(exported(&doc).0, alice, "{listing:?}");
            assert_eq!(doc["memory_count"], 36);
            assert_eq!(doc["memories_complete"], true, "{listing:?}: {doc}");
            assert_eq!(doc["scopes"][0]["memories_complete"], true);
            assert_eq!(doc["warnings"], json!([]));
        } else {
            assert_eq!(doc["memory_count"], most, "{listing:?}");
            assert_eq!(doc["memories_complete"], false, "{listing:?}: {doc}");
            assert!(doc["scopes"][0]["note"].as_str().unwrap().contains("top_k"));
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("may hold more"),
                "{listing:?}: the cut is not said on stderr"
            );
        }

        // More than the server ever lists: the export says it is cut short.
        let out = cli(&config, &["user", "export", "--user-id", "carol"]);
        let doc: Value = serde_json::from_str(&ok(&out)).unwrap();
        assert_eq!(doc["memory_count"], most, "{listing:?}");
        assert!(exported(&doc).0.is_subset(&carol));
        assert_eq!(doc["memories_complete"], false, "{listing:?}: {doc}");
        assert_eq!(doc["scopes"][0]["memories_complete"], false);
        let note = doc["scopes"][0]["note"].as_str().expect("a note");
        assert!(note.contains("may hold more"), "{note}");
        assert!(
            note.contains(if takes_top_k {
                "no paging"
            } else {
                "ignores top_k"
            }),
            "{listing:?}: {note}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("warning: ") && stderr.contains("carol"),
            "{stderr}"
        );
        let with_file = dir.path().join("carol.json");
        let said = ok(&cli(
            &config,
            &[
                "user",
                "export",
                "--user-id",
                "carol",
                "--output",
                with_file.to_str().unwrap(),
            ],
        ));
        assert!(said.contains("INCOMPLETE"), "{said}");

        // Delete lists and deletes until the listing comes back empty.
        let said = ok(&cli(
            &config,
            &["user", "delete", "--user-id", "alice", "--yes"],
        ));
        assert!(
            said.contains("36 memories in 1 scope"),
            "{listing:?}: {said}"
        );
        assert_eq!(held_by(&mem0, "alice"), 0, "{listing:?}");
        let said = ok(&cli(
            &config,
            &["user", "delete", "--user-id", "carol", "--yes"],
        ));
        assert!(
            said.contains(&format!("{} memories in 1 scope", most + 7)),
            "{listing:?}: {said}"
        );
        assert_eq!(held_by(&mem0, "carol"), 0, "{listing:?}");
        assert_eq!(
            ids_in(&mem0.memories()),
            bob,
            "{listing:?}: only bob's are left"
        );
    }
}

/// The stand-in refuses what mem0 2.x refuses: a `top_k` over 1000 is a 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2026_mem0_stand_in_lists_20_by_default_and_refuses_top_k_over_1000() {
    use support::mem0::Listing;
    let mem0 = Mem0::start().await;
    mem0.set_listing(Listing::V2);
    seed_many(&mem0, "alice", 30);
    let list = |query: &'static str| {
        let url = format!("{}/memories?user_id=alice{query}", mem0.url());
        async move {
            let resp = reqwest::get(url).await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = list("").await;
    assert_eq!(
        (status, body["results"].as_array().unwrap().len()),
        (200, 20)
    );
    let (_, body) = list("&top_k=25").await;
    assert_eq!(body["results"].as_array().unwrap().len(), 25);
    let (_, body) = list("&top_k=1000").await;
    assert_eq!(body["results"].as_array().unwrap().len(), 30);
    let (status, body) = list("&top_k=1001").await;
    assert_eq!(status, 422);
    assert_eq!(body["detail"][0]["loc"], json!(["query", "top_k"]));
    mem0.set_listing(Listing::V1);
    let (_, body) = list("&top_k=5").await;
    assert_eq!(
        body["results"].as_array().unwrap().len(),
        30,
        "1.0.x ignores top_k"
    );
}

// ---------------------------------------------------------------------------
// Scopes recorded before they are used

/// A memory written in a project scope the proxy has never seen is found by
/// a `user delete` run right after (the scope is stored before the write is
/// forwarded, not in the next batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_project_scope_is_recorded_before_its_first_request_is_forwarded() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let mem0 = Mem0::start().await;
        let mut cfg = MemgateConfig::new(&db.url, &mem0.url());
        cfg.extra = AUTO.into();
        let gate = Memgate::start(cfg).await;
        let alice = gate.create_token("alice", &[]);
        remember(&gate, &alice, Some(APP), "app uses axum").await;
        let in_app = scope("alice", APP);
        assert_eq!(held_by(&mem0, &in_app), 1);
        // No waiting for the batch.
        let said = ok(&gate.cli(&["user", "delete", "--user-id", "alice", "--yes"]));
        assert!(said.contains(&in_app), "{backend:?}: {said}");
        assert_eq!(held_by(&mem0, &in_app), 0, "{backend:?}: left behind");
        assert!(mem0.memories().is_empty());
    }
}

/// When the scope cannot be recorded, the request is refused rather than
/// forwarded into a scope `user delete` would not find.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_that_cannot_be_recorded_is_not_written_to() {
    let db = TestDb::new(Backend::Postgres).await;
    let relay = Relay::start(pg_addr()).await;
    let mem0 = Mem0::start().await;
    let mut cfg = MemgateConfig::new(&db.url_via(relay.addr), &mem0.url());
    cfg.extra = AUTO.into();
    let gate = Memgate::start(cfg).await;
    let alice = gate.create_token("alice", &[]);
    // The creation's own change notification drops the token from the cache
    // when it arrives; let it pass before the token is cached.
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The token is cached, so it is still accepted while the store is away.
    assert_eq!(list_status(&gate, &alice).await, 200);
    relay.cut();
    mem0.clear();
    let resp = reqwest::Client::new()
        .post(gate.mem0_url("/memories"))
        .header("X-MCP-Token", &alice)
        .header("X-MCP-Project", WEB)
        .json(&json!({"messages": [{"role": "user", "content": "web uses svelte"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("project scope"),
        "{body}"
    );
    assert!(
        mem0.requests().is_empty(),
        "forwarded: {:?}",
        mem0.requests()
    );
    assert!(mem0.memories().is_empty());

    relay.restore();
    let stored = within(Duration::from_secs(10), || async {
        let resp = reqwest::Client::new()
            .post(gate.mem0_url("/memories"))
            .header("X-MCP-Token", &alice)
            .header("X-MCP-Project", WEB)
            .json(&json!({"messages": [{"role": "user", "content": "web uses svelte"}]}))
            .send()
            .await
            .unwrap();
        resp.status() == 200
    })
    .await;
    assert!(stored.is_some(), "not accepted once the store is back");
    assert_eq!(
        db.store().await.user_scopes("alice").await.unwrap(),
        [scope("alice", WEB)]
    );
}
