//! Adversarial unit cases for the mem0 policy, grouped by the check they hit.

use serde_json::{Value, json};

use super::*;
use crate::identity::Permissions;

const JSON: Option<&str> = Some("application/json");

fn ident(user_id: &str, permissions: &str) -> Identity {
    Identity {
        user_id: user_id.to_owned(),
        permissions: Permissions::parse(permissions).unwrap(),
        token_prefix: "mcp_testtest".to_owned(),
    }
}

fn alice() -> Identity {
    ident("alice", "read,write")
}

fn reader() -> Identity {
    ident("reader", "read")
}

fn root() -> Identity {
    ident("root", "admin")
}

fn request<'a>(
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    body: Option<&'a str>,
) -> Mem0Request<'a> {
    Mem0Request {
        method,
        path,
        query,
        content_type: body.and(JSON),
        body: body.map(str::as_bytes),
    }
}

fn decide_with(policy: &Mem0Policy, who: &Identity, scope: &str, req: Mem0Request<'_>) -> Decision {
    let decision = policy.decide(who, scope, &req);
    // Whatever a test expects, no forwarded request may name another user.
    let forwarded = match &decision {
        Decision::Forward(forward) => Some(forward),
        Decision::NeedOwner(need) => Some(&need.forward),
        Decision::Deny(_) => None,
    };
    if let Some(forward) = forwarded {
        assert!(forwards_only_scope(forward, req.body), "{forward:?}");
    }
    decision
}

fn decide(
    who: &Identity,
    method: &str,
    path: &str,
    query: Option<&str>,
    body: Option<&str>,
) -> Decision {
    let scope = who.user_id.clone();
    decide_with(
        &Mem0Policy::default(),
        who,
        &scope,
        request(method, path, query, body),
    )
}

fn forward(decision: Decision) -> Forward {
    match decision {
        Decision::Forward(forward) => forward,
        other => panic!("expected Forward, got {other:?}"),
    }
}

fn need_owner(decision: Decision) -> NeedOwner {
    match decision {
        Decision::NeedOwner(need) => need,
        other => panic!("expected NeedOwner, got {other:?}"),
    }
}

fn denied(decision: Decision) -> Deny {
    match decision {
        Decision::Deny(deny) => deny,
        other => panic!("expected Deny, got {other:?}"),
    }
}

fn status(decision: Decision) -> u16 {
    denied(decision).status
}

/// The JSON body that would be sent upstream.
fn sent_json(forward: &Forward, client_body: Option<&str>) -> Value {
    let bytes = forward
        .body
        .as_deref()
        .or(client_body.map(str::as_bytes))
        .unwrap();
    serde_json::from_slice(bytes).unwrap()
}

fn sent_query(forward: &Forward) -> Query {
    Query::parse(forward.query.as_deref().unwrap_or("")).unwrap()
}

// ---- routing: 400 / 404 / 405 -------------------------------------------------

#[test]
fn unknown_routes_are_404_fastapi_style() {
    for path in [
        "/docs",
        "/openapi.json",
        "/graph/x",
        "/",
        "/memories/a/b",
        "/memories/a/history/x",
    ] {
        let deny = denied(decide(&root(), "GET", path, None, None));
        assert_eq!(
            (deny.status, deny.detail_json().as_str()),
            (404, r#"{"detail":"Not Found"}"#),
            "{path}"
        );
    }
}

#[test]
fn paths_are_case_sensitive() {
    assert_eq!(
        status(decide(&alice(), "GET", "/Memories", None, None)),
        404
    );
    assert_eq!(
        status(decide(&alice(), "POST", "/SEARCH", None, Some("{}"))),
        404
    );
}

#[test]
fn known_paths_with_wrong_methods_are_405() {
    assert_eq!(status(decide(&root(), "GET", "/reset", None, None)), 405);
    assert_eq!(
        status(decide(&root(), "GET", "/configure", None, None)),
        405
    );
    assert_eq!(
        status(decide(&alice(), "PATCH", "/memories", None, None)),
        405
    );
    assert_eq!(
        status(decide(&alice(), "POST", "/memories/abc", None, Some("{}"))),
        405
    );
    assert_eq!(
        status(decide(
            &alice(),
            "DELETE",
            "/memories/abc/history",
            None,
            None
        )),
        405
    );
    assert_eq!(allowed_methods("/memories"), ["GET", "POST", "DELETE"]);
    assert_eq!(allowed_methods("/memories/x/history"), ["GET"]);
}

#[test]
fn methods_are_case_sensitive_and_head_is_not_get() {
    assert_eq!(
        status(decide(&alice(), "get", "/memories", None, None)),
        405
    );
    assert_eq!(
        status(decide(&alice(), "HEAD", "/memories", None, None)),
        405
    );
}

#[test]
fn route_and_method_come_before_permission() {
    // A reader probing an admin route learns only that the method is wrong.
    assert_eq!(status(decide(&reader(), "GET", "/reset", None, None)), 405);
    assert_eq!(status(decide(&reader(), "POST", "/nope", None, None)), 404);
}

#[test]
fn encoded_traversal_is_refused() {
    for path in [
        "/memories/%2e%2e/reset",
        "/memories/%2E%2E/reset",
        "/memories/../reset",
        "/memories/./x",
        "/memories/.%2E",
        "/search/%2e%2e/reset",
    ] {
        assert_eq!(
            status(decide(&root(), "POST", path, None, Some("{}"))),
            400,
            "{path}"
        );
    }
}

#[test]
fn encoded_separators_backslashes_and_nul_are_refused() {
    for path in [
        "/memories%2Freset",
        "/memories/..%2Freset",
        "/memories/a%2fhistory",
        "/memories/a%5Chistory",
        "/memories\\..\\reset",
        "/memories/abc%00",
        "/memories/abc%0d%0aX-Injected:1",
    ] {
        assert_eq!(
            status(decide(&alice(), "GET", path, None, None)),
            400,
            "{path}"
        );
    }
}

#[test]
fn double_encoding_is_refused() {
    for path in [
        "/memories/%252e%252e/reset",
        "/memories/%252F",
        "/memories/abc%2500",
    ] {
        assert_eq!(
            status(decide(&alice(), "GET", path, None, None)),
            400,
            "{path}"
        );
    }
}

#[test]
fn empty_segments_are_refused_but_one_trailing_slash_is_fine() {
    assert_eq!(
        status(decide(&alice(), "GET", "//memories", None, None)),
        400
    );
    assert_eq!(
        status(decide(&alice(), "GET", "/memories//", None, None)),
        400
    );
    let list = forward(decide(&alice(), "GET", "/memories/", None, None));
    assert_eq!(
        (list.route, list.path.as_str()),
        (Route::ListMemories, "/memories")
    );
    let search = forward(decide(
        &alice(),
        "POST",
        "/search/",
        None,
        Some(r#"{"query":"q"}"#),
    ));
    assert_eq!(
        (search.route, search.path.as_str()),
        (Route::Search, "/search")
    );
    let history = need_owner(decide(
        &alice(),
        "GET",
        "/memories/abc/history/",
        None,
        None,
    ));
    assert_eq!(
        (history.forward.route, history.memory_id.as_str()),
        (Route::MemoryHistory, "abc")
    );
}

#[test]
fn memory_ids_are_decoded_once_and_re_encoded_canonically() {
    let need = need_owner(decide(&alice(), "GET", "/memories/%61bc", None, None));
    assert_eq!(
        (need.memory_id.as_str(), need.forward.path.as_str()),
        ("abc", "/memories/abc")
    );
    let need = need_owner(decide(&alice(), "DELETE", "/memories/a%20b%3F", None, None));
    assert_eq!(
        (need.memory_id.as_str(), need.forward.path.as_str()),
        ("a b?", "/memories/a%20b%3F")
    );
    assert_eq!(memory_path("a b?"), "/memories/a%20b%3F");
    // The id "history" is just an id.
    let need = need_owner(decide(&alice(), "GET", "/memories/history", None, None));
    assert_eq!(
        (need.forward.route, need.memory_id.as_str()),
        (Route::GetMemory, "history")
    );
}

// ---- allow-list -----------------------------------------------------------------

fn allow(routes: &[(&str, &str)]) -> Mem0Policy {
    Mem0Policy {
        allowed_routes: routes
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect(),
        ..Mem0Policy::default()
    }
}

#[test]
fn allow_list_matches_whole_segments_and_methods() {
    let policy = allow(&[("GET", "/docs"), ("*", "/graph/")]);
    let docs = forward(decide_with(
        &policy,
        &reader(),
        "reader",
        request("GET", "/docs", Some("x=1"), None),
    ));
    assert_eq!(
        (docs.route, docs.query.as_deref()),
        (Route::AllowListed, Some("x=1"))
    );
    assert!(matches!(
        decide_with(
            &policy,
            &reader(),
            "reader",
            request("GET", "/docs/oauth2-redirect", None, None)
        ),
        Decision::Forward(_)
    ));
    assert_eq!(
        status(decide_with(
            &policy,
            &reader(),
            "reader",
            request("GET", "/docsx", None, None)
        )),
        404
    );
    assert_eq!(
        status(decide_with(
            &policy,
            &reader(),
            "reader",
            request("POST", "/docs", None, None)
        )),
        404
    );
    // Allow-listed routes still need write for unsafe methods.
    assert_eq!(
        status(decide_with(
            &policy,
            &reader(),
            "reader",
            request("POST", "/graph/x", None, None)
        )),
        403
    );
    assert!(matches!(
        decide_with(
            &policy,
            &alice(),
            "alice",
            request("POST", "/graph/x", None, Some("[1]"))
        ),
        Decision::Forward(_)
    ));
}

#[test]
fn allow_list_never_overrides_known_routes() {
    let policy = allow(&[("*", "/")]);
    let f = forward(decide_with(
        &policy,
        &alice(),
        "alice",
        request("GET", "/memories", Some("user_id=alice"), None),
    ));
    assert_eq!(f.route, Route::ListMemories);
    let deny = decide_with(
        &policy,
        &alice(),
        "alice",
        request("GET", "/memories", Some("user_id=bob"), None),
    );
    assert_eq!(status(deny), 403);
    assert_eq!(
        status(decide_with(
            &policy,
            &alice(),
            "alice",
            request("POST", "/reset", None, None)
        )),
        403
    );
    // But it may open a method mem0 2.x added on a known path.
    let get_config = forward(decide_with(
        &policy,
        &reader(),
        "reader",
        request("GET", "/configure", None, None),
    ));
    assert_eq!(get_config.route, Route::AllowListed);
}

#[test]
fn allow_listed_bodies_are_size_limited() {
    let policy = Mem0Policy {
        max_body_bytes: 4,
        ..allow(&[("*", "/graph")])
    };
    assert_eq!(
        status(decide_with(
            &policy,
            &alice(),
            "alice",
            request("POST", "/graph", None, Some("12345"))
        )),
        413
    );
}

// ---- permissions ------------------------------------------------------------------

#[test]
fn permission_is_checked_before_the_body() {
    // Garbage body and wrong content type: still the permission answer.
    let req = Mem0Request {
        content_type: Some("text/plain"),
        body: Some(b"\xff not json"),
        ..request("POST", "/memories", None, None)
    };
    assert_eq!(
        decide_with(&Mem0Policy::default(), &reader(), "reader", req).clone(),
        Decision::Deny(Deny::forbidden(
            "Access denied: this token lacks the write permission"
        ))
    );
    let huge = "x".repeat(2 * 1024 * 1024);
    assert_eq!(
        status(decide(&alice(), "POST", "/configure", None, Some(&huge))),
        403
    );
}

#[test]
fn admin_routes_are_admin_only() {
    assert_eq!(status(decide(&alice(), "POST", "/reset", None, None)), 403);
    assert_eq!(
        status(decide(&alice(), "POST", "/configure", None, Some("{}"))),
        403
    );
    let reset = forward(decide(&root(), "POST", "/reset", None, None));
    assert_eq!((reset.route, reset.body.clone()), (Route::Reset, None));
    let config = r#"{"llm":{"provider":"openai","user_id":"whatever"}}"#;
    let configure = forward(decide(&root(), "POST", "/configure", None, Some(config)));
    assert_eq!(
        configure.body, None,
        "admin configuration is forwarded as sent"
    );
}

#[test]
fn the_two_step_api_refuses_before_the_body() {
    let policy = Mem0Policy::default();
    let matched = policy.route("POST", "/reset").unwrap();
    assert_eq!(policy.admit(&alice(), &matched).unwrap_err().status, 403);
    let matched = policy.route("POST", "/memories").unwrap();
    assert!(policy.admit(&alice(), &matched).is_ok());
    assert_eq!(policy.admit(&reader(), &matched).unwrap_err().status, 403);
}

#[test]
fn readers_cannot_change_or_delete() {
    assert_eq!(
        status(decide(&reader(), "PUT", "/memories/m1", None, Some("{}"))),
        403
    );
    assert_eq!(
        status(decide(&reader(), "DELETE", "/memories/m1", None, None)),
        403
    );
    assert_eq!(
        status(decide(
            &reader(),
            "DELETE",
            "/memories",
            Some("user_id=reader"),
            None
        )),
        403
    );
    assert!(matches!(
        decide(&reader(), "POST", "/search", None, Some(r#"{"query":"q"}"#)),
        Decision::Forward(_)
    ));
}

// ---- DELETE /memories ------------------------------------------------------------

fn delete_all_allowed() -> Mem0Policy {
    Mem0Policy {
        allow_delete_all: true,
        ..Mem0Policy::default()
    }
}

#[test]
fn delete_all_is_admin_only_by_default() {
    assert_eq!(
        status(decide(
            &alice(),
            "DELETE",
            "/memories",
            Some("user_id=alice"),
            None
        )),
        403
    );
    let f = forward(decide(
        &root(),
        "DELETE",
        "/memories",
        Some("user_id=bob"),
        None,
    ));
    assert_eq!(
        (f.query.as_deref(), f.scope.as_str()),
        (Some("user_id=bob"), "bob")
    );
}

#[test]
fn delete_all_when_allowed_only_deletes_the_scope() {
    let p = delete_all_allowed();
    let f = forward(decide_with(
        &p,
        &alice(),
        "alice",
        request("DELETE", "/memories", Some("user_id=alice"), None),
    ));
    assert_eq!(f.query.as_deref(), Some("user_id=alice"));
    assert_eq!(
        status(decide_with(
            &p,
            &alice(),
            "alice",
            request("DELETE", "/memories", Some("user_id=bob"), None)
        )),
        403
    );
    // Another selector alone is ANDed with the scope.
    let f = forward(decide_with(
        &p,
        &alice(),
        "alice",
        request("DELETE", "/memories", Some("agent_id=a1"), None),
    ));
    assert_eq!(f.query.as_deref(), Some("agent_id=a1&user_id=alice"));
}

#[test]
fn delete_all_without_any_selector_is_refused_even_for_admins() {
    let p = delete_all_allowed();
    for who in [alice(), root()] {
        for query in [None, Some(""), Some("user_id="), Some("agent_id=&run_id=")] {
            let deny = denied(decide_with(
                &p,
                &who,
                &who.user_id.clone(),
                request("DELETE", "/memories", query, None),
            ));
            assert_eq!(deny.status, 403, "{query:?}");
        }
    }
}

// ---- query strings ---------------------------------------------------------------

#[test]
fn parameter_pollution_is_400() {
    for query in [
        "user_id=alice&user_id=bob",
        "user_id=bob&user_id=alice",
        "user_id=alice&user%5Fid=bob",
        "user_id=alice&user_i%64=alice",
        "agent_id=a&agent_id=b",
        "run_id=a&user_id=alice&run_id=b",
    ] {
        assert_eq!(
            status(decide(&alice(), "GET", "/memories", Some(query), None)),
            400,
            "{query}"
        );
    }
}

#[test]
fn list_forces_user_id_and_ands_other_selectors() {
    let f = forward(decide(&alice(), "GET", "/memories", None, None));
    assert_eq!(f.query.as_deref(), Some("user_id=alice"));
    let f = forward(decide(
        &alice(),
        "GET",
        "/memories",
        Some("agent_id=a1&top_k=5"),
        None,
    ));
    assert_eq!(
        f.query.as_deref(),
        Some("agent_id=a1&top_k=5&user_id=alice")
    );
    let f = forward(decide(
        &alice(),
        "GET",
        "/memories",
        Some("user_id=&run_id=r"),
        None,
    ));
    assert_eq!(f.query.as_deref(), Some("user_id=alice&run_id=r"));
    assert!(f.route.filters_results());
}

#[test]
fn naming_another_user_in_the_query_is_403_naming_the_token_user() {
    let policy = Mem0Policy {
        mode: IsolationMode::Auto,
        ..Mem0Policy::default()
    };
    let scope = policy.scope_for(&alice(), Some("/src/app"));
    let deny = denied(decide_with(
        &policy,
        &alice(),
        &scope,
        request("GET", "/memories", Some("user_id=bob"), None),
    ));
    assert_eq!(deny.status, 403);
    assert!(
        deny.message.contains("alice") && !deny.message.contains(&scope),
        "{}",
        deny.message
    );
    // Spellings that decode to another user are the same user.
    assert_eq!(
        status(decide(
            &alice(),
            "GET",
            "/memories",
            Some("user_id=b%6Fb"),
            None
        )),
        403
    );
    assert_eq!(
        status(decide(
            &alice(),
            "GET",
            "/memories",
            Some("user_id=alice+"),
            None
        )),
        403
    );
}

#[test]
fn own_user_id_is_rewritten_to_the_auto_scope() {
    let policy = Mem0Policy {
        mode: IsolationMode::Auto,
        ..Mem0Policy::default()
    };
    let scope = policy.scope_for(&alice(), Some("/src/app"));
    let f = forward(decide_with(
        &policy,
        &alice(),
        &scope,
        request("GET", "/memories", Some("user_id=alice&run_id=r"), None),
    ));
    assert_eq!(sent_query(&f).get("user_id"), Some(scope.as_str()));
    assert_eq!(f.scope, scope);
}

#[test]
fn malformed_queries_are_400() {
    for query in ["user_id=%zz", "user_id=%", "user_id=%C3", "agent_id=%FF"] {
        assert_eq!(
            status(decide(&alice(), "GET", "/memories", Some(query), None)),
            400,
            "{query}"
        );
    }
}

#[test]
fn awkward_scopes_are_encoded_so_they_round_trip() {
    let shared = "team a&b=c#d+é";
    let policy = Mem0Policy {
        mode: IsolationMode::Global {
            shared_user_id: shared.to_owned(),
        },
        ..Mem0Policy::default()
    };
    let scope = policy.scope_for(&alice(), None);
    let f = forward(decide_with(
        &policy,
        &alice(),
        &scope,
        request("GET", "/memories", Some("user_id=alice"), None),
    ));
    let query = sent_query(&f);
    assert_eq!(
        (query.get("user_id"), query.pairs().len()),
        (Some(shared), 1)
    );
    assert!(!f.query.unwrap().contains(['&', '#', ' ', '+']));
}

#[test]
fn routes_without_query_parameters_refuse_any_even_user_id() {
    let search = Some(r#"{"query":"q"}"#);
    for (method, path, body) in [
        ("POST", "/search", search),
        (
            "POST",
            "/memories",
            Some(r#"{"messages":[{"role":"user","content":"hi"}]}"#),
        ),
        ("GET", "/memories/m1", None),
        ("PUT", "/memories/m1", Some(r#"{"text":"t"}"#)),
        ("DELETE", "/memories/m1", None),
        ("GET", "/memories/m1/history", None),
    ] {
        for query in ["user_id=bob", "user_id=alice", "x=1", "filters=%7B%7D"] {
            let deny = denied(decide(&alice(), method, path, Some(query), body));
            assert_eq!(deny.status, 400, "{method} {path}?{query}");
            assert!(
                deny.message.contains("takes no query parameters"),
                "{}",
                deny.message
            );
        }
        // An empty query is no parameter at all.
        assert!(!matches!(
            decide(&alice(), method, path, Some(""), body),
            Decision::Deny(_)
        ));
    }
    for path in ["/reset", "/configure"] {
        let deny = denied(decide(&root(), "POST", path, Some("force=1"), Some("{}")));
        assert_eq!(deny.status, 400, "{path}");
    }
}

/// `GET /memories?filters=...` would let a mem0 that reads `filters` from
/// the query (or a framework in front of it) pick the owner itself.
#[test]
fn list_and_delete_all_take_only_the_parameters_mem0_defines() {
    let f = forward(decide(
        &alice(),
        "GET",
        "/memories",
        Some("user_id=alice&agent_id=a&run_id=r&top_k=5&show_expired=true"),
        None,
    ));
    assert_eq!(
        f.query.as_deref(),
        Some("user_id=alice&agent_id=a&run_id=r&top_k=5&show_expired=true")
    );
    for query in [
        r#"filters={"user_id":"bob"}"#,
        "filters=%7B%22user_id%22%3A%22bob%22%7D",
        "user_id=alice&limit=5",
        "USER_ID=bob",
        "user_id=alice&page=2",
        "=x",
    ] {
        let deny = denied(decide(&alice(), "GET", "/memories", Some(query), None));
        assert_eq!(deny.status, 400, "{query}");
        assert!(
            deny.message.contains("Unknown query parameter"),
            "{query}: {}",
            deny.message
        );
        assert!(
            deny.message
                .contains("user_id, agent_id, run_id, top_k, show_expired"),
            "{}",
            deny.message
        );
    }
    let deny = denied(decide(
        &alice(),
        "GET",
        "/memories",
        Some("filters=x"),
        None,
    ));
    assert_eq!(
        deny.detail_json(),
        r#"{"detail":"Unknown query parameter \"filters\": GET /memories takes only user_id, agent_id, run_id, top_k, show_expired"}"#
    );
    let p = delete_all_allowed();
    let f = forward(decide_with(
        &p,
        &alice(),
        "alice",
        request("DELETE", "/memories", Some("agent_id=a&run_id=r"), None),
    ));
    assert_eq!(
        f.query.as_deref(),
        Some("agent_id=a&run_id=r&user_id=alice")
    );
    for query in [
        "user_id=alice&top_k=5",
        "user_id=alice&show_expired=true",
        "user_id=alice&x",
    ] {
        let deny = denied(decide_with(
            &p,
            &alice(),
            "alice",
            request("DELETE", "/memories", Some(query), None),
        ));
        assert_eq!(deny.status, 400, "{query}");
    }
}

/// The proxy asks before it reads a body; `authorise` agrees with it.
#[test]
fn the_query_is_judged_before_the_body_is_read() {
    let policy = Mem0Policy {
        allowed_routes: vec![("GET".to_owned(), "/docs".to_owned())],
        ..Mem0Policy::default()
    };
    let check = |method: &str, path: &str, query: &str| {
        let matched = policy.route(method, path).unwrap();
        policy
            .check_query(&matched, Some(query))
            .map_err(|d| d.status)
    };
    assert_eq!(check("GET", "/memories", "user_id=alice&top_k=3"), Ok(()));
    assert_eq!(check("GET", "/memories", ""), Ok(()));
    assert_eq!(check("GET", "/memories", "filters=x"), Err(400));
    assert_eq!(check("GET", "/memories", "user_id=a&user_id=b"), Err(400));
    assert_eq!(check("POST", "/search", "top_k=3"), Err(400));
    assert_eq!(check("GET", "/docs", "anything=1"), Ok(()));
    assert_eq!(check("GET", "/docs", "_method=DELETE"), Err(400));
    for (method, path, query) in [
        ("GET", "/memories", "user_id=alice&top_k=3"),
        ("GET", "/memories", "filters=x"),
        ("POST", "/search", "top_k=3"),
        ("GET", "/docs", "_method=DELETE"),
    ] {
        let body = (method == "POST").then_some(r#"{"query":"q"}"#);
        let decided = decide_with(
            &policy,
            &alice(),
            "alice",
            request(method, path, Some(query), body),
        );
        assert_eq!(
            check(method, path, query).is_err(),
            matches!(decided, Decision::Deny(ref d) if d.status == 400),
            "{method} {path}?{query}: {decided:?}"
        );
    }
}

#[test]
fn unknown_parameter_names_are_shown_shortened() {
    let long = "k".repeat(500);
    let deny = denied(decide(
        &alice(),
        "GET",
        "/memories",
        Some(&format!("{long}=1")),
        None,
    ));
    assert_eq!(deny.status, 400);
    assert!(deny.message.len() < 300, "{}", deny.message);
}

#[test]
fn the_method_parameter_is_refused_on_every_route() {
    for (method, path, body) in [
        ("GET", "/memories", None),
        ("DELETE", "/memories", None),
        ("GET", "/memories/m1", None),
        ("POST", "/search", Some(r#"{"query":"q"}"#)),
    ] {
        for query in [
            "_method=DELETE",
            "user_id=alice&%5Fmethod=DELETE",
            "_METHOD=put",
        ] {
            let deny = denied(decide(&root(), method, path, Some(query), body));
            assert_eq!(deny.status, 400, "{method} {path}?{query}");
            assert!(deny.message.contains("_method"), "{}", deny.message);
        }
    }
    // Also where everything else is forwarded as sent.
    let policy = Mem0Policy {
        allowed_routes: vec![("*".to_owned(), "/docs".to_owned())],
        ..Mem0Policy::default()
    };
    let deny = denied(decide_with(
        &policy,
        &alice(),
        "alice",
        request("GET", "/docs", Some("a=1;_method=DELETE"), None),
    ));
    assert_eq!(deny.status, 400);
    let f = forward(decide_with(
        &policy,
        &alice(),
        "alice",
        request("GET", "/docs", Some("method=x&anything=goes"), None),
    ));
    assert_eq!(f.query.as_deref(), Some("method=x&anything=goes"));
}

/// mem0 2.x adds routes memgate has no owner rules for; they stay closed
/// unless the operator opens them.
#[test]
fn mem0_2026_routes_are_404_unless_allow_listed() {
    let routes = [
        ("GET", "/entities"),
        ("DELETE", "/entities/user/bob"),
        ("GET", "/api-keys"),
        ("POST", "/api-keys"),
        ("DELETE", "/api-keys/k1"),
        ("GET", "/auth/setup-status"),
        ("POST", "/auth/register"),
        ("POST", "/auth/login"),
        ("POST", "/auth/refresh"),
        ("GET", "/auth/me"),
        ("PATCH", "/auth/me"),
        ("POST", "/auth/change-password"),
        ("POST", "/auth/onboarding-complete"),
        ("GET", "/requests"),
        ("GET", "/configure/providers"),
        ("POST", "/generate-instructions"),
    ];
    for (method, path) in routes {
        for who in [alice(), root()] {
            let deny = denied(decide(&who, method, path, None, None));
            assert_eq!(
                (deny.status, deny.detail_json().as_str()),
                (404, r#"{"detail":"Not Found"}"#),
                "{method} {path}"
            );
        }
    }
    // GET /configure (2.x: the running configuration) is a known path with
    // another method: 405.
    assert_eq!(
        status(decide(&root(), "GET", "/configure", None, None)),
        405
    );
    let policy = Mem0Policy {
        allowed_routes: vec![
            ("GET".to_owned(), "/entities".to_owned()),
            ("*".to_owned(), "/auth".to_owned()),
        ],
        ..Mem0Policy::default()
    };
    for (method, path) in [
        ("GET", "/entities"),
        ("POST", "/auth/login"),
        ("GET", "/auth/me"),
    ] {
        let f = forward(decide_with(
            &policy,
            &alice(),
            "alice",
            request(method, path, Some("limit=5"), None),
        ));
        assert_eq!(
            (f.route, f.query.as_deref()),
            (Route::AllowListed, Some("limit=5"))
        );
    }
    assert_eq!(
        status(decide_with(
            &policy,
            &alice(),
            "alice",
            request("DELETE", "/entities/user/bob", None, None),
        )),
        404
    );
}

#[test]
fn admins_may_name_a_user_and_that_becomes_the_scope() {
    let f = forward(decide(
        &root(),
        "GET",
        "/memories",
        Some("user_id=bob"),
        None,
    ));
    assert_eq!(
        (f.scope.as_str(), f.query.as_deref()),
        ("bob", Some("user_id=bob"))
    );
    let body = r#"{"query":"q","user_id":"bob","filters":{"OR":[{"user_id":"bob"}]}}"#;
    let f = forward(decide(&root(), "POST", "/search", None, Some(body)));
    assert_eq!(f.scope, "bob");
    assert_eq!(sent_json(&f, Some(body))["filters"]["user_id"], "bob");
    // Naming a second user inside the filters is still refused.
    let body = r#"{"query":"q","user_id":"bob","filters":{"OR":[{"user_id":"carol"}]}}"#;
    assert_eq!(
        status(decide(&root(), "POST", "/search", None, Some(body))),
        403
    );
}

// ---- bodies: 413 / 415 / 400 -------------------------------------------------------

#[test]
fn body_limits_come_in_order_413_415_400() {
    let policy = Mem0Policy {
        max_body_bytes: 16,
        ..Mem0Policy::default()
    };
    let long = r#"{"messages":[], "x":"0123456789"}"#;
    let mut req = request("POST", "/memories", None, Some(long));
    req.content_type = Some("text/plain");
    assert_eq!(status(decide_with(&policy, &alice(), "alice", req)), 413);
    let mut req = request("POST", "/memories", None, Some("not json"));
    req.content_type = Some("text/plain");
    assert_eq!(status(decide_with(&policy, &alice(), "alice", req)), 415);
    assert_eq!(
        status(decide_with(
            &policy,
            &alice(),
            "alice",
            request("POST", "/memories", None, Some("not json"))
        )),
        400
    );
}

#[test]
fn content_type_must_be_json() {
    for (content_type, expected) in [
        (None, 415),
        (Some("text/plain"), 415),
        (Some("application/jsonx"), 415),
        (Some("application/x-www-form-urlencoded"), 415),
        (Some("application/json; charset=utf-8"), 200),
        (Some("Application/JSON"), 200),
    ] {
        let mut req = request("POST", "/memories", None, Some(r#"{"messages":[]}"#));
        req.content_type = content_type;
        let got = match decide_with(&Mem0Policy::default(), &alice(), "alice", req) {
            Decision::Deny(deny) => deny.status,
            _ => 200,
        };
        assert_eq!(got, expected, "{content_type:?}");
    }
}

#[test]
fn bodies_that_are_not_strict_json_objects_are_400() {
    for body in [
        "",
        "not json",
        "[]",
        r#""user_id""#,
        r#"{"user_id":"alice","user_id":"bob"}"#,
        r#"{"user_id":"alice","user\u005fid":"bob"}"#,
        r#"{"metadata":{"a":1,"a":2}}"#,
        r#"{"messages":[]} trailing"#,
        r#"{"messages":[],}"#,
    ] {
        assert_eq!(
            status(decide(&alice(), "POST", "/memories", None, Some(body))),
            400,
            "{body}"
        );
    }
    let mut req = request("POST", "/memories", None, None);
    req.body = Some(b"{\"messages\":\"\xc3\x28\"}");
    req.content_type = JSON;
    assert_eq!(
        status(decide_with(&Mem0Policy::default(), &alice(), "alice", req)),
        400
    );
}

#[test]
fn deep_nesting_is_400_not_a_crash() {
    let deep = format!(r#"{{"metadata":{}1{}}}"#, "[".repeat(100), "]".repeat(100));
    let deny = denied(decide(&alice(), "POST", "/memories", None, Some(&deep)));
    assert_eq!(deny.status, 400);
    assert!(deny.message.contains("deeper"), "{}", deny.message);
    let hostile = format!(r#"{{"filters":{}"#, "{\"AND\":[".repeat(50_000));
    let policy = Mem0Policy {
        max_body_bytes: usize::MAX,
        ..Mem0Policy::default()
    };
    assert_eq!(
        status(decide_with(
            &policy,
            &alice(),
            "alice",
            request("POST", "/search", None, Some(&hostile))
        )),
        400
    );
}

#[test]
fn required_bodies_and_bodiless_routes() {
    assert_eq!(
        status(decide(&alice(), "POST", "/memories", None, None)),
        400
    );
    assert_eq!(
        status(decide(&alice(), "POST", "/search", None, Some(""))),
        400
    );
    assert_eq!(
        status(decide(&alice(), "PUT", "/memories/m1", None, None)),
        400
    );
    // A body where mem0 reads none is refused rather than smuggled along.
    assert_eq!(
        status(decide(&alice(), "GET", "/memories", None, Some("{}"))),
        400
    );
    assert_eq!(
        status(decide(
            &alice(),
            "DELETE",
            "/memories/m1",
            None,
            Some(r#"{"user_id":"bob"}"#)
        )),
        400
    );
}

#[test]
fn user_id_must_be_a_string() {
    for body in [
        r#"{"user_id":7}"#,
        r#"{"user_id":["bob"]}"#,
        r#"{"user_id":{"eq":"alice"}}"#,
    ] {
        assert_eq!(
            status(decide(&alice(), "POST", "/memories", None, Some(body))),
            400,
            "{body}"
        );
    }
    assert_eq!(
        status(decide(
            &alice(),
            "POST",
            "/search",
            None,
            Some(r#"{"query":"q","filters":"user_id=bob"}"#)
        )),
        400
    );
    assert_eq!(
        status(decide(
            &alice(),
            "POST",
            "/search",
            None,
            Some(r#"{"query":"q","filters":[{"user_id":"bob"}]}"#)
        )),
        400
    );
}

// ---- bodies: owner rules (403) and rewriting --------------------------------------------

#[test]
fn create_forces_the_scope_into_the_body() {
    let body = r#"{"messages":[{"role":"user","content":"hi"}],"agent_id":"a1"}"#;
    let f = forward(decide(&alice(), "POST", "/memories", None, Some(body)));
    assert_eq!(
        sent_json(&f, Some(body)),
        json!({"messages":[{"role":"user","content":"hi"}],"agent_id":"a1","user_id":"alice"})
    );
    assert!(f.route.records_owners());
    let body = r#"{"messages":[],"user_id":null}"#;
    let f = forward(decide(&alice(), "POST", "/memories", None, Some(body)));
    assert_eq!(sent_json(&f, Some(body))["user_id"], "alice");
}

#[test]
fn create_for_another_user_is_403() {
    for body in [
        r#"{"messages":[],"user_id":"bob"}"#,
        r#"{"messages":[],"user_id":"alice","metadata":{"user_id":"bob"}}"#,
        r#"{"messages":[],"metadata":{"nested":{"deeper":[{"user_id":"bob"}]}}}"#,
        r#"{"messages":[{"role":"user","content":"x","user_id":"bob"}]}"#,
        r#"{"messages":[],"filters":{"user_id":"bob"}}"#,
        r#"{"messages":[],"metadata":{"user_id":null}}"#,
        r#"{"messages":[],"metadata":{"user_id":""}}"#,
    ] {
        let deny = denied(decide(&alice(), "POST", "/memories", None, Some(body)));
        assert_eq!(deny.status, 403, "{body}");
        assert!(deny.message.contains("alice"));
    }
}

#[test]
fn own_metadata_user_id_is_rewritten_to_the_scope() {
    let policy = Mem0Policy {
        mode: IsolationMode::Auto,
        ..Mem0Policy::default()
    };
    let scope = policy.scope_for(&alice(), Some("/src/app"));
    let body = r#"{"messages":[],"user_id":"alice","metadata":{"user_id":"alice","topic":"x"}}"#;
    let f = forward(decide_with(
        &policy,
        &alice(),
        &scope,
        request("POST", "/memories", None, Some(body)),
    ));
    let sent = sent_json(&f, Some(body));
    assert_eq!(
        (&sent["user_id"], &sent["metadata"]["user_id"]),
        (&json!(scope), &json!(scope))
    );
    assert_eq!(sent["metadata"]["topic"], "x");
}

#[test]
fn search_filters_naming_others_under_any_operator_are_403() {
    for filters in [
        json!({"user_id": "bob"}),
        json!({"user_id": "*"}),
        json!({"user_id": {"ne": "alice"}}),
        json!({"user_id": {"nin": ["alice"]}}),
        json!({"user_id": {"in": ["alice", "bob"]}}),
        json!({"user_id": {"in": []}}),
        json!({"user_id": {"eq": "bob"}}),
        json!({"user_id": {"eq": "alice", "ne": "alice"}}),
        json!({"user_id": {"gt": ""}}),
        json!({"user_id": {"gte": "a"}}),
        json!({"user_id": {"lt": "zzz"}}),
        json!({"user_id": {"lte": "zzz"}}),
        json!({"user_id": {"contains": "a"}}),
        json!({"user_id": {"icontains": "A"}}),
        json!({"user_id": null}),
        json!({"user_id": 0}),
        json!({"user_id": ""}),
        json!({"OR": [{"user_id": "alice"}, {"user_id": "bob"}]}),
        json!({"AND": [{"agent_id": "a"}, {"OR": [{"NOT": [{"user_id": "bob"}]}]}]}),
        json!({"NOT": [{"user_id": {"in": ["bob"]}}]}),
        json!({"$or": [{"user_id": "bob"}]}),
        json!({"metadata": {"user_id": "bob"}}),
    ] {
        let body = json!({"query": "q", "filters": filters}).to_string();
        let deny = denied(decide(&alice(), "POST", "/search", None, Some(&body)));
        assert_eq!(deny.status, 403, "{body}");
    }
}

#[test]
fn search_filters_naming_only_the_caller_are_rewritten_and_anded() {
    let body = r#"{"query":"q","filters":{"OR":[{"user_id":{"in":["alice"]}},{"agent_id":"a1"}]}}"#;
    let f = forward(decide(&alice(), "POST", "/search", None, Some(body)));
    assert_eq!(
        sent_json(&f, Some(body)),
        json!({"query":"q","user_id":"alice","filters":{"user_id":"alice","OR":[{"user_id":"alice"},{"agent_id":"a1"}]}})
    );
    let body = r#"{"query":"q","filters":{"AND":[{"user_id":{"eq":"alice"}}]}}"#;
    let f = forward(decide(&alice(), "POST", "/search", None, Some(body)));
    assert_eq!(
        sent_json(&f, Some(body))["filters"]["AND"][0]["user_id"],
        "alice"
    );
}

#[test]
fn search_without_filters_gets_them() {
    let body = r#"{"query":"q","filters":null}"#;
    let f = forward(decide(&reader(), "POST", "/search", None, Some(body)));
    assert_eq!(
        sent_json(&f, Some(body)),
        json!({"query":"q","user_id":"reader","filters":{"user_id":"reader"}})
    );
    assert!(f.route.filters_results());
}

#[test]
fn duplicate_keys_inside_filters_are_400() {
    let body = r#"{"query":"q","filters":{"OR":[{"user_id":"alice","user_id":"bob"}]}}"#;
    assert_eq!(
        status(decide(&alice(), "POST", "/search", None, Some(body))),
        400
    );
    let body = r#"{"query":"q","filters":{"user_id":"alice"},"filters":{"user_id":"bob"}}"#;
    assert_eq!(
        status(decide(&alice(), "POST", "/search", None, Some(body))),
        400
    );
}

#[test]
fn global_mode_accepts_own_id_and_the_shared_pool() {
    let policy = Mem0Policy {
        mode: IsolationMode::Global {
            shared_user_id: "kb".to_owned(),
        },
        ..Mem0Policy::default()
    };
    let body = r#"{"query":"q","user_id":"alice","filters":{"user_id":"kb"}}"#;
    let f = forward(decide_with(
        &policy,
        &alice(),
        "kb",
        request("POST", "/search", None, Some(body)),
    ));
    assert_eq!(sent_json(&f, Some(body))["user_id"], "kb");
    let body = r#"{"query":"q","user_id":"bob"}"#;
    assert_eq!(
        status(decide_with(
            &policy,
            &alice(),
            "kb",
            request("POST", "/search", None, Some(body))
        )),
        403
    );
}

#[test]
fn update_needs_the_owner_and_keeps_unchanged_bodies_as_sent() {
    let body = r#"{"text":"new","metadata":{"k":"v"}}"#;
    let need = need_owner(decide(&alice(), "PUT", "/memories/m1", None, Some(body)));
    assert_eq!(
        (need.memory_id.as_str(), need.scope.as_str()),
        ("m1", "alice")
    );
    assert_eq!(need.forward.body, None);
    let body = r#"{"text":"new","metadata":{"user_id":"bob"}}"#;
    assert_eq!(
        status(decide(&alice(), "PUT", "/memories/m1", None, Some(body))),
        403
    );
}

#[test]
fn empty_scope_is_refused() {
    let deny = denied(decide_with(
        &Mem0Policy::default(),
        &alice(),
        "",
        request("GET", "/memories", None, None),
    ));
    assert_eq!(deny.status, 403);
}

// ---- ownership ------------------------------------------------------------------------

#[test]
fn owner_decisions() {
    assert_eq!(decide_owner(&alice(), "alice", "m1", Some("alice")), Ok(()));
    let missing = decide_owner(&alice(), "alice", "m1", None).unwrap_err();
    assert_eq!(
        (missing.status, missing.detail_json().as_str()),
        (404, r#"{"detail":"Memory not found"}"#)
    );
    let other = decide_owner(&alice(), "alice", "m1", Some("bob")).unwrap_err();
    assert_eq!(
        (other.status, other.message.as_str()),
        (
            403,
            "Access denied: Memory m1 does not belong to user alice"
        )
    );
    assert_eq!(
        decide_owner(&alice(), "alice", "m1", Some(""))
            .unwrap_err()
            .status,
        403
    );
    assert_eq!(decide_owner(&root(), "root", "m1", Some("bob")), Ok(()));
    assert_eq!(
        decide_owner(&root(), "root", "m1", None)
            .unwrap_err()
            .status,
        404
    );
}

#[test]
fn owner_denials_name_the_token_user_not_the_auto_scope() {
    let scope = crate::policy::scope::project_scope("alice", "/src/app");
    let deny = decide_owner(&alice(), &scope, "m1", Some("alice")).unwrap_err();
    assert_eq!(
        deny.message,
        "Access denied: Memory m1 does not belong to user alice"
    );
}

// ---- responses --------------------------------------------------------------------------

#[test]
fn results_of_other_users_are_dropped() {
    let response = json!({"results": [
        {"id": "1", "user_id": "alice"},
        {"id": "2", "user_id": "bob"},
        {"id": "3"},
        {"id": "4", "user_id": null},
        "junk",
        {"id": "5", "user_id": "alice"}
    ], "relations": []});
    let (kept, dropped) = filter_results("alice", response);
    assert_eq!(dropped, 4);
    assert_eq!(
        kept,
        json!({"results": [{"id": "1", "user_id": "alice"}, {"id": "5", "user_id": "alice"}], "relations": []})
    );
    let (kept, dropped) = filter_results("alice", json!([{"user_id": "bob"}]));
    assert_eq!((kept, dropped), (json!([]), 1));
    let (kept, dropped) = filter_results("alice", json!({"detail": "boom"}));
    assert_eq!((kept, dropped), (json!({"detail": "boom"}), 0));
}

#[test]
fn plain_create_answers_are_read_by_the_cursor() {
    fn read(text: &str) -> Option<Vec<&str>> {
        created_ids_scanned(text.as_bytes())
    }
    // mem0's answers, compact and spaced as Python's json writes them.
    assert_eq!(
        read(r#"{"results":[{"id":"a","memory":"x","event":"ADD"}]}"#),
        Some(vec!["a"])
    );
    assert_eq!(
        read(
            r#" {"results": [{"id": "a", "memory": "x", "event": "ADD", "metadata": {"n": [1, -2.5, null]}},
                {"id": "b", "event": "DELETE"}, {"id": 7}, {"event": "ADD"}, 3, ["id"]],
               "relations": {"added_entities": [], "deleted_entities": []}} "#
        ),
        Some(vec!["a"])
    );
    assert_eq!(read(r#"[{"id":"z","event":"UPDATE"}]"#), Some(vec!["z"]));
    assert_eq!(read(r#"{"detail":"x"}"#), Some(vec![]));
    assert_eq!(
        read(r#"{"results":[{"id":"a"}],"results":"x"}"#),
        Some(vec![])
    );
    assert_eq!(
        read(r#"{"results":[{"id":"a","id":"b"}]}"#),
        Some(vec!["b"])
    );
    assert_eq!(read("null"), Some(vec![]));
    // Not sure: serde reads these (escapes, exponents), or refuses them.
    for text in [
        r#"{"results":[{"id":"\u0061"}]}"#,
        r#"{"results":[{"id":"a","event":"DEL\u0045TE"}]}"#,
        r#"{"res\u0075lts":[{"id":"a"}]}"#,
        r#"{"results":[{"id":"a","n":1e3}]}"#,
        r#"{"results":[{"id":"a","m":{"k":1,"k":2}}]}"#,
        r#"{"results":[{"id":"a"}]"#,
        r#"{"results":[{"id":"a"},]}"#,
        r#"{"results":[{"id":"a"}]} x"#,
        "",
    ] {
        assert_eq!(read(text), None, "{text}");
    }
    assert_eq!(
        owner_ids_in(br#"{"results":[{"id":"\u0061","event":"ADD"}]}"#).unwrap(),
        ["a"]
    );
}

#[test]
fn created_ids_and_owners_are_read_from_responses() {
    let created = json!({"results": [
        {"id": "a", "memory": "x", "event": "ADD"},
        {"id": "b", "memory": "y", "event": "UPDATE"},
        {"id": "c", "memory": "z", "event": "DELETE"},
        {"id": 4, "event": "ADD"}
    ]});
    assert_eq!(owner_ids_from_create_response(&created), ["a", "b"]);
    assert_eq!(owner_ids_from_create_response(&json!([{"id": "z"}])), ["z"]);
    assert!(owner_ids_from_create_response(&json!({"detail": "x"})).is_empty());
    assert_eq!(owner_from_get_response(&json!(null)), None);
    assert_eq!(
        owner_from_get_response(&json!({"id": "m", "user_id": "bob"})).as_deref(),
        Some("bob")
    );
    assert_eq!(
        owner_from_get_response(&json!({"id": "m", "agent_id": "a"})).as_deref(),
        Some("")
    );
}

#[test]
fn fuzz_entry_survives_samples() {
    for sample in [
        &b""[..],
        b"\n\n\n\n",
        b"POST\n/search\n\napplication/json\n{\"query\":\"q\",\"filters\":{\"OR\":[{\"user_id\":\"bob\"}]}}",
        b"GET\n/memories/%2e%2e\nuser_id=a&user_id=b\n\n",
        b"DELETE\n/memories\nagent_id=x\n\n",
        b"PUT\n/memories/m\n\napplication/json\n{\"metadata\":{\"user_id\":\"alice\"}}",
        b"POST\n/memories\n\napplication/json\n{\"results\":[{\"user_id\":\"bob\"}]}",
        b"\xff\xfe\n\xff\n\xff\n\xff\n\xff",
    ] {
        fuzz_entry(sample);
    }
}

#[test]
fn an_ordinary_create_is_scoped_without_building_a_tree() {
    let policy = Mem0Policy::default();
    let body = br#"{"messages":[{"role":"user","content":"I prefer tea"}],"metadata":{"source":"cli"},"infer":false}"#;
    let plain = policy.scope_plain_body(&alice(), "alice", Route::CreateMemories, JSON, Some(body));
    let expected = br#"{"user_id":"alice","messages":[{"role":"user","content":"I prefer tea"}],"metadata":{"source":"cli"},"infer":false}"#;
    assert_eq!(
        plain,
        Some(Ok(("alice".to_owned(), Some(expected.to_vec()))))
    );
    let own = br#"{"user_id":"alice","memory":"x"}"#;
    let plain = policy.scope_plain_body(&alice(), "alice", Route::UpdateMemory, JSON, Some(own));
    assert_eq!(plain, Some(Ok(("alice".to_owned(), None))));
    let other = br#"{"user_id":"bob","messages":[]}"#;
    let plain =
        policy.scope_plain_body(&alice(), "alice", Route::CreateMemories, JSON, Some(other));
    assert!(matches!(plain, Some(Err(deny)) if deny.status == 403));
    // A nested user_id is a filter condition: the parsed tree decides it.
    let nested = br#"{"metadata":{"user_id":"alice"},"messages":[]}"#;
    let plain =
        policy.scope_plain_body(&alice(), "alice", Route::CreateMemories, JSON, Some(nested));
    assert_eq!(plain, None);
}
