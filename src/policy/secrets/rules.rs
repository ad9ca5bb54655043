//! The shipped rules: one per credential format people leak into memories,
//! each written from the provider's documented shape (prefix, alphabet,
//! length). All run on the `regex` crate, whose engines never backtrack, so a
//! hostile body costs time linear in its length.
//!
//! A rule's secret is its `secret` capture group when it has one (the password
//! of a URL, the value of an assignment), otherwise the whole match.

/// What a match must also look like before it counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The format alone is specific enough.
    Format,
    /// The secret must look randomly generated ([`super::entropy::looks_random`]):
    /// for rules whose format also fits ordinary words and identifiers.
    Random,
}

/// One shipped rule.
#[derive(Clone, Copy, Debug)]
pub struct ShippedRule {
    /// `[a-z0-9_]+`: the `[secret_guard.rules.NAME]` table, the audit event's
    /// `rule` and the metric label.
    pub name: &'static str,
    pub pattern: &'static str,
    pub check: Check,
    /// Matches left alone by default: placeholders in documentation and
    /// examples, which carry no credential. An operator's `allow` adds to these.
    pub allow: &'static [&'static str],
    /// Literals, in ASCII lower case, one of which every match of `pattern`
    /// holds (compared with the text in ASCII lower case): a body holding
    /// none of any rule's is clean without being parsed (see `prefilter`).
    pub needs: &'static [&'static str],
}

/// Assignments whose value is a placeholder or a reference to where the real
/// value lives, not the value itself: `${DB_PASSWORD}`, `$TOKEN`, `<token>`,
/// `{{ secret }}`, `****`, `xxxx`.
const PLACEHOLDERS: &[&str] =
    &[r"^(?:\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|<[^>]*>|\{\{?[^}]*\}\}?|\*+|[xX]+|%s|\.\.\.)$"];

/// Key names that say their value is a credential, for `key = value`
/// assignments in text (`DB_PASSWORD=…`, `"api_key": "…"`) and JSON members.
/// The credential words of [`credential_key`] in the casings code uses
/// (`password`, `PASSWORD`, `Password`, as in `dbPassword`), spelled out: a
/// short list of literals lets the pattern skip from one to the next, where
/// `(?i)` would make it step through every byte.
macro_rules! credential_word {
    () => {
        r"(?:passw(?:or)?d|PASSW(?:OR)?D|Passw(?:or)?d|pwd|PWD|Pwd|secret|SECRET|Secret|token|TOKEN|Token|(?:api|API|Api|access|ACCESS|Access|private|PRIVATE|Private|auth|AUTH|Auth|session|SESSION|Session|signing|SIGNING|Signing|encryption|ENCRYPTION|Encryption)[_\-]?(?:key|KEY|Key)|[Cc]redentials?|CREDENTIALS?)"
    };
}

/// What every match of [`credential_word`] holds, in ASCII lower case:
/// each spelling of a password, `secret`, `token`, the `key` of `api_key` and
/// its kin, and `credential`.
const CREDENTIAL_WORD_NEEDS: &[&str] = &["passw", "pwd", "secret", "token", "key", "credential"];

macro_rules! credential_key {
    () => {
        r"(?i:[A-Za-z0-9_.\-]*(?:passw(?:or)?d|pwd|secret|token|api[_\-]?key|access[_\-]?key|private[_\-]?key|auth[_\-]?key|credentials?|session[_\-]?key|signing[_\-]?key|encryption[_\-]?key)[A-Za-z0-9_.\-]*)"
    };
}

/// Every shipped rule, in reporting order: when two rules find the same
/// span, the earlier one names it.
pub const SHIPPED: &[ShippedRule] = &[
    // PEM: `-----BEGIN … PRIVATE KEY-----` to its END line. A block cut short
    // (no END) still holds key material, so it is taken to the end of the text.
    ShippedRule {
        name: "private_key",
        pattern: r"(?s)-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY( BLOCK)?-----.*?(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY( BLOCK)?-----|\z)",
        check: Check::Format,
        allow: &[],
        needs: &["-----begin"],
    },
    // AWS access key ids: a four-letter prefix naming the kind (AKIA long-term,
    // ASIA temporary, …) and 16 upper-case letters and digits.
    ShippedRule {
        name: "aws_access_key_id",
        pattern: r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z2-7]{16}(?-u:\b)",
        check: Check::Format,
        allow: &[],
        needs: &[
            "akia", "asia", "abia", "acca", "agpa", "aida", "aroa", "aipa", "anpa", "anva", "apka",
        ],
    },
    // AWS secret access keys: 40 base64 characters, recognisable only by the
    // name they are given.
    ShippedRule {
        name: "aws_secret_access_key",
        pattern: r#"(?i:secret[_\-.]?access[_\-.]?key|aws[_\-.]?secret[_\-.]?key)\\?["']?\s*(?:=|:|:=|=>)\s*\\?["']?(?P<secret>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|\z)"#,
        check: Check::Random,
        allow: &[],
        needs: &["secret"],
    },
    // GitHub: ghp_ (personal), gho_ (OAuth), ghu_ (user-to-server), ghs_
    // (server-to-server), ghr_ (refresh) + 36 alphanumerics; fine-grained
    // personal tokens github_pat_ + 22 + _ + 59.
    ShippedRule {
        name: "github_token",
        pattern: r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})(?-u:\b)",
        check: Check::Format,
        allow: &[],
        needs: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
    },
    // GitLab: glpat- (personal), gldt- (deploy), glrt- (runner), glptt-
    // (pipeline trigger), glft- (feed), glsoat- (SCIM), glcbt- (CI job) and
    // at least 20 characters of [A-Za-z0-9_-].
    ShippedRule {
        name: "gitlab_token",
        pattern: r"(?-u:\b)(?:glpat|gldt|glrt|glptt|glft|glsoat|glcbt|gloas)-[A-Za-z0-9_\-]{20,}",
        check: Check::Format,
        allow: &[],
        needs: &[
            "glpat-", "gldt-", "glrt-", "glptt-", "glft-", "glsoat-", "glcbt-", "gloas-",
        ],
    },
    // Slack: xoxb- (bot), xoxp- (user), xoxa-/xoxr- (app and refresh),
    // xoxe- (rotating), xoxs-/xoxo- (legacy); xapp- app-level tokens.
    ShippedRule {
        name: "slack_token",
        pattern: r"(?-u:\b)(?:xox[abeoprs](?:\.[a-z0-9]+)?-[0-9A-Za-z\-]{10,}|xapp-[0-9]-[0-9A-Za-z\-]{10,})",
        check: Check::Format,
        allow: &[],
        needs: &["xox", "xapp-"],
    },
    // Incoming-webhook URLs carry their own credential in the path.
    ShippedRule {
        name: "slack_webhook",
        pattern: r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]{20,}",
        check: Check::Format,
        allow: &[],
        needs: &["hooks.slack.com/"],
    },
    // Stripe secret (sk_) and restricted (rk_) keys, live and test; the
    // publishable pk_ keys are public by design.
    ShippedRule {
        name: "stripe_key",
        pattern: r"(?-u:\b)[sr]k_(?:live|test)_[0-9A-Za-z]{24,}",
        check: Check::Format,
        allow: &[],
        needs: &["k_live_", "k_test_"],
    },
    // Anthropic: sk-ant-<kind><2 digits>- then the key (api03, admin01, …).
    ShippedRule {
        name: "anthropic_api_key",
        pattern: r"(?-u:\b)sk-ant-[a-z]{2,10}[0-9]{2}-[A-Za-z0-9_\-]{32,}",
        check: Check::Format,
        allow: &[],
        needs: &["sk-ant-"],
    },
    // OpenAI: every key kind (legacy sk-, sk-proj-, sk-svcacct-, sk-admin-)
    // holds "T3BlbkFJ", base64 of "OpenAI"; project keys are also long.
    ShippedRule {
        name: "openai_api_key",
        pattern: r"(?-u:\b)sk-(?:(?:proj|svcacct|admin|None)-)?[A-Za-z0-9_\-]{16,}T3BlbkFJ[A-Za-z0-9_\-]{16,}|(?-u:\b)sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,}",
        check: Check::Format,
        allow: &[],
        needs: &["sk-"],
    },
    // Google API keys: AIza + 35 characters of [0-9A-Za-z_-].
    ShippedRule {
        name: "google_api_key",
        pattern: r"(?-u:\b)(?P<secret>AIza[0-9A-Za-z_\-]{35})(?:[^0-9A-Za-z_\-]|\z)",
        check: Check::Format,
        allow: &[],
        needs: &["aiza"],
    },
    // A signed JWT: header and payload are base64url JSON objects ("eyJ" is
    // `{"`), then a signature.
    ShippedRule {
        name: "jwt",
        pattern: r"(?-u:\b)eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{16,}",
        check: Check::Format,
        allow: &[],
        needs: &["eyj"],
    },
    // memgate's own tokens: mcp_ + exactly 43 base64url characters. Random
    // ones, so that a 43-character identifier such as
    // mcp_server_configuration_for_production_env is not one.
    ShippedRule {
        name: "memgate_token",
        pattern: r"(?-u:\b)(?P<secret>mcp_[A-Za-z0-9_\-]{43})(?:[^A-Za-z0-9_\-]|\z)",
        check: Check::Random,
        allow: &[],
        needs: &["mcp_"],
    },
    // scheme://user:password@host: only the password is the secret. `[`
    // and `]` are delimiters, percent-encoded in a password (RFC 3986). The
    // match ends at the `@`, so that the host may start the next URL.
    ShippedRule {
        name: "url_password",
        pattern: r#"(?-u:\b)[A-Za-z][A-Za-z0-9+.\-]{0,30}://[^\s:/?#@"'<>\[\]]*:(?P<secret>[^\s/?#@"'<>\[\]]+)@"#,
        check: Check::Format,
        allow: PLACEHOLDERS,
        needs: &["://"],
    },
    // Authorization: Bearer <token> (curl lines, logged headers).
    ShippedRule {
        name: "bearer_token",
        pattern: r"(?i:bearer)\s+(?P<secret>[A-Za-z0-9._~+/\-]{20,}=*)",
        check: Check::Random,
        allow: PLACEHOLDERS,
        needs: &["bearer"],
    },
    // password = "…", API_KEY: …, "client_secret": "…" in prose, code, YAML,
    // .env files and shell history, when the value looks generated.
    ShippedRule {
        name: "credential_assignment",
        pattern: concat!(
            // From the credential word on: a key's leading part (`DB_` of
            // `DB_PASSWORD`) changes nothing, and a pattern that starts
            // with literals runs several times faster.
            credential_word!(),
            r"[A-Za-z0-9_.\-]*",
            // Quotes may come escaped: JSON text inside a JSON string.
            r#"\\?["']?[ \t]*(?:=|:=|:|=>)[ \t]*\\?["'`]?"#,
            r#"(?P<secret>[A-Za-z0-9+/=_\-.~!@#$%^&*]{12,})"#,
            r#"(?:["'`\\\s,;})\]]|\z)"#,
        ),
        check: Check::Random,
        allow: PLACEHOLDERS,
        needs: CREDENTIAL_WORD_NEEDS,
    },
];

/// Names that are credentials only as a JSON member's key.
macro_rules! key_only_names {
    () => {
        r"(?i:auth|authorization|bearer|cookie|apikey)"
    };
}

/// The rule a JSON member counts under when its key is named like a
/// credential and its value looks generated (`{"db_password": "…"}`).
pub const CREDENTIAL_FIELD: &str = "credential_field";

/// Key names ([`CREDENTIAL_FIELD`]): the same words as in assignments, plus
/// names that are credentials only as a JSON key.
pub const CREDENTIAL_KEY_PATTERN: &str =
    concat!(r"^(?:", credential_key!(), "|", key_only_names!(), r")$");

/// What every key [`CREDENTIAL_KEY_PATTERN`] matches holds, in ASCII lower
/// case: the assignment words and the names that are credentials only as
/// keys (`authorization`, `apikey` hold `auth` and `key`).
pub const CREDENTIAL_KEY_NEEDS: &[&str] = &[
    "passw",
    "pwd",
    "secret",
    "token",
    "key",
    "credential",
    "auth",
    "bearer",
    "cookie",
];

/// [`CREDENTIAL_KEY_PATTERN`] as it is found in a whole JSON text: a key
/// named like a credential, its closing quote and the colon after it.
pub const CREDENTIAL_KEY_IN_TEXT: &str = concat!(
    r"(?:",
    credential_key!(),
    "|",
    key_only_names!(),
    r#")"[ \t\r\n]*:"#
);

/// Every shipped rule name, including [`CREDENTIAL_FIELD`], for metrics
/// created at zero and for config validation.
pub fn shipped_names() -> impl Iterator<Item = &'static str> {
    SHIPPED
        .iter()
        .map(|rule| rule.name)
        .chain(std::iter::once(CREDENTIAL_FIELD))
}
