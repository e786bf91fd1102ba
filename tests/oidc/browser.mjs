// A real headless Chromium (Debian's /usr/bin/chromium) driven by playwright-core, for the
// gateway's OIDC tests. Usage:
//
//   node tests/oidc/browser.mjs login  <start_url> <user> <password> [then_url ...]
//   node tests/oidc/browser.mjs device <verification_uri_complete> <user> <password>
//
// login: opens start_url, expects the provider's login form, signs in, follows redirects and
//   prints one JSON line:
//     {"final_url", "status", "body" (first 4000 chars of the page text), "cookies": [{name,
//      value, domain, path, secure, httpOnly, sameSite, expires}], "login_form_seen",
//      "login_error" (text shown by the login form after a refused password, else null),
//      "then": [same fields for each then_url visited afterwards in the same browser]}
//   A provider sign-out confirmation page met on a then_url is confirmed ("Yes").
//   Exit 0 when the flow ran to a settled page (whatever its status); non-zero with a message on
//   stderr otherwise (the JSON is still printed when there is one, e.g. no login form was seen).
// device: opens verification_uri_complete, confirms the code, signs in and prints {"ok":true}
//   once the provider shows its success page; otherwise {"ok":false,"error":...} and exit 1.
//
// Environment:
//   BROWSER_TLS_CERTS  comma-separated PEM files of the server certificates to trust (the test
//                      CA's server certificate): their SPKI SHA-256 hashes are passed to
//                      Chromium's --ignore-certificate-errors-spki-list, so only those keys are
//                      accepted despite the unknown CA; ignoreHTTPSErrors stays false.
//   BROWSER_TIMEOUT_MS overall deadline (default 30000).
//   CHROMIUM_PATH      default /usr/bin/chromium.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { chromium } from 'playwright-core';

const TIMEOUT_MS = Number.parseInt(process.env.BROWSER_TIMEOUT_MS || '30000', 10);
const EXECUTABLE = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const BODY_LIMIT = 4000;

function fail(message, code = 1) {
  process.stderr.write(`browser.mjs: ${message}\n`);
  process.exit(code);
}

function spkiHashes() {
  const files = (process.env.BROWSER_TLS_CERTS || '').split(',').map((s) => s.trim()).filter(Boolean);
  return files.map((file) => {
    const cert = new crypto.X509Certificate(fs.readFileSync(file));
    const der = cert.publicKey.export({ type: 'spki', format: 'der' });
    return crypto.createHash('sha256').update(der).digest('base64');
  });
}

async function withBrowser(fn) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'gatehouse-chromium-'));
  const hashes = spkiHashes();
  const args = [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--host-resolver-rules=MAP git.example.test 127.0.0.1, MAP other.example.test 127.0.0.1',
  ];
  if (hashes.length) args.push(`--ignore-certificate-errors-spki-list=${hashes.join(',')}`);
  let context;
  const deadline = setTimeout(() => {
    process.stderr.write(`browser.mjs: timed out after ${TIMEOUT_MS} ms\n`);
    process.exit(124);
  }, TIMEOUT_MS);
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: EXECUTABLE,
      headless: true,
      args,
      ignoreHTTPSErrors: false,
      timeout: TIMEOUT_MS,
    });
    context.setDefaultTimeout(Math.min(15000, TIMEOUT_MS));
    context.setDefaultNavigationTimeout(Math.min(20000, TIMEOUT_MS));
    const page = context.pages()[0] || await context.newPage();
    return await fn(context, page);
  } finally {
    clearTimeout(deadline);
    await context?.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

// Tracks the last main-frame document response that was not a redirect.
function trackStatus(page) {
  const state = { status: null, url: null };
  page.on('response', (resp) => {
    const req = resp.request();
    if (!req.isNavigationRequest() || resp.frame() !== page.mainFrame()) return;
    const s = resp.status();
    if (s >= 300 && s < 400 && resp.headers().location) return;
    state.status = s;
    state.url = resp.url();
  });
  return state;
}

// Waits for the page to stop navigating (redirect chains, auto-submitted forms, meta refresh).
async function settle(page) {
  let last = page.url();
  for (let i = 0; i < 20; i += 1) {
    await page.waitForLoadState('load').catch(() => {});
    await page.waitForLoadState('networkidle', { timeout: 2000 }).catch(() => {});
    if (page.url() === last) return;
    last = page.url();
  }
}

// Clicks and waits for the navigation the click causes.
async function clickAndSettle(page, selector) {
  const before = page.url();
  await Promise.all([
    page.waitForNavigation({ waitUntil: 'load' }).catch(() => {}),
    page.click(selector),
  ]);
  if (page.url() === before) await page.waitForLoadState('load').catch(() => {});
  await settle(page);
}

async function has(page, selector) {
  return (await page.locator(selector).count()) > 0;
}

async function snapshot(context, page, tracker) {
  const body = await page.evaluate(() => (document.body ? document.body.innerText : '')).catch(() => '');
  const cookies = (await context.cookies()).map((c) => ({
    name: c.name,
    value: c.value,
    domain: c.domain,
    path: c.path,
    secure: c.secure,
    httpOnly: c.httpOnly,
    sameSite: c.sameSite,
    expires: c.expires,
  }));
  return {
    final_url: page.url(),
    status: tracker.status,
    body: body.slice(0, BODY_LIMIT),
    cookies,
  };
}

async function submitLogin(page, user, password) {
  await page.fill('#login-form input[name="login"]', user);
  await page.fill('#login-form input[name="password"]', password);
  await clickAndSettle(page, '#login-form #submit');
  if (await has(page, '#login-form')) {
    const error = await page.locator('#error').textContent().catch(() => null);
    return error ? error.trim() : 'login form shown again';
  }
  return null;
}

async function goto(page, url) {
  await page.goto(url, { waitUntil: 'load' });
  await settle(page);
}

async function loginMode(startUrl, user, password, thenUrls) {
  return withBrowser(async (context, page) => {
    const tracker = trackStatus(page);
    await goto(page, startUrl);
    const loginFormSeen = await has(page, '#login-form');
    let loginError = null;
    if (loginFormSeen) {
      loginError = await submitLogin(page, user, password);
    }
    const out = {
      ...(await snapshot(context, page, tracker)),
      login_form_seen: loginFormSeen,
      login_error: loginError,
      then: [],
    };
    for (const url of thenUrls) {
      await goto(page, url);
      if (await has(page, '#logout-yes')) await clickAndSettle(page, '#logout-yes');
      out.then.push(await snapshot(context, page, tracker));
    }
    process.stdout.write(`${JSON.stringify(out)}\n`);
    if (!loginFormSeen) {
      fail(`did not land on the provider login form (at ${out.final_url}, status ${out.status})`, 3);
    }
  });
}

async function deviceMode(uri, user, password) {
  const result = await withBrowser(async (context, page) => {
    const tracker = trackStatus(page);
    await goto(page, uri);
    if (await has(page, '#confirm')) {
      await clickAndSettle(page, '#confirm');
    } else {
      const snap = await snapshot(context, page, tracker);
      return { ok: false, error: `no device confirmation page at ${snap.final_url}: ${snap.body.slice(0, 300)}` };
    }
    if (!(await has(page, '#login-form'))) {
      const snap = await snapshot(context, page, tracker);
      return { ok: false, error: `no login form after confirming the code at ${snap.final_url}: ${snap.body.slice(0, 300)}` };
    }
    const loginError = await submitLogin(page, user, password);
    if (loginError) return { ok: false, error: `login refused: ${loginError}` };
    if (await has(page, '#device-success')) return { ok: true };
    const snap = await snapshot(context, page, tracker);
    return { ok: false, error: `no success page at ${snap.final_url} (status ${snap.status}): ${snap.body.slice(0, 300)}` };
  });
  process.stdout.write(`${JSON.stringify(result)}\n`);
  if (!result.ok) fail(result.error);
}

const [mode, ...rest] = process.argv.slice(2);
try {
  if (!fs.existsSync(EXECUTABLE)) fail(`${EXECUTABLE} not found (apt-get install -y chromium)`, 2);
  if (mode === 'login' && rest.length >= 3) {
    await loginMode(rest[0], rest[1], rest[2], rest.slice(3));
  } else if (mode === 'device' && rest.length === 3) {
    await deviceMode(rest[0], rest[1], rest[2]);
  } else {
    fail('usage: browser.mjs login <start_url> <user> <password> [then_url ...] | device <verification_uri_complete> <user> <password>', 2);
  }
} catch (err) {
  fail(err?.stack || String(err));
}
