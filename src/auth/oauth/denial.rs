//! Why an OAuth access token was refused: what the client is told, what the
//! metrics and the audit record.

/// A token memgate will not accept (HTTP 401, `error="invalid_token"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidToken {
    /// Not a JWS compact token, its header or claims are not JSON objects,
    /// or a claim memgate reads has the wrong type.
    Malformed,
    /// The header's `alg` is not in `allowed_algs` (`none`, HS*, …).
    AlgorithmNotAllowed,
    /// The header lists `crit` extensions memgate does not implement.
    CriticalHeader,
    /// `iss` is missing or not one of the configured issuers.
    UnknownIssuer,
    /// No key of the issuer's key set matches the token's `kid` and `alg`.
    UnknownKey,
    BadSignature,
    /// The token has no `aud`.
    MissingAudience,
    /// `aud` names none of memgate's resources.
    WrongAudience,
    /// The token has no `exp`.
    MissingExpiry,
    Expired,
    NotYetValid,
    IssuedInFuture,
    /// An OpenID Connect ID token, which tells a client who logged in but
    /// grants nothing at a resource server.
    IdToken,
    /// The user claim is missing or not a valid memgate user id.
    UserClaim,
    /// `X-MCP-UserID` names another user than the token's.
    UserMismatch,
    /// Introspection says the token is not active.
    Inactive,
    /// Neither a JWT nor (with introspection off) anything memgate can check.
    UnsupportedFormat,
}

impl InvalidToken {
    /// A stable label for metrics and the audit.
    pub fn reason(self) -> &'static str {
        match self {
            InvalidToken::Malformed => "malformed",
            InvalidToken::AlgorithmNotAllowed => "alg_not_allowed",
            InvalidToken::CriticalHeader => "crit_header",
            InvalidToken::UnknownIssuer => "wrong_issuer",
            InvalidToken::UnknownKey => "unknown_key",
            InvalidToken::BadSignature => "bad_signature",
            InvalidToken::MissingAudience => "missing_audience",
            InvalidToken::WrongAudience => "wrong_audience",
            InvalidToken::MissingExpiry => "missing_expiry",
            InvalidToken::Expired => "expired",
            InvalidToken::NotYetValid => "not_yet_valid",
            InvalidToken::IssuedInFuture => "issued_in_future",
            InvalidToken::IdToken => "id_token",
            InvalidToken::UserClaim => "user_claim",
            InvalidToken::UserMismatch => "user_mismatch",
            InvalidToken::Inactive => "inactive",
            InvalidToken::UnsupportedFormat => "unsupported_format",
        }
    }

    /// The `error_description`: says what is wrong, never repeats the token
    /// or its claims. Only characters RFC 6750 §3 allows there.
    pub fn description(self) -> &'static str {
        match self {
            InvalidToken::Malformed => "The access token is not a well-formed JWT",
            InvalidToken::AlgorithmNotAllowed => {
                "The access token is signed with an algorithm memgate does not accept"
            }
            InvalidToken::CriticalHeader => {
                "The access token requires header extensions memgate does not implement"
            }
            InvalidToken::UnknownIssuer => {
                "The access token was not issued by an authorization server memgate trusts"
            }
            InvalidToken::UnknownKey => {
                "The access token is signed with a key its issuer does not publish"
            }
            InvalidToken::BadSignature => "The access token signature is invalid",
            InvalidToken::MissingAudience => {
                "The access token names no audience; request it with this resource as the resource indicator"
            }
            InvalidToken::WrongAudience => {
                "The access token is for another resource; request one for this resource"
            }
            InvalidToken::MissingExpiry => "The access token has no expiry time",
            InvalidToken::Expired => "The access token expired",
            InvalidToken::NotYetValid => "The access token is not valid yet",
            InvalidToken::IssuedInFuture => "The access token was issued in the future",
            InvalidToken::IdToken => "An ID token is not an access token",
            InvalidToken::UserClaim => {
                "The access token does not name a valid user in the configured user claim"
            }
            InvalidToken::UserMismatch => {
                "X-MCP-UserID does not match the user the access token was issued to"
            }
            InvalidToken::Inactive => "The access token is not active",
            InvalidToken::UnsupportedFormat => {
                "The access token is not in a format memgate accepts"
            }
        }
    }
}

/// Why a bearer token did not authenticate a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OAuthDenial {
    /// 401 with `error="invalid_token"`.
    InvalidToken(InvalidToken),
    /// 503: the authorization server could not be asked (keys for a new
    /// `kid`, discovery, introspection) and nothing cached decides.
    Unavailable,
}

impl OAuthDenial {
    pub fn status(self) -> u16 {
        match self {
            OAuthDenial::InvalidToken(_) => 401,
            OAuthDenial::Unavailable => 503,
        }
    }

    /// A stable label for metrics and the audit.
    pub fn reason(self) -> &'static str {
        match self {
            OAuthDenial::InvalidToken(why) => why.reason(),
            OAuthDenial::Unavailable => "issuer_unavailable",
        }
    }

    /// What the client is told in the response body.
    pub fn message(self) -> &'static str {
        match self {
            OAuthDenial::InvalidToken(why) => why.description(),
            OAuthDenial::Unavailable => {
                "Authentication is temporarily unavailable (authorization server unreachable); retry shortly"
            }
        }
    }
}

impl From<InvalidToken> for OAuthDenial {
    fn from(why: InvalidToken) -> OAuthDenial {
        OAuthDenial::InvalidToken(why)
    }
}
