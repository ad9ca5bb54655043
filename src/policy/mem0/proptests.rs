//! Property tests: random requests (routes and junk paths, polluted queries,
//! JSON bodies hiding `user_id` at every level of `filters` and `metadata`)
//! must never make the policy forward another user's id, and nothing panics.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::identity::Permissions;
use crate::policy::query::{Query, force_user_id};

/// Names a request might carry: the callers, their scopes, strangers, traps.
fn name() -> impl Strategy<Value = String> {
    // Weighted towards names the caller may use, so that many requests get
    // through and the rewriting itself is exercised.
    prop_oneof![
        8 => Just("alice".to_owned()),
        4 => Just(project_scope_of("alice")),
        4 => Just("kb".to_owned()),
        1 => Just("bob".to_owned()),
        1 => Just("root".to_owned()),
        1 => Just(String::new()),
        1 => Just("*".to_owned()),
        1 => Just("alice ".to_owned()),
        1 => "[a-z&=#% ]{1,6}",
    ]
}

fn project_scope_of(user: &str) -> String {
    crate::policy::scope::project_scope(user, "/src/app")
}

/// A value for a `user_id` key: plain, or an operator of mem0's filter syntax.
fn user_condition() -> impl Strategy<Value = Value> {
    let op = prop_oneof![
        Just("eq"),
        Just("eq"),
        Just("in"),
        Just("ne"),
        Just("in"),
        Just("nin"),
        Just("gt"),
        Just("gte"),
        Just("lt"),
        Just("lte"),
        Just("contains"),
        Just("icontains"),
        Just("like")
    ];
    prop_oneof![
        name().prop_map(Value::String),
        (op, name()).prop_map(|(op, n)| json!({ op: n })),
        prop::collection::vec(name(), 0..3).prop_map(|ns| json!({ "in": ns })),
        Just(Value::Null),
        Just(json!(7)),
        (name(), name()).prop_map(|(a, b)| json!({"eq": a, "ne": b})),
    ]
}

/// A mem0 2.x filter tree with `user_id` conditions anywhere in it.
fn filter_tree() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        user_condition().prop_map(|c| json!({ "user_id": c })),
        name().prop_map(|n| json!({ "agent_id": n })),
        name().prop_map(|n| json!({ "metadata": { "user_id": n } })),
        Just(json!({ "category": { "in": ["a", "b"] } })),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        let logic = prop_oneof![Just("AND"), Just("OR"), Just("NOT"), Just("$or")];
        prop_oneof![
            (logic, prop::collection::vec(inner.clone(), 0..3)).prop_map(|(k, v)| json!({ k: v })),
            (inner.clone(), inner).prop_map(|(a, b)| {
                let mut merged = a.as_object().cloned().unwrap_or_default();
                merged.extend(b.as_object().cloned().unwrap_or_default());
                Value::Object(merged)
            }),
        ]
    })
}

/// A JSON object as a client of `/memories`, `/search` or `PUT` might send it,
/// with user ids at the top, in `metadata`, in `messages` and in `filters`.
fn json_body() -> impl Strategy<Value = Value> {
    let top_user = prop_oneof![
        2 => Just(None),
        4 => name().prop_map(|n| Some(Value::String(n))),
        1 => Just(Some(Value::Null)),
        1 => Just(Some(json!(1))),
    ];
    let metadata = prop_oneof![
        Just(None),
        name().prop_map(|n| Some(json!({ "user_id": n }))),
        name().prop_map(|n| Some(json!({ "a": [{ "user_id": n }] }))),
        Just(Some(json!({ "topic": "x" }))),
    ];
    let filters = prop_oneof![
        2 => Just(None),
        6 => filter_tree().prop_map(Some),
        1 => Just(Some(Value::Null)),
        1 => Just(Some(json!("user_id=bob"))),
    ];
    (top_user, metadata, filters, any::<bool>()).prop_map(|(user, metadata, filters, messages)| {
        let mut body = serde_json::Map::new();
        body.insert("query".into(), json!("q"));
        if messages {
            body.insert(
                "messages".into(),
                json!([{"role": "user", "content": "hi", "user_id": "alice"}]),
            );
        }
        for (key, value) in [
            ("user_id", user),
            ("metadata", metadata),
            ("filters", filters),
        ] {
            if let Some(value) = value {
                body.insert(key.into(), value);
            }
        }
        Value::Object(body)
    })
}

/// Bodies whose only owner is at the top (or none): what the scan's
/// shortcut takes, with the spellings it must leave to the full parse.
fn top_level_only_body() -> impl Strategy<Value = String> {
    let owner = prop_oneof![
        2 => Just(String::new()),
        6 => name().prop_map(|n| format!("\"user_id\":{},", Value::String(n))),
        1 => Just("\"user_id\":null,".to_owned()),
        1 => Just("\"user_id\":\"\\u0061lice\",".to_owned()),
        1 => Just("\"user_id\":\"bob\",\"user_id\":\"alice\",".to_owned()),
    ];
    let rest = prop_oneof![
        Just(r#""messages":[{"role":"user","content":"tea \"please\"\n"}]"#),
        Just(r#""metadata":{"topic":"x","n":[1,-2.5,true,null]},"infer":false"#),
        Just(r#""memory":"new text""#),
        Just(r#""data":"x","data":"y""#),
        Just(r#""n":1e3"#),
    ];
    (owner, rest, any::<bool>()).prop_map(|(owner, rest, spaced)| {
        if spaced {
            format!("{{ {owner}\n {rest} }}")
        } else {
            format!("{{{owner}{rest}}}")
        }
    })
}

/// Request bodies: mostly [`json_body`], sometimes with a second `user_id`
/// smuggled in (plainly or escaped), sometimes not JSON at all.
fn body() -> impl Strategy<Value = Option<String>> {
    let object = (json_body(), any::<u8>()).prop_map(|(body, dup)| {
        let text = body.to_string();
        let open = text.trim_end_matches('}');
        match dup % 8 {
            0 => Some(format!("{open},\"user_id\":\"bob\"}}")),
            1 => Some(format!("{open},\"user\\u005fid\":\"bob\"}}")),
            _ => Some(text),
        }
    });
    prop_oneof![
        4 => object,
        1 => Just(None),
        1 => ".{0,40}".prop_map(Some),
        1 => Just(Some("[{\"user_id\":\"bob\"}]".to_owned())),
    ]
}

fn query() -> impl Strategy<Value = Option<String>> {
    let key = prop_oneof![
        Just("user_id"),
        Just("user%5Fid"),
        Just("agent_id"),
        Just("run_id"),
        Just("top_k"),
        Just("u+id")
    ];
    let pair = (key, name())
        .prop_map(|(k, v)| format!("{k}={}", v.replace('&', "%26").replace('#', "%23")));
    prop_oneof![
        4 => prop::collection::vec(pair, 0..4).prop_map(|pairs| Some(pairs.join("&"))),
        1 => Just(None),
        1 => "[a-z_=&%+]{0,20}".prop_map(Some),
    ]
}

/// (method, raw path): mostly real routes (with trailing-slash and encoded-id
/// variants), sometimes a wrong method, sometimes a hostile or junk path.
fn target() -> impl Strategy<Value = (String, String)> {
    let id = prop_oneof![
        Just("m1".to_owned()),
        Just("%6D1".to_owned()),
        Just("a%20b".to_owned()),
        "[a-z0-9]{1,8}"
    ];
    let real = id.prop_flat_map(|id| {
        prop::sample::select(vec![
            ("GET", "/memories".to_owned()),
            ("GET", "/memories/".to_owned()),
            ("POST", "/memories".to_owned()),
            ("DELETE", "/memories".to_owned()),
            ("POST", "/search".to_owned()),
            ("POST", "/search/".to_owned()),
            ("POST", "/reset".to_owned()),
            ("POST", "/configure".to_owned()),
            ("GET", format!("/memories/{id}")),
            ("PUT", format!("/memories/{id}")),
            ("DELETE", format!("/memories/{id}/")),
            ("GET", format!("/memories/{id}/history")),
            ("GET", "/docs".to_owned()),
        ])
    });
    let hostile = prop::sample::select(vec![
        "/memories/%2e%2e/reset",
        "/memories/..%2Freset",
        "/memories/%252e%252e",
        "/memories%2Freset",
        "/memories\\..\\reset",
        "/memories/a%00",
        "//memories",
        "/Memories",
        "/memories/a/b",
    ]);
    prop_oneof![
        6 => real.prop_map(|(m, p)| (m.to_owned(), p)),
        1 => (method(), hostile).prop_map(|(m, p)| (m, p.to_owned())),
        1 => (method(), "/[/a-z%.25eEfF\\\\]{0,16}"),
    ]
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_owned()),
        Just("POST".to_owned()),
        Just("PUT".to_owned()),
        Just("DELETE".to_owned()),
        Just("PATCH".to_owned()),
        Just("get".to_owned()),
        "[A-Z]{0,7}",
    ]
}

fn identity() -> impl Strategy<Value = Identity> {
    prop_oneof![
        Just(("alice", "read,write")),
        Just(("alice", "read")),
        Just(("root", "admin"))
    ]
    .prop_map(|(user, perms)| Identity {
        user_id: user.to_owned(),
        permissions: Permissions::parse(perms).unwrap_or_default(),
        token_prefix: "mcp_proptest".to_owned(),
    })
}

fn mode() -> impl Strategy<Value = IsolationMode> {
    prop_oneof![
        Just(IsolationMode::Manual),
        Just(IsolationMode::Auto),
        Just(IsolationMode::Global {
            shared_user_id: "kb".to_owned()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn forwarded_requests_name_only_the_callers_scope(
        (method, path) in target(),
        query in query(),
        body in body(),
        body_on_bodiless in prop::bool::weighted(0.1),
        who in identity(),
        mode in mode(),
        project in prop_oneof![Just(None), Just(Some("/src/app")), Just(Some("  "))],
        allow_delete_all in any::<bool>(),
        json_type in prop::bool::weighted(0.9),
    ) {
        let policy = Mem0Policy { mode, allow_delete_all, ..Mem0Policy::default() };
        let scope = policy.scope_for(&who, project);
        let takes_body = matches!(method.as_str(), "POST" | "PUT");
        let body = body.filter(|_| takes_body || body_on_bodiless);
        let request = Mem0Request {
            method: &method,
            path: &path,
            query: query.as_deref(),
            content_type: Some(if json_type { "application/json" } else { "text/plain" }),
            body: body.as_deref().map(str::as_bytes),
        };
        let forward = match policy.decide(&who, &scope, &request) {
            Decision::Deny(deny) => {
                prop_assert!(matches!(deny.status, 400 | 403 | 404 | 405 | 413 | 415), "{deny}");
                if !who.permissions.admin {
                    prop_assert!(!deny.message.contains(&scope) || scope == who.user_id);
                }
                return Ok(());
            }
            Decision::Forward(forward) => forward,
            Decision::NeedOwner(need) => {
                prop_assert_eq!(&need.scope, &scope);
                need.forward
            }
        };
        prop_assert!(forwards_only_scope(&forward, request.body), "{:?}", forward);
        if !who.permissions.admin {
            prop_assert_eq!(&forward.scope, &scope);
        }
    }

    #[test]
    fn rewritten_bodies_name_only_the_scope(
        (method, path) in prop::sample::select(vec![
            ("POST", "/memories"), ("POST", "/search"), ("PUT", "/memories/m1"),
        ]),
        body in json_body(),
        admin in any::<bool>(),
        mode in mode(),
        project in prop_oneof![Just(None), Just(Some("/src/app"))],
    ) {
        let who = Identity {
            user_id: "alice".to_owned(),
            permissions: Permissions { read: true, write: true, admin },
            token_prefix: "mcp_proptest".to_owned(),
        };
        let policy = Mem0Policy { mode, ..Mem0Policy::default() };
        let scope = policy.scope_for(&who, project);
        let text = body.to_string();
        let request = Mem0Request {
            method,
            path,
            query: None,
            content_type: Some("application/json"),
            body: Some(text.as_bytes()),
        };
        let forward = match policy.decide(&who, &scope, &request) {
            Decision::Deny(deny) => {
                prop_assert!(matches!(deny.status, 400 | 403), "{deny}");
                return Ok(());
            }
            Decision::Forward(forward) => forward,
            Decision::NeedOwner(need) => need.forward,
        };
        prop_assert!(forwards_only_scope(&forward, request.body), "{:?}", forward);
        if !admin {
            prop_assert_eq!(&forward.scope, &scope);
        }
    }

    /// The scan's shortcut decides every body it takes exactly as the parsed
    /// tree does: same scope, same bytes sent, same refusal.
    #[test]
    fn plain_bodies_are_scoped_as_parsed_ones(
        route in prop::sample::select(vec![Route::CreateMemories, Route::UpdateMemory, Route::Search]),
        body in prop_oneof![body(), top_level_only_body().prop_map(Some)],
        who in identity(),
        mode in mode(),
        project in prop_oneof![Just(None), Just(Some("/src/app"))],
    ) {
        let policy = Mem0Policy { mode, ..Mem0Policy::default() };
        let scope = policy.scope_for(&who, project);
        let sent = body.as_deref().map(str::as_bytes);
        let json = Some("application/json");
        if let Some(plain) = policy.scope_plain_body(&who, &scope, route, json, sent) {
            prop_assert_eq!(plain, policy.scope_parsed_body(&who, &scope, route, json, sent));
        }
    }

    #[test]
    fn nothing_panics_on_arbitrary_input(
        method in ".{0,8}",
        path in ".{0,24}",
        query in ".{0,24}",
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut data = format!("{method}\n{path}\n{query}\napplication/json\n").into_bytes();
        data.extend_from_slice(&body);
        fuzz_entry(&data);
    }

    #[test]
    fn forced_user_ids_round_trip(raw in "[a-z_=&%+0-9A-F]{0,24}", value in ".{0,16}") {
        if let Ok(rebuilt) = force_user_id(Some(&raw), &value) {
            let parsed = Query::parse(&rebuilt).unwrap_or_default();
            prop_assert_eq!(parsed.get("user_id"), Some(value.as_str()));
        }
    }

    #[test]
    fn path_encoding_round_trips(segments in prop::collection::vec(r"[^%/\\\p{Cc}]{1,6}", 1..4)) {
        let decoded = format!("/{}", segments.join("/"));
        prop_assume!(segments.iter().all(|s| s != "." && s != ".."));
        prop_assert_eq!(crate::policy::path::normalise(&crate::policy::path::encode(&decoded)), Ok(decoded));
    }
}

/// Create answers in mem0's shapes and off them: lists, `results` (also
/// repeated, or not a list), items with odd ids and events, junk around.
fn create_answer() -> impl Strategy<Value = String> {
    let text = prop_oneof![
        Just(json!("m1")),
        Just(json!("m\"2\u{e9}")),
        Just(json!("DELETE")),
        Just(json!("ADD")),
        Just(json!(7)),
        Just(json!(null)),
        Just(json!(["x"])),
        Just(json!({"id": "inner"})),
    ];
    let item = prop::collection::vec(
        (
            prop_oneof![Just("id"), Just("event"), Just("memory"), Just("idx")],
            text,
        ),
        0..5,
    )
    .prop_map(|members| {
        // Repeated keys on purpose: the last one counts, as in a Value.
        let body: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", body.join(","))
    });
    let item = prop_oneof![4 => item, 1 => Just("3".to_owned()), 1 => Just("[\"id\"]".to_owned())];
    let list = prop::collection::vec(item, 0..4).prop_map(|items| format!("[{}]", items.join(",")));
    prop_oneof![
        list.clone(),
        (list.clone(), list.clone())
            .prop_map(|(a, b)| format!("{{\"results\":{a},\"relations\":[],\"results\":{b}}}")),
        list.clone()
            .prop_map(|a| format!("{{\"detail\":\"x\",\"results\":{a}}}")),
        list.clone()
            .prop_map(|a| format!("{{\"results\":{a},\"results\":\"x\"}}")),
        list.prop_map(|a| format!("{{\"results\":{{\"results\":{a}}}}}")),
        Just("\"results\"".to_owned()),
        Just("null".to_owned()),
    ]
}

/// List and search answers in mem0's shapes and off them.
fn list_answer() -> impl Strategy<Value = String> {
    let owner = prop_oneof![
        Just("\"alice\""),
        Just("\"al\\u0069ce\""),
        Just("\"bob\""),
        Just("\"\""),
        Just("null"),
        Just("7"),
        Just("[\"alice\"]"),
        Just("{\"eq\":\"alice\"}"),
    ];
    let member = prop_oneof![
        owner.prop_map(|o| format!("\"user_id\":{o}")),
        Just("\"memory\":\"x\"".to_owned()),
        Just("\"metadata\":{\"user_id\":\"bob\"}".to_owned()),
    ];
    let item = prop_oneof![
        6 => prop::collection::vec(member, 0..4).prop_map(|m| format!("{{{}}}", m.join(","))),
        1 => Just("3".to_owned()),
        1 => Just("\"alice\"".to_owned()),
        1 => Just("[{\"user_id\":\"alice\"}]".to_owned()),
    ];
    let list = prop::collection::vec(item, 0..5).prop_map(|items| format!("[{}]", items.join(",")));
    prop_oneof![
        list.clone(),
        list.clone().prop_map(|a| format!("{{\"results\":{a}}}")),
        (list.clone(), list.clone())
            .prop_map(|(a, b)| format!("{{\"results\":{a},\"relations\":[],\"results\":{b}}}")),
        list.clone()
            .prop_map(|a| format!("{{\"results\":{{\"results\":{a}}}}}")),
        list.prop_map(|a| format!("{{\"results\":\"x\",\"other\":{a}}}")),
        Just("null".to_owned()),
    ]
}

proptest! {
    /// Reading the ids straight from the text finds what the `Value` reading
    /// finds, for every shape.
    #[test]
    fn created_ids_read_from_text_match_the_value_reading(text in create_answer()) {
        let value: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(owner_ids_in(text.as_bytes()).unwrap(), owner_ids_from_create_response(&value));
        if let Some(ids) = created_ids_scanned(text.as_bytes()) {
            prop_assert_eq!(ids, owner_ids_from_create_response(&value));
        }
    }

    /// The cursor is worth having: it counts in mem0's own list answers,
    /// however Python spaced them.
    #[test]
    fn the_cursor_counts_in_mem0_list_answers(
        owners in prop::collection::vec(prop_oneof![Just("alice"), Just("bob")], 0..5),
        pretty in any::<bool>(),
        wrapped in any::<bool>(),
    ) {
        let items: Vec<Value> = owners
            .iter()
            .map(|owner| json!({"id": "m", "memory": "likes \"tea\"", "user_id": owner, "metadata": {"n": [1, 2.5]}, "score": 0.5}))
            .collect();
        let answer = if wrapped { json!({"results": items, "relations": []}) } else { Value::Array(items) };
        let text = if pretty {
            serde_json::to_vec_pretty(&answer).unwrap()
        } else {
            serde_json::to_vec(&answer).unwrap()
        };
        let foreign = owners.iter().filter(|owner| **owner != "alice").count();
        prop_assert_eq!(foreign_items_scanned("alice", &text), Some(foreign));
    }

    /// The cursor is worth having: it reads mem0's own create answers,
    /// however Python spaced them.
    #[test]
    fn the_cursor_reads_mem0_create_answers(
        items in prop::collection::vec(
            ("[a-f0-9-]{1,36}", prop_oneof![Just("ADD"), Just("UPDATE"), Just("DELETE"), Just("NONE")], "[ -~\u{e9}]{0,20}"),
            0..4,
        ),
        pretty in any::<bool>(),
    ) {
        let results: Vec<Value> = items
            .iter()
            .map(|(id, event, memory)| json!({"id": id, "memory": memory, "event": event}))
            .collect();
        let answer = json!({"results": results, "relations": {"added_entities": []}});
        let text = if pretty {
            serde_json::to_vec_pretty(&answer).unwrap()
        } else {
            serde_json::to_vec(&answer).unwrap()
        };
        let expected: Vec<&str> = items
            .iter()
            .filter(|(_, event, _)| *event != "DELETE")
            .map(|(id, _, _)| id.as_str())
            .collect();
        prop_assert_eq!(created_ids_scanned(&text), Some(expected));
    }

    /// Counting foreign items straight from the text finds as many as
    /// filtering the `Value` drops, for list and search answers of every
    /// shape (items owned by others, by nobody, twice, or not items at all).
    #[test]
    fn foreign_items_read_from_text_match_the_filter(
        text in list_answer(),
        scope in prop_oneof![Just("alice"), Just("bob"), Just("")],
    ) {
        let value: Value = serde_json::from_str(&text).unwrap();
        let (kept, dropped) = filter_results(scope, value);
        prop_assert_eq!(foreign_items_in(scope, text.as_bytes()).unwrap(), dropped);
        if let Some(foreign) = foreign_items_scanned(scope, text.as_bytes()) {
            prop_assert_eq!(foreign, dropped);
        }
        let expected = (dropped > 0).then(|| (crate::policy::json::to_bytes(&kept), dropped));
        prop_assert_eq!(filter_answer(scope, text.as_bytes()).unwrap(), expected);
    }
}
