//! The independently developed authorization server the OAuth tests run
//! against: oidc-provider (tests/oidc/provider.mjs) in a child process, and
//! the grants a client uses to get tokens from it.
//!
//! Without `node` or tests/oidc/node_modules [`Provider::start`] skips (says
//! why, returns `None`) unless `MEMGATE_REQUIRE_OIDC=1` (as in CI), which
//! makes it fail instead.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Where the browser flow's authorization code is sent.
const REDIRECT: &str = "http://127.0.0.1:4711/callback";

/// oidc-provider in a child process; stopped when dropped.
pub struct Provider {
    child: Child,
    pub issuer: String,
    /// The events it reported (registrations, authorizations, grants,
    /// errors), in order; see tests/oidc/provider.mjs.
    events: Arc<Mutex<Vec<Value>>>,
}

/// How to run the provider beyond its resources.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Access tokens live this long (the provider's default otherwise).
    pub ttl_secs: Option<u64>,
    /// Clients may register themselves (RFC 7591), as MCP clients do.
    pub dynamic_registration: bool,
}

impl Provider {
    /// `None` (after saying why) when Node.js or the provider's packages
    /// are missing and `MEMGATE_REQUIRE_OIDC` does not demand them.
    /// Issues JWT access tokens for `resources` and opaque ones for `opaque`.
    pub fn start(resources: &[&str], opaque: &[&str]) -> Option<Provider> {
        Provider::start_with_ttl(resources, opaque, None)
    }

    /// [`Provider::start`] issuing access tokens that live `ttl_secs`.
    pub fn start_with_ttl(
        resources: &[&str],
        opaque: &[&str],
        ttl_secs: Option<u64>,
    ) -> Option<Provider> {
        Provider::start_with(
            resources,
            opaque,
            Options {
                ttl_secs,
                ..Options::default()
            },
        )
    }

    /// [`Provider::start`] with `options`. A `*` in a resource stands for
    /// any port number (provider.mjs).
    pub fn start_with(resources: &[&str], opaque: &[&str], options: Options) -> Option<Provider> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
        let installed = dir.join("node_modules/oidc-provider/package.json").exists();
        let node = Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !(installed && node) {
            let why = if node {
                "tests/oidc/node_modules is missing (run npm ci in tests/oidc)"
            } else {
                "node is not installed"
            };
            assert!(
                std::env::var_os("MEMGATE_REQUIRE_OIDC").is_none(),
                "MEMGATE_REQUIRE_OIDC is set but {why}"
            );
            eprintln!("skipping the oidc-provider tests: {why}");
            return None;
        }
        let mut child = Command::new("node")
            .arg(dir.join("provider.mjs"))
            .arg("0")
            .args(resources)
            .arg("--opaque")
            .args(opaque)
            .envs(
                options
                    .ttl_secs
                    .map(|ttl| ("ACCESS_TOKEN_TTL", ttl.to_string())),
            )
            .envs(
                options
                    .dynamic_registration
                    .then_some(("DYNAMIC_REGISTRATION", "1".to_string())),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node");
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line)
            .expect("read the provider's first line");
        // Whatever it prints later is kept, and the pipe drained: a closed
        // pipe would kill it.
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(stdout) {
                let Ok(line) = line else { break };
                if let Ok(event) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(event);
                }
            }
        });
        let ready: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("provider said {line:?}: {e}"));
        let issuer = ready["issuer"].as_str().unwrap().to_string();
        Some(Provider {
            child,
            issuer,
            events,
        })
    }

    /// The events of kind `event` the provider reported so far.
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == event)
            .cloned()
            .collect()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub async fn token_endpoint(
    issuer: &str,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> Value {
    let mut request = http().post(format!("{issuer}/token")).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "token endpoint: {status} {body}");
    body
}

/// An access token for `resource` by the client credentials grant.
pub async fn client_credentials(issuer: &str, scope: &str, resource: &str) -> String {
    let body = token_endpoint(
        issuer,
        &[
            ("grant_type", "client_credentials"),
            ("scope", scope),
            ("resource", resource),
        ],
        Some(("memgate-m2m", "m2m-secret")),
    )
    .await;
    body["access_token"].as_str().unwrap().to_string()
}

/// Cookies as a browser keeps them for one site (paths ignored: every
/// cookie of the provider goes back to it).
#[derive(Default)]
pub struct Cookies(HashMap<String, String>);

impl Cookies {
    pub fn take(&mut self, response: &reqwest::Response) {
        for set in response.headers().get_all(reqwest::header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let pair = set.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            let expired = set
                .to_ascii_lowercase()
                .contains("expires=thu, 01 jan 1970");
            if value.is_empty() || expired {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_string(), value.to_string());
            }
        }
    }

    pub fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The access and ID token a user gets through the browser flow: the
/// authorization request with a PKCE challenge, the provider's login page
/// (signing in as `user`) and consent page, the code at the redirect URI,
/// and the code exchanged with the verifier. The access token is for `resource`.
pub async fn authorization_code(
    issuer: &str,
    user: &str,
    scope: &str,
    resource: &str,
) -> (String, String) {
    let verifier: String = {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).unwrap();
        URL_SAFE_NO_PAD.encode(bytes)
    };
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let base = url::Url::parse(issuer).unwrap();
    let mut next = url::Url::parse_with_params(
        &format!("{issuer}/auth"),
        [
            ("client_id", "memgate-cli"),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT),
            ("scope", scope),
            ("resource", resource),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("state", "state-1"),
            ("nonce", "nonce-1"),
        ],
    )
    .unwrap();
    let client = http();
    let mut cookies = Cookies::default();
    let code = 'flow: {
        for _ in 0..12 {
            let mut request = client
                .get(next.clone())
                .header(reqwest::header::COOKIE, cookies.header());
            if next.path().starts_with("/interaction/") {
                // The page says which prompt it is; answer it with its form.
                let page = client
                    .get(next.clone())
                    .header(reqwest::header::COOKIE, cookies.header())
                    .send()
                    .await
                    .unwrap();
                cookies.take(&page);
                let html = page.text().await.unwrap();
                let form: Vec<(&str, &str)> = if html.contains("value=\"login\"") {
                    vec![("prompt", "login"), ("login", user), ("password", "any")]
                } else {
                    assert!(html.contains("value=\"consent\""), "{html}");
                    vec![("prompt", "consent")]
                };
                request = client
                    .post(next.clone())
                    .header(reqwest::header::COOKIE, cookies.header())
                    .form(&form);
            }
            let response = request.send().await.unwrap();
            cookies.take(&response);
            assert!(
                response.status().is_redirection(),
                "{next}: {}",
                response.status()
            );
            let location = response.headers()[reqwest::header::LOCATION]
                .to_str()
                .unwrap()
                .to_string();
            next = base.join(&location).unwrap();
            if location.starts_with(REDIRECT) {
                let query: HashMap<_, _> = next.query_pairs().into_owned().collect();
                assert_eq!(query.get("state").map(String::as_str), Some("state-1"));
                break 'flow query["code"].clone();
            }
        }
        panic!("the authorization flow did not reach the redirect URI");
    };
    let body = token_endpoint(
        issuer,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "memgate-cli"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
            ("resource", resource),
        ],
        None,
    )
    .await;
    (
        body["access_token"].as_str().unwrap().to_string(),
        body["id_token"].as_str().unwrap().to_string(),
    )
}
