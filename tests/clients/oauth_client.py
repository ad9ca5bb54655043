"""Signs in to memgate's MCP listener with the MCP Python SDK's own OAuth client.

Works with the SDK's 1.x and 2.x lines. The client starts with no credentials
at all: `mcp.client.auth.OAuthClientProvider` is the httpx auth of the
Streamable HTTP client, so memgate's 401 sends the SDK through discovery (the
Protected Resource Metadata named in WWW-Authenticate, then the authorization
server's metadata), dynamic client registration, the authorization request
with PKCE and the code exchange. The browser is played by this script: the
redirect handler opens the authorization URL and answers oidc-provider's
development login page (as --user) and consent page over plain HTTP, and the
callback handler hands the SDK the code, state and iss of the redirect to the
redirect URI (where nothing listens).

Then it runs initialize, tools/list and each call of the JSON script like
mcp_client.py, printing the same JSON lines, and also:

    {"step": "authorize", "url": ...}        the authorization URL the SDK built
    {"step": "oauth", "ok": true, "requests": [[method, url, status], ...],
     "client_id": ..., "token_claims": {...}, "scope": ...}

`requests` is every HTTP exchange the SDK's client made, in order (the
discovery trail included); `token_claims` is the payload of the access token
the SDK obtained (read, not verified: memgate does that). Any failure ends
with a {"step": "session", "ok": false, "fatal": ...} line and exit status 3.

Usage:
    oauth_client.py --user USER [--step-timeout S] [--calls JSON] URL
"""

import argparse
import base64
import http.client
import json
import os
import sys
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import anyio

from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import OAuthClientMetadata

# mcp_client.py sits beside this script: its session steps and output are shared.
from mcp_client import SDK_MAJOR, SessionDied, emit, report_fatal, run_session

try:  # 2.x: the callback returns the redirect's parameters as a model
    from mcp.client.auth import AuthorizationCodeResult
except ImportError:  # 1.x: a (code, state) tuple
    AuthorizationCodeResult = None

# Where the authorization server sends the browser back. Nothing listens
# there: the redirect is read off the Location header instead.
REDIRECT_URI = "http://127.0.0.1:4711/callback"


class MemoryStorage:
    """The SDK's TokenStorage, in memory: this process is the whole session."""

    def __init__(self):
        self.tokens = None
        self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info):
        self.client_info = client_info


class Cookies:
    """One site's cookies as a browser keeps them (paths ignored)."""

    def __init__(self):
        self.jar = {}

    def take(self, headers):
        for value in headers.get_all("Set-Cookie") or []:
            pair = value.split(";", 1)[0]
            name, _, content = pair.partition("=")
            expired = "expires=thu, 01 jan 1970" in value.lower()
            if not content or expired:
                self.jar.pop(name.strip(), None)
            else:
                self.jar[name.strip()] = content

    def header(self):
        return "; ".join(f"{k}={v}" for k, v in self.jar.items())


def exchange(method, url, cookies, form=None):
    """One HTTP request, redirects not followed: (status, Location, body)."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise SessionDied(f"the authorization flow left plain HTTP: {url}")
    connection = http.client.HTTPConnection(parts.netloc, timeout=10)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {"Cookie": cookies.header()}
    body = None
    if form is not None:
        body = urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        cookies.take(response.headers)
        return response.status, response.getheader("Location"), response.read().decode()
    finally:
        connection.close()


def sign_in(authorization_url, user):
    """Plays the browser: follows the authorization URL through the login and
    consent pages to the redirect URI and returns that redirect's query."""
    cookies = Cookies()
    url = authorization_url
    for _ in range(12):
        if urlsplit(url).path.startswith("/interaction/"):
            # The page says which prompt it is; answer it with its form.
            status, _, page = exchange("GET", url, cookies)
            if status != 200:
                raise SessionDied(f"interaction page {url}: HTTP {status}")
            if 'value="login"' in page:
                form = {"prompt": "login", "login": user, "password": "any"}
            elif 'value="consent"' in page:
                form = {"prompt": "consent"}
            else:
                raise SessionDied(f"an interaction page with no known prompt: {page[:500]}")
            status, location, body = exchange("POST", url, cookies, form)
        else:
            status, location, body = exchange("GET", url, cookies)
        if not 300 <= status < 400 or not location:
            raise SessionDied(f"{url}: HTTP {status} instead of a redirect: {body[:500]}")
        url = urljoin(url, location)
        if url.startswith(REDIRECT_URI):
            return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    raise SessionDied("the authorization flow did not reach the redirect URI")


def jwt_claims(token):
    """The payload of a JWT, or None when the token is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    return json.loads(base64.urlsafe_b64decode(payload))


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--user", required=True, help="who signs in at the login page")
    parser.add_argument("--calls", default=os.environ.get("MEMGATE_CALLS", "[]"))
    parser.add_argument("--step-timeout", type=float, default=10.0)
    args = parser.parse_args()
    calls = json.loads(args.calls)

    redirect = {}

    async def redirect_handler(authorization_url):
        emit(step="authorize", url=authorization_url)
        redirect.update(await anyio.to_thread.run_sync(sign_in, authorization_url, args.user))

    async def callback_handler():
        if "code" not in redirect:
            raise SessionDied(f"the redirect carried no code: {redirect}")
        if AuthorizationCodeResult is None:
            return redirect["code"], redirect.get("state")
        return AuthorizationCodeResult(
            code=redirect["code"], state=redirect.get("state"), iss=redirect.get("iss"))

    storage = MemoryStorage()
    auth = OAuthClientProvider(
        server_url=args.url,
        client_metadata=OAuthClientMetadata(
            client_name=f"memgate-tests (mcp {SDK_MAJOR}.x)",
            redirect_uris=[REDIRECT_URI],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            # A public client, as a desktop MCP client is: PKCE protects the code.
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )

    # Every exchange the SDK's HTTP client makes, the auth flow's own included.
    trail = []
    seen = {}

    async def on_response(response):
        trail.append([response.request.method, str(response.request.url), response.status_code])
        if "mcp-session-id" in response.headers:
            seen["id"] = response.headers["mcp-session-id"]

    status = 0
    reported = False

    def report():
        tokens = storage.tokens
        emit(step="oauth", ok=tokens is not None, requests=trail,
             client_id=getattr(storage.client_info, "client_id", None),
             token_claims=jwt_claims(tokens.access_token) if tokens else None,
             scope=getattr(tokens, "scope", None),
             redirect={k: v for k, v in redirect.items() if k != "code"})

    try:
        async with create_mcp_http_client(auth=auth) as http:
            http.event_hooks = {"request": [], "response": [on_response]}
            async with streamable_http_client(args.url, http_client=http) as streams:
                read, write = streams[0], streams[1]
                await run_session(read, write, calls, args.step_timeout, lambda: seen.get("id"))
        report()
        reported = True
    except BaseException as exc:  # noqa: BLE001 - whatever ended the session
        if not isinstance(exc, Exception):
            raise
        if not reported:
            report()
        status = report_fatal(exc)
    if status == 0:
        emit(step="close", ok=True)
    return status


if __name__ == "__main__":
    sys.exit(anyio.run(main))
