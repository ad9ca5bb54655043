//! The admin listener: `/health` (process up), `/ready` (store reachable) and
//! `/metrics` (Prometheus). It never proxies anything.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

use crate::listener::Listener;
use crate::metrics::METRICS;
use crate::proxy::errors::{respond_error, respond_json};
use crate::store::Store;

const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub struct AdminApi {
    store: Arc<dyn Store>,
}

impl AdminApi {
    pub fn new(store: Arc<dyn Store>) -> Self {
        AdminApi { store }
    }

    async fn ready(&self) -> Result<(), String> {
        match tokio::time::timeout(READY_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("store did not answer within 2 s".into()),
        }
    }
}

#[async_trait]
impl ProxyHttp for AdminApi {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        if method != http::Method::GET && method != http::Method::HEAD {
            respond_error(session, Listener::Admin, 405, "Only GET is supported here").await?;
            return Ok(true);
        }
        match path.as_str() {
            "/health" => {
                respond_json(
                    session,
                    200,
                    Bytes::from_static(b"{\"status\":\"ok\"}"),
                    &[],
                )
                .await?;
            }
            "/ready" => match self.ready().await {
                Ok(()) => {
                    respond_json(
                        session,
                        200,
                        Bytes::from_static(b"{\"status\":\"ready\"}"),
                        &[],
                    )
                    .await?
                }
                Err(reason) => {
                    tracing::warn!(%reason, "not ready");
                    let body = serde_json::json!({"status": "unavailable", "detail": reason});
                    respond_json(session, 503, Bytes::from(body.to_string()), &[]).await?;
                }
            },
            "/metrics" => {
                let text = METRICS.render();
                let mut header = ResponseHeader::build(200, Some(2))?;
                header.insert_header("content-type", "text/plain; version=0.0.4")?;
                header.insert_header("content-length", text.len().to_string())?;
                session
                    .write_response_header(Box::new(header), false)
                    .await?;
                session
                    .write_response_body(Some(Bytes::from(text)), true)
                    .await?;
            }
            _ => {
                respond_error(
                    session,
                    Listener::Admin,
                    404,
                    "Not found: try /health, /ready or /metrics",
                )
                .await?
            }
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Error::e_explain(
            ErrorType::InternalError,
            "the admin listener has no upstream",
        )
    }
}
