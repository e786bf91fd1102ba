// A real OpenID Provider for gatehouse's tests, built on `oidc-provider` (v9, an OpenID-certified
// implementation). Started by tests/support/oidc.rs as `node tests/oidc/provider.mjs`.
//
// Environment:
//   OIDC_ADDR_FILE          written once listening: `issuer=https://127.0.0.1:PORT` (atomically)
//   OIDC_TLS_CERT/_KEY      PEM server certificate (SAN 127.0.0.1) and key
//   OIDC_WEB_CLIENT_SECRET  secret of `gatehouse-web`
//   OIDC_CI_CLIENT_SECRET   secret of `ci-pipeline`
//   OIDC_ID_TOKEN_TTL       seconds (default 3600)
//   OIDC_ACCESS_TOKEN_TTL   seconds (default 600), for every access token kind
//   OIDC_ID_TOKEN_ALG       ID token alg of every client (default RS256; ES256 or EdDSA also work)
//   OIDC_ACCESS_TOKEN_ALG   JWT access token alg for resource `urn:gatehouse` (default RS256)
//   OIDC_PORT               port to listen on (default 0: any free port)
//   OIDC_KEYS_FILE          signing keys (private JWKS): used when the file exists, else
//                           generated and written there (0600), so a restarted provider on the
//                           same OIDC_PORT is the same issuer with the same keys
//   OIDC_ID_TOKEN_GROUPS    `include` (default) or `omit`: with `omit`, ID tokens never carry
//                           `groups` (the userinfo endpoint and JWT access tokens still do), as
//                           with providers that keep groups out of ID tokens
//
// Resource servers (RFC 8707 resource indicators; JWT access tokens per RFC 9068, typ at+jwt):
//   urn:gatehouse             aud "gatehouse", alg OIDC_ACCESS_TOKEN_ALG. The default resource of
//                             `gatehouse-cli` and `ci-pipeline`, so their tokens are JWTs without
//                             asking for anything.
//   urn:gatehouse:alg:<ALG>   aud "gatehouse", signed with <ALG> (RS256, ES256, EdDSA)
//   urn:audience:<NAME>       aud <NAME>, RS256 (to mint tokens meant for someone else)
// `gatehouse-web` gets an opaque access token (usable at the userinfo endpoint) unless it sends a
// `resource` parameter itself.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as https from 'node:https';
import * as path from 'node:path';

import Provider, { errors } from 'oidc-provider';

function env(name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === '') {
    if (fallback === undefined) {
      console.error(`provider.mjs: missing environment variable ${name}`);
      process.exit(2);
    }
    return fallback;
  }
  return v;
}

function envSeconds(name, fallback) {
  const n = Number.parseInt(env(name, String(fallback)), 10);
  if (!Number.isSafeInteger(n) || n <= 0) {
    console.error(`provider.mjs: ${name} must be a positive integer`);
    process.exit(2);
  }
  return n;
}

const ADDR_FILE = env('OIDC_ADDR_FILE');
const TLS_CERT = fs.readFileSync(env('OIDC_TLS_CERT'));
const TLS_KEY = fs.readFileSync(env('OIDC_TLS_KEY'));
const WEB_SECRET = env('OIDC_WEB_CLIENT_SECRET');
const CI_SECRET = env('OIDC_CI_CLIENT_SECRET');
const ID_TOKEN_TTL = envSeconds('OIDC_ID_TOKEN_TTL', 3600);
const ACCESS_TOKEN_TTL = envSeconds('OIDC_ACCESS_TOKEN_TTL', 600);
const ID_TOKEN_ALG = env('OIDC_ID_TOKEN_ALG', 'RS256');
const ACCESS_TOKEN_ALG = env('OIDC_ACCESS_TOKEN_ALG', 'RS256');
const PORT = Number.parseInt(env('OIDC_PORT', '0'), 10);
if (!Number.isSafeInteger(PORT) || PORT < 0 || PORT > 65535) {
  console.error('provider.mjs: OIDC_PORT must be a port number');
  process.exit(2);
}
const KEYS_FILE = env('OIDC_KEYS_FILE', '');
const ID_TOKEN_GROUPS = env('OIDC_ID_TOKEN_GROUPS', 'include');
if (!['include', 'omit'].includes(ID_TOKEN_GROUPS)) {
  console.error('provider.mjs: OIDC_ID_TOKEN_GROUPS must be include or omit');
  process.exit(2);
}
const SIGNING_ALGS = ['RS256', 'ES256', 'EdDSA'];
for (const [name, alg] of [['OIDC_ID_TOKEN_ALG', ID_TOKEN_ALG], ['OIDC_ACCESS_TOKEN_ALG', ACCESS_TOKEN_ALG]]) {
  if (!SIGNING_ALGS.includes(alg)) {
    console.error(`provider.mjs: ${name} must be one of ${SIGNING_ALGS.join(', ')}`);
    process.exit(2);
  }
}

// ---------------------------------------------------------------------------------------------
// Accounts. Every password is "correct horse".

const PASSWORD = 'correct horse';
const USERS = {
  alice: {
    preferred_username: 'alice',
    name: 'Alice Example',
    email: 'alice@example.test',
    email_verified: true,
    groups: ['engineering'],
  },
  bob: {
    preferred_username: 'bob',
    name: 'Bob Example',
    email: 'bob@example.test',
    email_verified: true,
    groups: ['sre', 'engineering'],
  },
  carol: {
    preferred_username: 'carol',
    name: 'Carol Example',
    email: 'carol@example.test',
    email_verified: true,
    groups: ['security-audit'],
  },
  mallory: {
    preferred_username: 'Mallory<script>',
    name: 'Mallory Example',
    email: 'mallory@example.test',
    email_verified: false,
    groups: [],
  },
};

function account(id) {
  const user = Object.hasOwn(USERS, id) ? USERS[id] : undefined;
  if (!user) return undefined;
  return {
    accountId: id,
    // The provider filters these by granted scope/claims (see `claims` below). `use` is
    // "id_token" or "userinfo".
    async claims(use) {
      const claims = { sub: id, ...structuredClone(user) };
      if (use === 'id_token' && ID_TOKEN_GROUPS === 'omit') delete claims.groups;
      return claims;
    },
  };
}

function passwordMatches(given) {
  const a = crypto.createHash('sha256').update(String(given)).digest();
  const b = crypto.createHash('sha256').update(PASSWORD).digest();
  return crypto.timingSafeEqual(a, b);
}

// ---------------------------------------------------------------------------------------------
// Signing keys, generated at start: RS256 first so it is what "RS256" resolves to.
//
// Keys are generated as PEM and re-imported before the JWK export. Exporting the KeyObject that
// generateKeyPairSync returns can deadlock Node 20 intermittently: a GC during export runs the
// key generation job's destructor, which takes the key's mutex that the export already holds
// (seen as a hang in node::crypto::KeyGenJob::~KeyGenJob under KeyObjectHandle::ExportJWK).

const keygenStarted = Date.now();
function generate(type, options, kid, alg) {
  const { privateKey } = crypto.generateKeyPairSync(type, {
    ...options,
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  const jwk = crypto.createPrivateKey(privateKey).export({ format: 'jwk' });
  return { ...jwk, kid, alg, use: 'sig' };
}
function signingKeys() {
  if (KEYS_FILE && fs.existsSync(KEYS_FILE)) {
    const jwks = JSON.parse(fs.readFileSync(KEYS_FILE, 'utf8'));
    console.log(`loaded signing keys ${jwks.keys.map((k) => k.kid).join(', ')} from ${KEYS_FILE}`);
    return jwks;
  }
  const jwks = {
    keys: [
      generate('rsa', { modulusLength: 2048 }, 'rs-1', 'RS256'),
      generate('ec', { namedCurve: 'P-256' }, 'es-1', 'ES256'),
      generate('ed25519', {}, 'ed-1', 'EdDSA'),
    ],
  };
  console.log(`generated signing keys rs-1, es-1, ed-1 in ${Date.now() - keygenStarted} ms`);
  if (KEYS_FILE) fs.writeFileSync(KEYS_FILE, JSON.stringify(jwks), { mode: 0o600 });
  return jwks;
}
const JWKS = signingKeys();

// ---------------------------------------------------------------------------------------------
// Redirect URIs on any port.
//
// Tests pick the gateway's port at random, but oidc-provider compares redirect_uri (and
// post_logout_redirect_uri) by exact string against the registered list. Its documented
// extension point for other matching rules is to override `Client.prototype.redirectUriAllowed`
// / `Client.prototype.postLogoutRedirectUriAllowed` on the provider instance (the
// "Redirect URI wildcards" recipe, recipes/redirect_uri_wildcards.md in panva/node-oidc-provider;
// those are the methods lib/actions/authorization and lib/actions/end_session.js call). We
// register the port-less URIs below and accept a request URI when it equals a registered one
// once its port is removed — only for https and only for the registered hosts and paths, never
// other schemes, hosts, paths, query strings or fragments. Development use only.

const WEB_REDIRECT_URIS = [
  'https://git.example.test/.gatehouse/oidc/callback',
  'https://other.example.test/.gatehouse/oidc/callback',
];
const WEB_POST_LOGOUT_REDIRECT_URIS = ['https://git.example.test/'];

function withoutPort(value) {
  const url = URL.parse(value);
  if (!url || url.protocol !== 'https:' || url.username || url.password) return undefined;
  if (url.port !== '' && !/^[0-9]{1,5}$/.test(url.port)) return undefined;
  url.port = '';
  return url.href;
}

function anyPortAllowed(value, registered) {
  if (typeof value !== 'string') return false;
  if (registered.includes(value)) return true;
  const stripped = withoutPort(value);
  return stripped !== undefined && registered.includes(stripped);
}

// ---------------------------------------------------------------------------------------------
// Resource servers.

const GATEHOUSE_RESOURCE = 'urn:gatehouse';

function resourceServer(indicator) {
  let audience;
  let alg = ACCESS_TOKEN_ALG;
  if (indicator === GATEHOUSE_RESOURCE) {
    audience = 'gatehouse';
  } else if (indicator.startsWith(`${GATEHOUSE_RESOURCE}:alg:`)) {
    audience = 'gatehouse';
    alg = indicator.slice(`${GATEHOUSE_RESOURCE}:alg:`.length);
    if (!SIGNING_ALGS.includes(alg)) throw new errors.InvalidTarget(`unsupported alg ${alg}`);
  } else if (/^urn:audience:[A-Za-z0-9._-]+$/.test(indicator)) {
    audience = indicator.slice('urn:audience:'.length);
    alg = 'RS256';
  } else {
    throw new errors.InvalidTarget(`unknown resource ${indicator}`);
  }
  return {
    // Scope values this resource server understands; the JWT `scope` claim holds the requested
    // ones among them (none are required).
    scope: 'gatehouse:read gatehouse:write',
    audience,
    accessTokenTTL: ACCESS_TOKEN_TTL,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg } },
  };
}

// ---------------------------------------------------------------------------------------------
// HTML helpers (no external resources: the test browser has no network).

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, inner) {
  return `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>${esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body>
<main>
<h1>${esc(title)}</h1>
${inner}
</main>
</body>
</html>`;
}

function loginPage(uid, clientId, { error, login } = {}) {
  return page('Sign-in', `
<p>Sign in to continue to <strong id="client">${esc(clientId)}</strong>.</p>
${error ? `<p id="error" role="alert">${esc(error)}</p>` : ''}
<form id="login-form" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
  <label>Username <input id="login" name="login" type="text" required value="${esc(login ?? '')}"></label>
  <label>Password <input id="password" name="password" type="password" required></label>
  <button id="submit" type="submit">Sign in</button>
</form>
<p><a id="abort" href="/interaction/${esc(uid)}/abort">Cancel</a></p>`);
}

async function readForm(req, limit = 16 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new errors.InvalidRequest('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// ---------------------------------------------------------------------------------------------
// Consent: created automatically for what was asked for (all clients here are first-party).

async function grantEverythingMissing(provider, grant, details) {
  if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  if (details.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(details.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  return grant.save();
}

// ---------------------------------------------------------------------------------------------

async function main() {
  // Listen first: the issuer identifier has to carry the port.
  let handler = (_req, res) => {
    res.statusCode = 503;
    res.end();
  };
  const server = https.createServer({ cert: TLS_CERT, key: TLS_KEY }, (req, res) => handler(req, res));
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(PORT, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  const issuer = `https://127.0.0.1:${port}`;

  const ttl = (seconds) => () => seconds;

  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'gatehouse-web',
        client_secret: WEB_SECRET,
        client_name: 'Gatehouse',
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        redirect_uris: WEB_REDIRECT_URIS,
        post_logout_redirect_uris: WEB_POST_LOGOUT_REDIRECT_URIS,
        id_token_signed_response_alg: ID_TOKEN_ALG,
      },
      {
        client_id: 'ci-pipeline',
        client_secret: CI_SECRET,
        client_name: 'CI pipeline',
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
      },
      {
        client_id: 'gatehouse-cli',
        client_name: 'Gatehouse CLI',
        token_endpoint_auth_method: 'none',
        application_type: 'native',
        grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
        response_types: [],
        redirect_uris: [],
        id_token_signed_response_alg: ID_TOKEN_ALG,
      },
    ],
    findAccount: (_ctx, id) => account(id),
    scopes: ['openid', 'profile', 'email', 'groups', 'offline_access'],
    claims: {
      openid: ['sub'],
      profile: ['preferred_username', 'name'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    // Put the granted scopes' claims in the ID token too (not only at userinfo).
    conformIdTokenClaims: false,
    // JWT access tokens (RFC 9068) carry the user's identity for the gateway.
    async extraTokenClaims(_ctx, token) {
      if (!token.accountId) return undefined; // client credentials: sub = client_id already
      const user = Object.hasOwn(USERS, token.accountId) ? USERS[token.accountId] : undefined;
      if (!user) return undefined;
      return {
        preferred_username: user.preferred_username,
        email: user.email,
        email_verified: user.email_verified,
        groups: [...user.groups],
      };
    },
    pkce: { required: () => true },
    // Refresh tokens: always for the device grant; for the code flow when offline_access was
    // requested (and granted).
    async issueRefreshToken(_ctx, client, source) {
      if (!client.grantTypeAllowed('refresh_token')) return false;
      return source.kind === 'DeviceCode' || source.scopes.has('offline_access');
    },
    // First-party web client: no consent screen. The grant is created/extended with whatever
    // was requested (the "Skipping consent screen" recipe, recipes/skip_consent.md).
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      let grant = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
      if (ctx.oidc.client.clientId !== 'gatehouse-web') return grant;
      if (!grant) {
        grant = new ctx.oidc.provider.Grant({
          clientId: ctx.oidc.client.clientId,
          accountId: ctx.oidc.session.accountId,
        });
      }
      const scopes = [...ctx.oidc.requestParamOIDCScopes];
      if (scopes.length) grant.addOIDCScope(scopes.join(' '));
      const claims = [...ctx.oidc.requestParamClaims];
      if (claims.length) grant.addOIDCClaims(claims);
      for (const [indicator, rs] of Object.entries(ctx.oidc.resourceServers)) {
        const wanted = [...ctx.oidc.requestParamScopes].filter((s) => rs.scopes.has(s));
        grant.addResourceScope(indicator, wanted.join(' '));
      }
      await grant.save();
      return grant;
    },
    ttl: {
      AccessToken: ttl(ACCESS_TOKEN_TTL),
      ClientCredentials: ttl(ACCESS_TOKEN_TTL),
      IdToken: ttl(ID_TOKEN_TTL),
      AuthorizationCode: ttl(60),
      DeviceCode: ttl(600),
      Interaction: ttl(600),
      RefreshToken: ttl(24 * 3600),
      Session: ttl(24 * 3600),
      Grant: ttl(24 * 3600),
      BackchannelAuthenticationRequest: ttl(600),
      PreAuthorizedCode: ttl(600),
    },
    jwks: JWKS,
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    responseTypes: ['code'],
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      userinfo: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        async logoutSource(ctx, form) {
          ctx.body = page('Sign-out', `${form}
<p>Do you want to sign out from ${esc(ctx.host)}?</p>
<button id="logout-yes" type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
<button id="logout-no" type="submit" form="op.logoutForm">No, stay signed in</button>`);
        },
        async postLogoutSuccessSource(ctx) {
          ctx.body = page('Sign-out Success', '<p id="signed-out">You are signed out.</p>');
        },
      },
      deviceFlow: {
        enabled: true,
        async userCodeInputSource(ctx, form, _out, err) {
          const msg = err ? `<p id="error" role="alert">${esc(err.userCode || err.name === 'NoCodeError' ? 'The code you entered is incorrect. Try again' : 'There was an error processing your request')}</p>` : '<p>Enter the code displayed on your device</p>';
          ctx.body = page('Device sign-in', `${msg}${form}
<button id="continue" type="submit" form="op.deviceInputForm">Continue</button>`);
        },
        async userCodeConfirmSource(ctx, form, client, _deviceInfo, userCode) {
          ctx.body = page('Confirm Device', `<p><strong>${esc(client.clientName || client.clientId)}</strong> shows the code <code id="user-code">${esc(userCode)}</code>.</p>
${form}
<button id="confirm" type="submit" form="op.deviceConfirmForm">Continue</button>
<button id="device-abort" type="submit" form="op.deviceConfirmForm" name="abort" value="yes">Abort</button>`);
        },
        async successSource(ctx) {
          ctx.body = page('Sign-in Success', '<p id="device-success">Your device is signed in; you can close this page.</p>');
        },
      },
      resourceIndicators: {
        enabled: true,
        async defaultResource(ctx, client, oneOf) {
          if (oneOf) return oneOf;
          if (client && ['gatehouse-cli', 'ci-pipeline'].includes(client.clientId)) {
            return GATEHOUSE_RESOURCE;
          }
          return undefined;
        },
        // A token request without `resource` uses the one the device/authorization request
        // resolved, so the CLI's access tokens stay JWTs for `gatehouse` (also on refresh).
        async useGrantedResource() {
          return true;
        },
        async getResourceServerInfo(_ctx, indicator) {
          return resourceServer(indicator);
        },
      },
    },
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', Object.entries(out)
        .map(([k, v]) => `<pre><strong>${esc(k)}</strong>: <span class="${esc(k)}">${esc(v)}</span></pre>`)
        .join('\n'));
    },
  });

  const { redirectUriAllowed, postLogoutRedirectUriAllowed } = provider.Client.prototype;
  provider.Client.prototype.redirectUriAllowed = function anyPortRedirectUriAllowed(value) {
    if (redirectUriAllowed.call(this, value)) return true;
    return this.clientId === 'gatehouse-web' && anyPortAllowed(value, this.redirectUris);
  };
  provider.Client.prototype.postLogoutRedirectUriAllowed = function anyPortPostLogout(value) {
    if (postLogoutRedirectUriAllowed.call(this, value)) return true;
    return this.clientId === 'gatehouse-web' && anyPortAllowed(value, this.postLogoutRedirectUris);
  };

  // One line per request.
  provider.use(async (ctx, next) => {
    const started = Date.now();
    try {
      await next();
    } finally {
      console.log(`${new Date().toISOString()} ${ctx.method} ${ctx.originalUrl} ${ctx.status} ${Date.now() - started}ms`);
    }
  });

  for (const event of ['server_error', 'grant.error', 'authorization.error', 'end_session.error',
    'userinfo.error', 'device_authorization.error', 'code_verification.error', 'revocation.error',
    'introspection.error', 'discovery.error', 'jwks.error']) {
    provider.on(event, (_ctx, err) => {
      console.log(`event ${event}: ${err?.name} ${err?.message}${err?.error_description ? ` (${err.error_description})` : ''}`);
    });
  }

  // Interactions: our own login page; consent granted automatically.
  provider.use(async (ctx, next) => {
    const m = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|abort))?$/.exec(ctx.path);
    if (!m) return next();
    const [, uid, action] = m;
    ctx.set('Cache-Control', 'no-store');

    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (details.uid !== uid) throw new errors.InvalidRequest('interaction mismatch');
    const { prompt, params } = details;
    const clientId = params.client_id;

    const finish = async (result) => {
      const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
      ctx.status = 303;
      ctx.redirect(returnTo);
    };

    if (action === 'abort') {
      return finish({ error: 'access_denied', error_description: 'End-User aborted interaction' });
    }

    if (prompt.name === 'login') {
      if (action === 'login' && ctx.method === 'POST') {
        const form = await readForm(ctx.req);
        const login = form.get('login') ?? '';
        const password = form.get('password') ?? '';
        const ok = Object.hasOwn(USERS, login) && passwordMatches(password);
        if (!ok) {
          console.log(`login refused for ${JSON.stringify(login)}`);
          ctx.status = 200;
          ctx.type = 'html';
          ctx.body = loginPage(uid, clientId, { error: 'invalid credentials', login });
          return undefined;
        }
        console.log(`login ok for ${login}`);
        return finish({ login: { accountId: login, remember: false } });
      }
      ctx.type = 'html';
      ctx.body = loginPage(uid, clientId);
      return undefined;
    }

    if (prompt.name === 'consent') {
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session.accountId, clientId });
      const grantId = await grantEverythingMissing(provider, grant, prompt.details);
      return finish({ consent: details.grantId ? {} : { grantId } });
    }

    throw new errors.InvalidRequest(`unsupported prompt ${prompt.name}`);
  });

  handler = provider.callback();

  const tmp = path.join(path.dirname(ADDR_FILE), `.${path.basename(ADDR_FILE)}.tmp`);
  fs.writeFileSync(tmp, `issuer=${issuer}\n`);
  fs.renameSync(tmp, ADDR_FILE);
  console.log(`listening issuer=${issuer}`);

  const shutdown = (signal) => {
    console.log(`${signal}: shutting down`);
    server.close(() => process.exit(0));
    server.closeAllConnections?.();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
