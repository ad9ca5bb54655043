//! memgate's own requests to the mem0 upstream, made without the gate's
//! policy in between: the owner lookups of `crate::ownership`, and the
//! listings and deletions of `memgate user export|delete`.
//!
//! Deletion lists a scope's memories and deletes them one by one
//! (`DELETE /memories/{id}`), never with `DELETE /memories?user_id=…`: on
//! mem0 0.1.118–1.0.5 that route ends in `vector_store.reset()` and drops
//! every user's memories (docs/design.md §4). mem0 lists at most a fixed number
//! of memories and cannot page ([`MEM0_LIST_MAX`]): deletion lists again
//! until nothing is left, and an export says when a listing was cut short.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use bytes::Bytes;
use serde_json::Value;

use super::exchange::{Exchanged, UpstreamClient};
use super::target::UpstreamTarget;
use crate::config::Config;
use crate::http1::request::{InvalidHead, RequestHead};
use crate::listener::Listener;
use crate::policy::header_names::{X_MCP_USERID, X_MEMGATE_SCOPE};
use crate::policy::mem0::memory_path;
use crate::policy::percent;

/// `GET /memories/{id}` as memgate asks it to learn who owns a memory: with
/// no identity headers, so mem0 answers the item whoever owns it (or 404, or
/// 200 `null`). A failed exchange is the status the client is answered with
/// ([`super::upstream_failure`]: 504 when mem0 went quiet, else 502).
pub async fn get_memory(
    client: &UpstreamClient,
    memory_id: &str,
    max_response: usize,
) -> std::result::Result<Exchanged, u16> {
    let head = || {
        let mut req = RequestHead::new(&http::Method::GET, &memory_path(memory_id))?;
        req.header(&http::header::HOST, client.target().authority().as_bytes())?;
        req.header(&http::header::ACCEPT, b"application/json")?;
        Ok::<_, InvalidHead>(req)
    };
    // A memory id the policy let through always makes a valid head.
    let req = head().map_err(|_| 502u16)?;
    client
        .exchange(req, None, max_response)
        .await
        .map_err(|e| super::upstream_failure(Listener::Mem0, &e).0)
}

/// How many memories mem0's `GET /memories?user_id=…` hands out, by server
/// version (`server/main.py` and `Memory.get_all` of mem0ai):
///
/// - 1.0.x (October 2025): the route declares only `user_id`, `run_id` and
///   `agent_id` and calls `get_all` with its default `limit=100`. FastAPI
///   drops undeclared query parameters, so `top_k` is ignored: at most 100.
/// - 2.0.0–2.0.7: the same route; `get_all`'s default became `top_k=20`:
///   at most 20, and no way to ask for more.
/// - 2.0.8 and later (2026): `top_k: Query(None, ge=0, le=1000)`
///   (`ALL_MEMORIES_LIMIT`); without it `get_all` answers 20; over 1000 is a
///   422.
///
/// From 2.0.10 (release tags of the mem0 repository) `get_all` also hides memories past their `expiration_date`
/// unless `show_expired=true`; they are still stored, so export and delete ask
/// for them (older servers ignore the parameter).
///
/// None of them pages: there is no `page`, `offset` or cursor, and the order
/// is the vector store's. A listing as long as the server's limit may be cut
/// short, and the only way past it is deleting what was listed and listing
/// again.
const MEM0_LIST_MAX: usize = 1000;

/// The fixed limits of the versions that ignore `top_k` (1.0.x, 2.0.0–2.0.7).
const MEM0_FIXED_LIMITS: [usize; 2] = [100, 20];

/// Rounds of list-then-delete one scope may take before `user delete` gives
/// up: at 20 a round (the smallest limit above) that is 20 000 memories.
const MAX_DELETE_ROUNDS: usize = 1000;

/// The mem0 upstream, spoken to directly (not through memgate's policy).
pub struct Mem0Client {
    client: UpstreamClient,
    max_response: usize,
    user_id: String,
}

enum Deleted {
    Now,
    AlreadyGone,
}

impl Mem0Client {
    pub fn new(config: &Config, user_id: &str) -> anyhow::Result<Mem0Client> {
        let target = UpstreamTarget::new("mem0.upstream", &config.mem0.listener())?;
        Ok(Mem0Client {
            client: UpstreamClient::new(Arc::new(target)),
            // An export is one response per scope: allow more than the proxy does.
            max_response: config.limits.max_response_bytes.max(256 << 20),
            user_id: user_id.to_string(),
        })
    }

    fn upstream(&self) -> String {
        self.client.target().authority().to_string()
    }

    /// One request to mem0 on behalf of `scope`; returns (status, JSON body or Null).
    async fn call(&self, method: &str, path: &str, scope: &str) -> anyhow::Result<(u16, Value)> {
        let fail = |e: InvalidHead| anyhow!("{method} {path}: {e}");
        let method_ = http::Method::from_bytes(method.as_bytes())
            .map_err(|_| anyhow!("{method} {path}: invalid method"))?;
        let mut req = RequestHead::new(&method_, path).map_err(fail)?;
        req.header(&http::header::HOST, self.upstream().as_bytes())
            .map_err(fail)?;
        req.header(&http::header::ACCEPT, b"application/json")
            .map_err(fail)?;
        // The identity headers the gate sends upstream.
        req.header(&X_MCP_USERID, self.user_id.as_bytes())
            .map_err(fail)?;
        req.header(&X_MEMGATE_SCOPE, scope.as_bytes())
            .map_err(fail)?;
        let answer = self
            .client
            .exchange(req, None::<Bytes>, self.max_response)
            .await
            .map_err(|e| anyhow!("mem0 upstream {}: {method} {path}: {e}", self.upstream()))?;
        let status = answer.header.status.as_u16();
        let body = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// One listing of `scope`, asking for up to `top_k` memories. Keeps only
    /// the memories whose `user_id` is the scope (a mem0 that ignores the
    /// filter must not hand over, or get us to delete, anyone else's).
    pub async fn list(&self, scope: &str, top_k: usize) -> anyhow::Result<Listing> {
        let path = format!(
            "/memories?user_id={}&top_k={top_k}&show_expired=true",
            percent::encode(scope, percent::is_unreserved)
        );
        let (status, body) = self.call("GET", &path, scope).await?;
        if status != 200 {
            bail!(
                "mem0 upstream {} answered {status} to GET /memories for scope {scope}: {}",
                self.upstream(),
                brief(&body)
            );
        }
        // `{"results": [...]}`; older servers (API v1.0) answer a bare list.
        let items = match body {
            Value::Array(items) => items,
            Value::Object(mut map) => match map.remove("results") {
                Some(Value::Array(items)) => items,
                _ => bail!("mem0 answered GET /memories for scope {scope} without a results list"),
            },
            other => bail!(
                "mem0 answered GET /memories for scope {scope} with {}",
                brief(&other)
            ),
        };
        let listed = items.len();
        let memories = items
            .into_iter()
            .filter(|item| item.get("user_id").and_then(Value::as_str) == Some(scope))
            .collect();
        Ok(Listing { memories, listed })
    }

    /// Everything mem0 lets us list of `scope`, and why it may be incomplete
    /// (`None` when it is known to be all). See [`MEM0_LIST_MAX`].
    pub async fn list_all(&self, scope: &str) -> anyhow::Result<(Vec<Value>, Option<String>)> {
        let listing = self.list(scope, MEM0_LIST_MAX).await?;
        let n = listing.listed;
        let cut = if n >= MEM0_LIST_MAX {
            Some(format!(
                "mem0 listed {n} memories for scope {scope}, the most its GET /memories \
                 returns (top_k at most {MEM0_LIST_MAX}, no paging): the scope may hold more"
            ))
        } else if MEM0_FIXED_LIMITS.contains(&n) && self.ignores_top_k(scope).await? {
            Some(format!(
                "mem0 listed {n} memories for scope {scope} and ignores top_k (mem0 1.0.x \
                 returns at most 100, 2.0.0-2.0.7 at most 20, with no paging): the scope \
                 may hold more; upgrade mem0 to export them all"
            ))
        } else {
            None
        };
        Ok((listing.memories, cut))
    }

    /// Whether mem0 answers more than one memory when asked for one: a server
    /// that does not take `top_k` answers its fixed limit whatever is asked.
    async fn ignores_top_k(&self, scope: &str) -> anyhow::Result<bool> {
        Ok(self.list(scope, 1).await?.listed > 1)
    }

    async fn delete_one(&self, scope: &str, id: &str) -> anyhow::Result<Deleted> {
        let (status, body) = self.call("DELETE", &memory_path(id), scope).await?;
        match status {
            200..=299 => Ok(Deleted::Now),
            404 => Ok(Deleted::AlreadyGone),
            _ => bail!(
                "mem0 upstream {} answered {status} to DELETE /memories/{id} (scope {scope}): {}",
                self.upstream(),
                brief(&body)
            ),
        }
    }

    /// Deletes every memory of `scope`, listing again until mem0 lists none:
    /// a listing is cut at the server's limit and cannot page past it
    /// ([`MEM0_LIST_MAX`]). `deleted` is bumped as memories go, so a failure
    /// still tells how many did.
    pub async fn delete_scope(&self, scope: &str, deleted: &mut u64) -> anyhow::Result<()> {
        let mut seen: HashSet<String> = HashSet::new();
        for _ in 0..MAX_DELETE_ROUNDS {
            let items = self.list(scope, MEM0_LIST_MAX).await?.memories;
            if items.is_empty() {
                return Ok(());
            }
            for item in items {
                let Some(id) = item.get("id").and_then(Value::as_str) else {
                    bail!(
                        "mem0 listed a memory of scope {scope} without an id: {}",
                        brief(&item)
                    );
                };
                if !seen.insert(id.to_string()) {
                    bail!("mem0 still lists memory {id} of scope {scope} after deleting it");
                }
                if let Deleted::Now = self.delete_one(scope, id).await? {
                    *deleted += 1;
                }
            }
        }
        bail!(
            "mem0 still lists memories of scope {scope} after {MAX_DELETE_ROUNDS} rounds of \
             listing and deleting ({deleted} deleted); memories may be being added meanwhile"
        )
    }
}

/// One answer of `GET /memories`.
pub struct Listing {
    /// The memories of the scope asked for.
    pub memories: Vec<Value>,
    /// How many items mem0 answered, whoever's: what its limit cuts.
    pub listed: usize,
}

/// A short rendering of a response body for an error message.
fn brief(body: &Value) -> String {
    let text = match body.get("detail") {
        Some(Value::String(detail)) => detail.clone(),
        _ => body.to_string(),
    };
    if text.chars().count() > 200 {
        format!("{}…", text.chars().take(200).collect::<String>())
    } else {
        text
    }
}
