// An independent OAuth 2.1 / OpenID Connect authorization server for
// tests/oauth.rs: oidc-provider with resource indicators (RFC 8707), issuing
// JWT access tokens (RFC 9068) for memgate's resource.
//
//   node provider.mjs PORT RESOURCE... [--opaque RESOURCE...]
//
// PORT 0 picks a free port. Every RESOURCE is a resource server whose tokens
// carry it as aud, with the scopes mcp:read mcp:write mcp:admin; the first is
// the default when a client names none. A `*` in a RESOURCE stands for a port
// number (http://127.0.0.1:*/mcp), for resource servers started after the
// provider, on ports it cannot know; the token's aud is the URL the client
// named. Access tokens for the resources after
// --opaque are opaque, for introspection (RFC 7662) at /token/introspection,
// which confidential clients may call. Clients may revoke their own tokens
// at /token/revocation (RFC 7009). Clients:
//   memgate-m2m  confidential, client_credentials (secret: m2m-secret)
//   memgate-cli  public, authorization_code with PKCE, redirect
//                http://127.0.0.1/callback (any port, as for native apps)
// The login and consent pages are oidc-provider's development interactions:
// GET the interaction URL, POST prompt=login&login=USER&password=any, then
// POST prompt=consent. Access tokens are signed ES256; ID tokens RS256.
// Access tokens live 300 s, or ACCESS_TOKEN_TTL seconds when that is set.
// With DYNAMIC_REGISTRATION=1 any client may register itself (RFC 7591, at
// the registration_endpoint discovery names, no initial access token), as MCP
// clients do, and the resource scopes are also the provider's own, because a
// registration may only name scopes the provider lists.
// Prints one JSON line {"issuer": ...} on stdout when it listens, then one
// line per event a test may check: {"event": "registration" | "authorization"
// | "grant" | "error", ...} with the client, resource and scope involved, and
// {"event": "introspection", "client_id", "status", "active"} for every
// introspection request answered (never the token), so a test can count how
// often a resource server asks.

import { createServer } from 'node:http';

import { generateKeyPair, exportJWK } from 'jose';
import Provider, { errors } from 'oidc-provider';

const [port = '0', ...rest] = process.argv.slice(2);
const split = rest.indexOf('--opaque');
const jwtResources = split === -1 ? rest : rest.slice(0, split);
const opaqueResources = split === -1 ? [] : rest.slice(split + 1);
const resources = [...jwtResources, ...opaqueResources];
const REGISTRATION = process.env.DYNAMIC_REGISTRATION === '1';

// A resource argument as a whole-string pattern: `*` matches a port number.
function pattern(resource) {
  const escaped = resource.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[0-9]{1,5}');
  return new RegExp(`^${escaped}$`);
}
const jwtPatterns = jwtResources.map(pattern);
const opaquePatterns = opaqueResources.map(pattern);
const known = (patterns, indicator) => patterns.some((p) => p.test(indicator));
if (jwtResources.length === 0) {
  console.error('usage: node provider.mjs PORT RESOURCE... [--opaque RESOURCE...]');
  process.exit(2);
}

async function signingKey(alg, kid) {
  const { privateKey } = await generateKeyPair(alg, { extractable: true });
  return { ...(await exportJWK(privateKey)), alg, use: 'sig', kid };
}

const SCOPES = 'mcp:read mcp:write mcp:admin';
const TTL = Number(process.env.ACCESS_TOKEN_TTL || 300);

// The port must be known before the issuer is: listen first, then mount.
const server = createServer();
await new Promise((resolve) => server.listen(Number(port), '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  jwks: { keys: [await signingKey('RS256', 'rs-1'), await signingKey('ES256', 'es-1')] },
  clients: [
    {
      client_id: 'memgate-m2m',
      client_secret: 'm2m-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
    },
    {
      client_id: 'memgate-cli',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/callback'],
    },
  ],
  findAccount: async (_ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: `${id}@example.test` }),
  }),
  claims: { openid: ['sub'], email: ['email'] },
  ...(REGISTRATION ? { scopes: ['openid', 'offline_access', ...SCOPES.split(' ')] } : {}),
  features: {
    registration: { enabled: REGISTRATION },
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resources[0],
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, indicator) => {
        if (!known(jwtPatterns, indicator) && !known(opaquePatterns, indicator)) {
          throw new errors.InvalidTarget();
        }
        if (known(opaquePatterns, indicator)) {
          return {
            scope: SCOPES, audience: indicator, accessTokenTTL: TTL, accessTokenFormat: 'opaque',
          };
        }
        return {
          scope: SCOPES,
          audience: indicator,
          accessTokenTTL: TTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  pkce: { required: () => true },
  ttl: { AccessToken: TTL, ClientCredentials: TTL, IdToken: 300 },
});
const report = (line) => console.log(JSON.stringify(line));
// Before callback(): Koa composes the middleware there.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.oidc?.route === 'introspection') {
    report({
      event: 'introspection',
      client_id: ctx.oidc.client?.clientId ?? null,
      status: ctx.status,
      active: ctx.body?.active ?? null,
    });
  }
});
server.on('request', provider.callback());
console.log(JSON.stringify({ issuer }));

provider.on('registration_create.success', (_ctx, client) => report({
  event: 'registration',
  client_id: client.clientId,
  redirect_uris: client.redirectUris,
  token_endpoint_auth_method: client.tokenEndpointAuthMethod,
  scope: client.scope ?? null,
}));
provider.on('authorization.accepted', (ctx) => report({
  event: 'authorization',
  client_id: ctx.oidc.client?.clientId,
  account: ctx.oidc.session?.accountId ?? null,
  resource: ctx.oidc.params.resource ?? null,
  scope: ctx.oidc.params.scope ?? null,
  code_challenge_method: ctx.oidc.params.code_challenge_method ?? null,
}));
provider.on('grant.success', (ctx) => report({
  event: 'grant',
  grant_type: ctx.oidc.params.grant_type,
  client_id: ctx.oidc.client?.clientId,
  resource: ctx.oidc.params.resource ?? null,
}));
for (const name of ['registration_create.error', 'authorization.error', 'grant.error', 'server_error']) {
  provider.on(name, (_ctx, error) => report({
    event: 'error', on: name, error: error?.error ?? String(error), detail: error?.error_description ?? null,
  }));
}

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
