// Signs in to memgate's MCP listener with the MCP TypeScript SDK's own OAuth
// client.
//
// The transport starts with no credentials: its `authProvider` (the SDK's
// OAuthClientProvider interface, implemented here in memory) makes memgate's
// 401 send the SDK through discovery (the Protected Resource Metadata named in
// WWW-Authenticate, then the authorization server's metadata), dynamic client
// registration and the authorization request with PKCE. The SDK then hands
// the authorization URL to `redirectToAuthorization` and rejects the connect
// with UnauthorizedError; the browser is played here, answering
// oidc-provider's development login page (as --user) and consent page over
// plain HTTP up to the redirect to the redirect URI (where nothing listens).
// As the SDK's own examples do, the code goes to `transport.finishAuth`, and
// a new transport with the same provider connects again.
//
// Then it runs initialize, tools/list and each call of the JSON script like
// mcp_client.mjs, printing the same JSON lines, and also:
//
//   {"step": "authorize", "url": ...}        the authorization URL the SDK built
//   {"step": "oauth", "ok": true, "requests": [[method, url, status], ...],
//    "client_id": ..., "token_claims": {...}, "scope": ..., "discovery": {...}}
//
// `requests` is every HTTP exchange the SDK made, in order (the discovery
// trail included); `token_claims` is the payload of the access token the SDK
// obtained (read, not verified: memgate does that); `discovery` is what the
// SDK saved through saveDiscoveryState. Any failure ends with a
// {"step": "session", "ok": false, "fatal": ...} line and exit status 3.
//
// Usage: node oauth_client.mjs --user USER [--step-timeout S] [--calls JSON] URL

import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

import { SDK_VERSION, SessionDied, emit, runAndExit, runCalls } from "./session.mjs";

// Where the authorization server sends the browser back. Nothing listens
// there: the redirect is read off the Location header instead.
const REDIRECT_URI = "http://127.0.0.1:4711/callback";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    user: { type: "string" },
    calls: { type: "string", default: process.env.MEMGATE_CALLS ?? "[]" },
    "step-timeout": { type: "string", default: "10" },
  },
});
const url = positionals[0];
if (!url || !values.user) {
  process.stderr.write("usage: oauth_client.mjs --user USER [--calls JSON] URL\n");
  process.exit(2);
}
const calls = JSON.parse(values.calls);
const timeout = Number(values["step-timeout"]) * 1000;

// One site's cookies as a browser keeps them (paths ignored).
class Cookies {
  jar = new Map();

  take(response) {
    for (const set of response.headers.getSetCookie()) {
      const pair = set.split(";")[0];
      const at = pair.indexOf("=");
      const name = pair.slice(0, at).trim();
      const value = pair.slice(at + 1);
      if (!value || set.toLowerCase().includes("expires=thu, 01 jan 1970")) {
        this.jar.delete(name);
      } else {
        this.jar.set(name, value);
      }
    }
  }

  header() {
    return [...this.jar].map(([k, v]) => `${k}=${v}`).join("; ");
  }
}

// Plays the browser: follows the authorization URL through the login and
// consent pages to the redirect URI and returns that redirect's parameters.
async function signIn(authorizationUrl, user) {
  const cookies = new Cookies();
  let next = new URL(authorizationUrl);
  for (let i = 0; i < 12; i += 1) {
    let init = { method: "GET" };
    if (next.pathname.startsWith("/interaction/")) {
      // The page says which prompt it is; answer it with its form.
      const page = await fetch(next, { headers: { cookie: cookies.header() }, redirect: "manual" });
      cookies.take(page);
      const html = await page.text();
      if (page.status !== 200) throw new SessionDied(`interaction page ${next}: HTTP ${page.status}`);
      let form;
      if (html.includes('value="login"')) {
        form = { prompt: "login", login: user, password: "any" };
      } else if (html.includes('value="consent"')) {
        form = { prompt: "consent" };
      } else {
        throw new SessionDied(`an interaction page with no known prompt: ${html.slice(0, 500)}`);
      }
      init = { method: "POST", body: new URLSearchParams(form) };
    }
    const response = await fetch(next, {
      ...init,
      headers: { cookie: cookies.header() },
      redirect: "manual",
    });
    cookies.take(response);
    const location = response.headers.get("location");
    if (response.status < 300 || response.status >= 400 || !location) {
      const body = await response.text();
      throw new SessionDied(`${next}: HTTP ${response.status} instead of a redirect: ${body.slice(0, 500)}`);
    }
    next = new URL(location, next);
    if (next.href.startsWith(REDIRECT_URI)) {
      return Object.fromEntries(next.searchParams);
    }
  }
  throw new SessionDied("the authorization flow did not reach the redirect URI");
}

// The SDK's OAuthClientProvider, in memory: this process is the whole session.
class MemoryProvider {
  client = undefined;
  saved = undefined;
  verifier = undefined;
  discovery = undefined;
  expectedState = randomBytes(16).toString("base64url");
  redirect = undefined;

  get redirectUrl() {
    return REDIRECT_URI;
  }

  get clientMetadata() {
    return {
      client_name: `memgate-tests (@modelcontextprotocol/sdk ${SDK_VERSION})`,
      redirect_uris: [REDIRECT_URI],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      // A public client, as a desktop MCP client is: PKCE protects the code.
      token_endpoint_auth_method: "none",
    };
  }

  state() {
    return this.expectedState;
  }

  clientInformation() {
    return this.client;
  }

  saveClientInformation(information) {
    this.client = information;
  }

  tokens() {
    return this.saved;
  }

  saveTokens(tokens) {
    this.saved = tokens;
  }

  saveCodeVerifier(verifier) {
    this.verifier = verifier;
  }

  codeVerifier() {
    if (!this.verifier) throw new SessionDied("the SDK asked for a code verifier it never saved");
    return this.verifier;
  }

  saveDiscoveryState(state) {
    this.discovery = state;
  }

  discoveryState() {
    return this.discovery;
  }

  async redirectToAuthorization(authorizationUrl) {
    emit({ step: "authorize", url: String(authorizationUrl) });
    this.redirect = await signIn(authorizationUrl, values.user);
  }
}

function jwtClaims(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  return JSON.parse(Buffer.from(parts[1], "base64url").toString());
}

// Every exchange the SDK makes, the auth flow's own included.
const trail = [];
async function recordingFetch(input, init) {
  const response = await fetch(input, init);
  const method = init?.method ?? (input instanceof Request ? input.method : "GET");
  trail.push([method, String(input instanceof Request ? input.url : input), response.status]);
  return response;
}

const provider = new MemoryProvider();
const newTransport = () =>
  new StreamableHTTPClientTransport(new URL(url), { authProvider: provider, fetch: recordingFetch });

let client = new Client({ name: "memgate-sdk-oauth-test", version: "0" });
let transport = newTransport();

// The first connect meets the 401 and ends in the SDK's redirect to the
// authorization server; after finishAuth a fresh transport carries the token.
async function connect() {
  const options = { timeout };
  try {
    await client.connect(transport, options);
    throw new SessionDied("the first connect succeeded without authorization");
  } catch (error) {
    if (!(error instanceof UnauthorizedError)) {
      throw error instanceof SessionDied ? error : new SessionDied(`initialize: ${error?.name}: ${error?.message}`);
    }
  }
  const redirect = provider.redirect;
  if (!redirect?.code) throw new SessionDied(`the redirect carried no code: ${JSON.stringify(redirect)}`);
  if (redirect.state !== provider.expectedState) {
    throw new SessionDied(`state mismatch: ${redirect.state} != ${provider.expectedState}`);
  }
  await transport.finishAuth(redirect.code);
  await client.close();
  client = new Client({ name: "memgate-sdk-oauth-test", version: "0" });
  transport = newTransport();
  try {
    await client.connect(transport, options);
  } catch (error) {
    throw new SessionDied(`initialize with the token: ${error?.name}: ${error?.message}`);
  }
}

async function run() {
  await connect();
  await runCalls(client, transport, calls, timeout);
}

function report() {
  const tokens = provider.saved;
  const { code: _code, ...redirect } = provider.redirect ?? {};
  emit({
    step: "oauth",
    ok: tokens !== undefined,
    requests: trail,
    client_id: provider.client?.client_id ?? null,
    token_claims: tokens ? jwtClaims(tokens.access_token) : null,
    scope: tokens?.scope ?? null,
    redirect,
    discovery: provider.discovery
      ? {
          authorization_server_url: provider.discovery.authorizationServerUrl,
          resource_metadata_url: provider.discovery.resourceMetadataUrl ?? null,
          resource: provider.discovery.resourceMetadata?.resource ?? null,
          issuer: provider.discovery.authorizationServerMetadata?.issuer ?? null,
        }
      : null,
  });
}

await runAndExit(run, () => ({ client, transport }), report);
