//! The authentication phase: a credential checked (memgate's tokens, or OAuth
//! access tokens), the per-address cut-off and per-token limits applied, and
//! the OAuth resource metadata and challenges memgate answers itself.

use super::*;

impl Gate {
    /// Answers 429 in the listener's format and audits it (sampled).
    pub(super) async fn refuse_rate_limited(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        kind: &'static str,
        key: String,
        retry: RetryAfter,
        message: &str,
    ) -> Result<bool> {
        METRICS.rate_limited.with_label_values(&[kind]).inc();
        let make = || {
            let mut event = self.event(session, ctx, audit::kind::RATE_LIMITED, false);
            event.reason = Some(kind.to_string());
            event
        };
        self.shared
            .audit
            .record_sampled(&format!("429/{kind}/{key}"), make)
            .await;
        let body = errors::error_body(self.listener, 429, message, &serde_json::Value::Null);
        errors::respond_json(session, 429, body, &[("retry-after", retry.header_value())]).await?;
        Ok(true)
    }

    /// Authentication, the per-IP and per-token limits, and the audit of both.
    /// `Ok(None)` means a response was sent.
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Arc<Identity>>> {
        let ip = ctx.client_ip;
        let blocked = self.shared.limits.ip_blocked(ip);
        let probe = || self.shared.limits.take_probe(ip);
        let store = match blocked {
            None => StoreAccess::Open,
            Some(_) => StoreAccess::Probe(&probe),
        };
        let outcome = self
            .shared
            .auth
            .authenticate(&presented(session.req_header()), store)
            .await;
        let authenticated = match outcome {
            Ok(authenticated) => authenticated,
            // A cut-off address gets 429 for anything but a valid token: one
            // it already proved, or one a store probe just found.
            Err(failure) if blocked.is_some() => {
                if !(failure.denial.is_unavailable()
                    || failure.denial == Refused::Token(Denial::Throttled))
                {
                    self.shared.limits.note_failed_auth(ip);
                }
                let message = Denial::Throttled.message();
                self.refuse_rate_limited(
                    session,
                    ctx,
                    "failed_auth_ip",
                    ip.to_string(),
                    RetryAfter(PROBE_INTERVAL),
                    &message,
                )
                .await?;
                return Ok(None);
            }
            Err(failure) => {
                if !failure.denial.is_unavailable() {
                    self.shared.limits.note_failed_auth(ip);
                }
                let mut event = self.event(session, ctx, audit::kind::AUTH_FAILURE, false);
                event.reason = Some(failure.denial.reason().to_string());
                if let Some(user) = &failure.user_id {
                    METRICS.auth_user_failures.with_label_values(&[user]).inc();
                }
                event.user_id = failure.user_id;
                event.token_prefix = failure.token_prefix;
                event.auth_method =
                    (failure.method != crate::auth::NO_METHOD).then(|| failure.method.to_string());
                self.shared.audit.record(event);
                let denial = failure.denial;
                let challenge = self
                    .shared
                    .auth
                    .oauth()
                    .and_then(|oauth| self.unauthorized_challenge(session, oauth, &denial));
                errors::respond_challenged(
                    session,
                    self.listener,
                    denial.status(),
                    &denial.message(),
                    challenge,
                )
                .await?;
                return Ok(None);
            }
        };
        let identity = authenticated.identity.clone();
        ctx.identity = Some(identity.clone());
        ctx.auth_method = Some(authenticated.method);
        let key = authenticated.rate_limit_key();
        if let Err(retry) = self
            .shared
            .limits
            .check_token(
                &key,
                authenticated.rate_limit_rps,
                &authenticated.state.limiter,
            )
            .await
        {
            let message = match authenticated.method {
                AuthMethod::Token => "Rate limit exceeded for this token; retry later",
                AuthMethod::Jwt | AuthMethod::Introspection => {
                    "Rate limit exceeded for this user; retry later"
                }
            };
            self.refuse_rate_limited(session, ctx, "token", key.into_owned(), retry, message)
                .await?;
            return Ok(None);
        }
        if self.shared.audit.success_due(
            &authenticated.state.success_audited,
            authenticated.at.timestamp(),
        ) {
            let event = self.event(session, ctx, audit::kind::AUTH_SUCCESS, true);
            self.shared.audit.record(event);
        }
        Ok(Some(identity))
    }

    /// The OAuth challenge of a refused request: where this resource's
    /// metadata is, and for a presented token, why it was refused. `None`
    /// for a refusal that is not a 401.
    pub(super) fn unauthorized_challenge(
        &self,
        session: &Session,
        oauth: &OAuth,
        refused: &Refused,
    ) -> Option<String> {
        let needed = self.needed_permission(session.req_header());
        match refused {
            Refused::OAuth(denial) => {
                oauth.unauthorized_challenge(self.resource, needed, Some(*denial))
            }
            _ if refused.status() != 401 => None,
            _ if refused.is_missing() => oauth.unauthorized_challenge(self.resource, needed, None),
            Refused::Token(denial) => {
                Some(oauth.refused_token_challenge(self.resource, needed, &denial.message()))
            }
        }
    }

    /// The permission a request needs, when its head alone tells: a mem0
    /// route's. An MCP request's need is in its message, read only after
    /// authentication.
    fn needed_permission(&self, req: &RequestHeader) -> Option<Permission> {
        match &self.flow {
            Flow::Mem0(flow) => flow.needed_permission(req),
            Flow::Mcp(_) => None,
        }
    }

    /// Answers a GET of this listener's Protected Resource Metadata (RFC
    /// 9728) when OAuth is on: memgate's own, public document, never
    /// forwarded. `Ok(true)`: it was answered.
    pub(super) async fn serve_resource_metadata(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let Some(oauth) = self.shared.auth.oauth() else {
            return Ok(false);
        };
        let req = session.req_header();
        if req.method != http::Method::GET {
            return Ok(false);
        }
        let Ok(path) = crate::policy::path::normalise(req.uri.path()) else {
            return Ok(false);
        };
        if !oauth.metadata_paths(self.resource).contains(&path) {
            return Ok(false);
        }
        ctx.route = "oauth_metadata";
        let document = oauth.metadata_document(self.resource).clone();
        errors::respond_json(session, 200, document, &[]).await?;
        Ok(true)
    }

    /// Answers HTTP 403 with the step-up challenge for a request an OAuth
    /// caller's scopes do not cover (`needed`), and audits it.
    pub(super) async fn refuse_insufficient_scope(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        needed: Permission,
        body: bytes::Bytes,
        refusal: Refusal,
    ) -> Result<()> {
        let Some(oauth) = self.shared.auth.oauth() else {
            return Error::e_explain(
                ErrorType::InternalError,
                "an insufficient scope without OAuth",
            );
        };
        let challenge = oauth.insufficient_scope_challenge(self.resource, needed);
        errors::respond_json(session, 403, body, &[("www-authenticate", challenge)]).await?;
        self.audit_refusal(session, ctx, refusal);
        Ok(())
    }
}
