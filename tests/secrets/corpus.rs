//! Deterministic corpora for the secret guard (tests/secret_guard.rs,
//! benches/secret_scan.rs): synthetic secrets in each provider's documented
//! format, and ordinary memories that hold none.
//!
//! No real credential appears anywhere: every secret is drawn from the
//! format's alphabet with a fixed seed, and its prefix is assembled at run
//! time so that no credential-shaped literal sits in the source.

#![allow(dead_code)]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// splitmix64: small, fixed, and the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// `len` characters of `alphabet`.
    pub fn string(&mut self, alphabet: &str, len: usize) -> String {
        let chars: Vec<char> = alphabet.chars().collect();
        (0..len).map(|_| chars[self.below(chars.len())]).collect()
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

pub const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
pub const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub const BASE64: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
pub const BASE64URL: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
pub const HEX: &str = "0123456789abcdef";
const DIGITS: &str = "0123456789";

/// A synthetic secret and the rule that must find it.
#[derive(Clone, Debug)]
pub struct Secret {
    pub rule: &'static str,
    /// The credential itself: what must never survive redaction.
    pub value: String,
    /// How it is written where it is leaked (`postgres://u:VALUE@h/db`,
    /// `DB_PASSWORD=VALUE`): the credential inside its required context.
    pub written: String,
}

fn plain(rule: &'static str, value: String) -> Secret {
    Secret {
        rule,
        written: value.clone(),
        value,
    }
}

/// Generated values are checked like the guard checks them: a draw that is
/// not random-looking enough (a few in a thousand) is drawn again, so every
/// corpus secret is one the guard must catch.
fn random_looking(rng: &mut Rng, alphabet: &str, len: usize) -> String {
    loop {
        let value = rng.string(alphabet, len);
        let digits = value.bytes().filter(u8::is_ascii_digit).count();
        let upper = value.bytes().filter(u8::is_ascii_uppercase).count();
        let lower = value.bytes().filter(u8::is_ascii_lowercase).count();
        if digits >= 2 && upper >= 2 && lower >= 2 && value.as_bytes()[len / 2].is_ascii_digit() {
            return value;
        }
    }
}

/// One secret of every shipped format, with variants (`round` varies them).
pub fn secrets(rng: &mut Rng) -> Vec<Secret> {
    let pem = |rng: &mut Rng, kind: &str| {
        let body = STANDARD.encode(rng.bytes(300));
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let dashes = "-----";
        format!(
            "{dashes}BEGIN {kind}PRIVATE KEY{dashes}\n{}\n{dashes}END {kind}PRIVATE KEY{dashes}",
            lines.join("\n")
        )
    };
    let jwt = |rng: &mut Rng| {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(
            format!(
                r#"{{"sub":"{}","iat":{},"scope":"memories:write"}}"#,
                rng.string(DIGITS, 10),
                1_700_000_000 + rng.below(50_000_000)
            )
            .as_bytes(),
        );
        let signature = URL_SAFE_NO_PAD.encode(rng.bytes(32));
        format!("{header}.{payload}.{signature}")
    };
    let password = random_looking(rng, ALNUM, 20);
    let url_password = Secret {
        rule: "url_password",
        written: format!("postgres://app_user:{password}@db.internal:5432/app"),
        value: password,
    };
    let redis_password = random_looking(rng, ALNUM, 24);
    let redis_url = Secret {
        rule: "url_password",
        written: format!("redis://:{redis_password}@cache-1.prod:6379/0"),
        value: redis_password,
    };
    let aws_secret = random_looking(rng, BASE64, 40);
    let env_password = random_looking(
        rng,
        "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789!#%",
        22,
    );
    let client_secret = random_looking(rng, ALNUM, 32);
    let bearer = random_looking(rng, BASE64URL, 40);
    vec![
        plain("private_key", pem(rng, "RSA ")),
        plain("private_key", pem(rng, "OPENSSH ")),
        plain("private_key", pem(rng, "EC ")),
        plain("private_key", pem(rng, "")),
        plain(
            "aws_access_key_id",
            [
                "AK",
                "IA",
                &rng.string("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16),
            ]
            .concat(),
        ),
        plain(
            "aws_access_key_id",
            [
                "AS",
                "IA",
                &rng.string("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16),
            ]
            .concat(),
        ),
        Secret {
            rule: "aws_secret_access_key",
            written: format!("aws_secret_access_key = {aws_secret}"),
            value: aws_secret,
        },
        plain(
            "github_token",
            ["gh", "p_", &rng.string(ALNUM, 36)].concat(),
        ),
        plain(
            "github_token",
            ["gh", "o_", &rng.string(ALNUM, 36)].concat(),
        ),
        plain(
            "github_token",
            ["gh", "s_", &rng.string(ALNUM, 36)].concat(),
        ),
        plain(
            "github_token",
            [
                "github",
                "_pat_",
                &rng.string(ALNUM, 22),
                "_",
                &rng.string(ALNUM, 59),
            ]
            .concat(),
        ),
        plain(
            "gitlab_token",
            ["gl", "pat-", &rng.string(&format!("{ALNUM}-_"), 20)].concat(),
        ),
        plain(
            "slack_token",
            [
                "xo",
                "xb-",
                &rng.string(DIGITS, 11),
                "-",
                &rng.string(DIGITS, 13),
                "-",
                &rng.string(ALNUM, 24),
            ]
            .concat(),
        ),
        plain(
            "slack_token",
            [
                "xo",
                "xp-",
                &rng.string(DIGITS, 11),
                "-",
                &rng.string(DIGITS, 11),
                "-",
                &rng.string(DIGITS, 13),
                "-",
                &rng.string(HEX, 32),
            ]
            .concat(),
        ),
        plain(
            "slack_webhook",
            [
                "https://hooks.",
                "slack.com/services/T",
                &rng.string(UPPER, 8),
                "/B",
                &rng.string(UPPER, 10),
                "/",
                &rng.string(ALNUM, 24),
            ]
            .concat(),
        ),
        plain(
            "stripe_key",
            ["sk", "_live_", &rng.string(ALNUM, 24)].concat(),
        ),
        plain(
            "stripe_key",
            ["rk", "_live_", &rng.string(ALNUM, 99)].concat(),
        ),
        plain(
            "openai_api_key",
            [
                "sk-",
                "proj-",
                &rng.string(BASE64URL, 58),
                "T3Blbk",
                "FJ",
                &rng.string(BASE64URL, 58),
            ]
            .concat(),
        ),
        plain(
            "openai_api_key",
            [
                "sk-",
                &rng.string(ALNUM, 20),
                "T3Blbk",
                "FJ",
                &rng.string(ALNUM, 20),
            ]
            .concat(),
        ),
        plain(
            "anthropic_api_key",
            ["sk-", "ant-", "api03-", &rng.string(BASE64URL, 93), "AA"].concat(),
        ),
        plain(
            "google_api_key",
            ["AI", "za", &rng.string(&format!("{ALNUM}-_"), 35)].concat(),
        ),
        plain("jwt", jwt(rng)),
        plain(
            "memgate_token",
            ["mcp", "_", &random_looking(rng, BASE64URL, 43)].concat(),
        ),
        url_password,
        redis_url,
        Secret {
            rule: "credential_assignment",
            written: format!("DB_PASSWORD={env_password}"),
            value: env_password,
        },
        Secret {
            rule: "credential_assignment",
            written: format!("client_secret: \"{client_secret}\""),
            value: client_secret,
        },
        Secret {
            rule: "bearer_token",
            written: format!("Authorization: Bearer {bearer}"),
            value: bearer,
        },
    ]
}

/// Every byte percent-encoded except unreserved ones, as a query value is.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Every byte percent-encoded.
pub fn percent_encode_all(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Where a secret is leaked: the same `written` text in prose, in JSON, in
/// code, in YAML, in shell history, URL-encoded.
pub fn contexts(secret: &Secret) -> Vec<(&'static str, String)> {
    let w = &secret.written;
    vec![
        ("bare", w.clone()),
        (
            "prose",
            format!("Remember for the deploy: the credential is {w} and it rotates monthly."),
        ),
        (
            "json",
            serde_json::json!({"service": "billing", "config": w, "retries": 3}).to_string(),
        ),
        (
            "code",
            format!(
                "def connect():\n    # TODO move to vault\n    client = Client(\"{w}\")\n    return client\n"
            ),
        ),
        (
            "yaml",
            format!(
                "services:\n  api:\n    image: app:1.4\n    environment:\n      - CONFIG={w}\n"
            ),
        ),
        (
            "shell",
            format!("$ cd ~/src/app\n$ export SETTING='{w}'\n$ ./run.sh --verbose\n"),
        ),
        (
            "url_encoded",
            format!(
                "callback https://app.example.com/cb?state=ok&v={}",
                percent_encode(w)
            ),
        ),
        ("percent_all", percent_encode_all(w)),
    ]
}

const WORDS: &[&str] = &[
    "the",
    "user",
    "prefers",
    "tabs",
    "over",
    "spaces",
    "in",
    "python",
    "projects",
    "and",
    "uses",
    "black",
    "with",
    "line",
    "length",
    "100",
    "deploys",
    "go",
    "through",
    "github",
    "actions",
    "on",
    "every",
    "merge",
    "to",
    "main",
    "team",
    "standup",
    "is",
    "at",
    "nine",
    "thirty",
    "likes",
    "dark",
    "mode",
    "postgres",
    "database",
    "migration",
    "was",
    "slow",
    "because",
    "of",
    "missing",
    "index",
    "customer",
    "asked",
    "about",
    "invoice",
    "token",
    "budget",
    "for",
    "the",
    "model",
    "context",
    "window",
    "secret",
    "santa",
    "password",
    "reset",
    "flow",
    "needs",
    "email",
    "verification",
    "key",
    "insight",
    "api",
    "design",
    "review",
    "rust",
    "async",
    "tokio",
    "runtime",
    "memory",
    "leak",
    "fixed",
    "by",
    "dropping",
    "handle",
    "auth",
    "middleware",
    "rate",
    "limit",
    "kubernetes",
    "cluster",
    "upgraded",
    "terraform",
    "module",
    "vault",
    "rotation",
    "schedule",
    "weekly",
    "monday",
    "friday",
    "coffee",
    "oat",
    "milk",
    "vegetarian",
    "allergic",
    "peanuts",
    "daughter",
    "birthday",
    "june",
];

fn sentence(rng: &mut Rng, words: usize) -> String {
    let text = (0..words)
        .map(|_| rng.pick(WORDS))
        .collect::<Vec<_>>()
        .join(" ");
    format!("{}{}.", text[..1].to_uppercase(), &text[1..])
}

fn uuid(rng: &mut Rng) -> String {
    format!(
        "{}-{}-4{}-{}{}-{}",
        rng.string(HEX, 8),
        rng.string(HEX, 4),
        rng.string(HEX, 3),
        rng.pick(&["8", "9", "a", "b"]),
        rng.string(HEX, 3),
        rng.string(HEX, 12)
    )
}

fn identifier(rng: &mut Rng) -> String {
    let parts: Vec<&str> = (0..3 + rng.below(5)).map(|_| rng.pick(WORDS)).collect();
    match rng.below(3) {
        0 => parts.join("_"),
        1 => parts.join("_").to_uppercase(),
        _ => parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if i == 0 {
                    (*p).to_owned()
                } else {
                    p[..1].to_uppercase() + &p[1..]
                }
            })
            .collect(),
    }
}

/// Code without secrets: the shapes that sit next to credential names.
fn code(rng: &mut Rng) -> String {
    let id = identifier(rng);
    let snippets = [
        format!("let token = tokenizer.encode(&{id});\nlet count = token.len();"),
        format!("password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt())  # {id}"),
        format!(
            "api_key = os.environ[\"OPENAI_API_KEY\"]\nclient = OpenAI(api_key=api_key)  # {id}"
        ),
        format!(
            "const secretName = \"prod-db-credentials-v2\";\nconst {id} = await getSecret(secretName);"
        ),
        format!("if not settings.SECRET_KEY:\n    raise ImproperlyConfigured(\"{id}\")"),
        format!("token_count = sum(len(m.content) for m in messages)  # {id}"),
        format!(
            "fn {id}(&self) -> Result<Token, AuthError> {{\n    self.store.token_by_hash(&hash)\n}}"
        ),
        format!("SELECT id, user_id, token_prefix FROM tokens WHERE user_id = $1 -- {id}"),
        format!(
            "headers = {{\"Authorization\": f\"Bearer {{access_token}}\"}}\nresp = httpx.get({id}, headers=headers)"
        ),
        format!(
            "export PASSWORD_FILE=/run/secrets/db_password\nexport {}=1",
            id.to_uppercase()
        ),
        format!(
            "secret_ref: vault:secret/data/{}#password",
            id.replace('_', "-")
        ),
        format!(
            "auth_token: ${{AUTH_TOKEN}}\nretry_count: {}",
            rng.below(10)
        ),
        format!("password: <your password here>   # see docs/{id}.md"),
        format!("git commit -m \"fix {id}\" && git push origin main"),
        format!(
            "max_tokens = {}\ntemperature = 0.{}",
            256 * (1 + rng.below(16)),
            rng.below(10)
        ),
    ];
    snippets[rng.below(snippets.len())].clone()
}

fn url(rng: &mut Rng) -> String {
    let hosts = [
        "github.com",
        "docs.rs",
        "api.example.com",
        "localhost:8000",
        "mem0.ai",
        "grafana.internal:3000",
    ];
    let host = rng.pick(&hosts);
    match rng.below(4) {
        0 => format!("https://{host}/{}/{}", identifier(rng), rng.below(10_000)),
        1 => format!(
            "https://{host}/search?q={}&page={}",
            rng.pick(WORDS),
            rng.below(50)
        ),
        2 => format!(
            "ssh://git@{host}/org/{}.git",
            identifier(rng).replace('_', "-")
        ),
        _ => format!(
            "postgres://{host}/app?sslmode=require&application_name={}",
            identifier(rng)
        ),
    }
}

fn base64_image(rng: &mut Rng) -> String {
    let len = 200 + rng.below(2000);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(rng.bytes(len));
    format!("data:image/png;base64,{}", STANDARD.encode(png))
}

fn path(rng: &mut Rng) -> String {
    let roots = [
        "/home/dev/src",
        "~/projects",
        "./src",
        "C:\\Users\\dev\\repo",
        "/var/lib/memgate",
    ];
    let exts = ["rs", "py", "ts", "toml", "yaml", "md"];
    format!(
        "{}/{}/{}.{}",
        rng.pick(&roots),
        identifier(rng),
        rng.pick(WORDS),
        rng.pick(&exts)
    )
}

/// `count` ordinary memories of many kinds, deterministic for `seed`.
pub fn ordinary_memories(seed: u64, count: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|i| match i % 14 {
            0 | 1 => {
                let n = 1 + rng.below(4);
                (0..n)
                    .map(|_| {
                        let words = 6 + rng.below(14);
                        sentence(&mut rng, words)
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            }
            2 => code(&mut rng),
            3 => format!("Memory {} was merged into {}", uuid(&mut rng), uuid(&mut rng)),
            4 => format!("Fixed in commit {} (parent {})", rng.string(HEX, 40), rng.string(HEX, 40)),
            5 => format!("User avatar: {}", base64_image(&mut rng)),
            6 => format!("The helper is called {} in module {}", identifier(&mut rng), identifier(&mut rng)),
            7 => format!("Docs at {} and {}", url(&mut rng), url(&mut rng)),
            8 => format!("sha256 of the release tarball: {}", rng.string(HEX, 64)),
            9 => format!("Config lives in {} next to {}", path(&mut rng), path(&mut rng)),
            10 => format!(
                "{} Tracking id {}, run {}.",
                sentence(&mut rng, 8),
                rng.string(&ALNUM.to_lowercase(), 12),
                uuid(&mut rng)
            ),
            11 => format!(
                "Pod {}-{}-{} restarted; image ghcr.io/acme/api@sha256:{}",
                identifier(&mut rng).replace('_', "-"),
                rng.string("bcdfghjklmnpqrstvwxz2456789", 10),
                rng.string("bcdfghjklmnpqrstvwxz2456789", 5),
                rng.string(HEX, 64)
            ),
            12 => format!(
                "lockfile: \"integrity\": \"sha512-{}\", \"resolved\": \"https://registry.npmjs.org/{}/-/{}-1.{}.0.tgz\"",
                STANDARD.encode(rng.bytes(64)),
                rng.pick(WORDS),
                rng.pick(WORDS),
                rng.below(20)
            ),
            _ => code(&mut rng),
        })
        .collect()
}
