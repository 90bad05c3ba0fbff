#!/usr/bin/env node
// Drive the hub's web console in a real headless Chromium (playwright-core), for the Python tests.
//
// Input, one JSON document on stdin:
//
//   {
//     "baseURL": "https://localhost:PORT",
//     "clientCertificate": {"certPath": "...", "keyPath": "..."} | null,
//     "screenshots": "/dir/for/pngs",
//     "executablePath": "/usr/bin/chromium",     (optional; else $HUTONG_CHROMIUM, else /usr/bin/chromium)
//     "actionTimeoutMs": 15000,                  (optional: each navigation, click, fill)
//     "overallTimeoutMs": 60000,                 (optional: the whole run, browser start included)
//     "steps": [
//       {"goto": "/path"},                        navigate, wait for "load"
//       {"fill": "css selector", "value": "text"},
//       {"select": "css selector", "value": "option value"},   choose in a <select>
//       {"check": "css selector"},                tick a checkbox
//       {"click": "css selector"},                click and wait for the navigation it starts and its "load"
//       {"click": "css selector", "navigation": false},   click without waiting for a navigation
//       {"capture": "name"}                       full-page <screenshots>/<name>.png and one output object
//     ]
//   }
//
// Output on stdout: a JSON array with one object per capture:
//
//   {"name", "url", "status" (HTTP status of the last main-frame navigation, null if none), "title",
//    "text" (document.body.innerText), "tables": [{"id", "rows": [[cell text, ...], ...]}] (th and td),
//    "ids": [every element id present], "problems": [console errors, page errors and failed or
//    refused requests since the previous capture]}
//
// Any error (bad input, Playwright error, timeout) ends the process with a non-zero status and the
// message on stderr; a screenshot of the page as it was is saved as <screenshots>/_failure.png.
// playwright-core is found through NODE_PATH (CI installs it into .ci/tools/node_modules). It never
// downloads a browser: it runs the Chromium named above.
'use strict';

const fs = require('node:fs');
const path = require('node:path');

const EXIT_ERROR = 1;
const EXIT_TIMEOUT = 124;

// Chromium as root in a container, with no network: no sandbox (root), no GPU, and nothing that
// phones home (updates, sync, field trials), which would only stall on the closed network.
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

function die(message, code = EXIT_ERROR) {
  // eslint-disable-next-line no-control-regex
  process.stderr.write(`drive.cjs: ${String(message).replace(/\x1b\[[0-9;]*m/g, '')}\n`); // no colours
  process.exit(code);
}

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on('data', (chunk) => chunks.push(chunk));
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    process.stdin.on('error', reject);
  });
}

function parseInput(text) {
  let input;
  try {
    input = JSON.parse(text);
  } catch (err) {
    throw new Error(`stdin is not one JSON document: ${err.message}`);
  }
  if (typeof input !== 'object' || input === null) throw new Error('stdin must hold a JSON object');
  if (typeof input.baseURL !== 'string' || !/^https?:\/\//.test(input.baseURL)) {
    throw new Error('"baseURL" must be an http(s) URL');
  }
  if (typeof input.screenshots !== 'string' || !input.screenshots) throw new Error('"screenshots" must name a directory');
  if (!Array.isArray(input.steps)) throw new Error('"steps" must be an array');
  const cert = input.clientCertificate;
  if (cert != null && (typeof cert.certPath !== 'string' || typeof cert.keyPath !== 'string')) {
    throw new Error('"clientCertificate" must be null or {"certPath", "keyPath"}');
  }
  const names = new Set();
  input.steps.forEach((step, i) => {
    const kinds = ['goto', 'fill', 'select', 'check', 'click', 'capture'].filter((k) => step && typeof step[k] === 'string');
    if (kinds.length !== 1) {
      throw new Error(`step ${i} must have exactly one of goto, fill, select, check, click, capture: ${JSON.stringify(step)}`);
    }
    if ((kinds[0] === 'fill' || kinds[0] === 'select') && typeof step.value !== 'string') {
      throw new Error(`step ${i}: "${kinds[0]}" needs a string "value"`);
    }
    if (kinds[0] === 'capture') {
      if (!/^[A-Za-z0-9_.-]+$/.test(step.capture)) throw new Error(`step ${i}: capture names are [A-Za-z0-9_.-]+`);
      if (names.has(step.capture)) throw new Error(`step ${i}: capture name ${step.capture} used twice`);
      names.add(step.capture);
    }
  });
  return input;
}

function describe(step) {
  const copy = { ...step };
  if ('value' in copy) copy.value = `<${String(copy.value).length} characters>`; // tokens stay out of logs
  return JSON.stringify(copy);
}

// What the page shows, read in the page itself.
function readPage() {
  const text = (el) => (el.innerText || el.textContent || '').trim();
  return {
    title: document.title,
    text: document.body ? document.body.innerText : '',
    tables: Array.from(document.querySelectorAll('table')).map((table) => ({
      id: table.id || null,
      rows: Array.from(table.rows).map((row) => Array.from(row.cells).map(text)),
    })),
    ids: Array.from(document.querySelectorAll('[id]')).map((el) => el.id),
  };
}

async function run(input, state) {
  let playwright;
  try {
    playwright = require('playwright-core');
  } catch (err) {
    throw new Error(
      `cannot load playwright-core (${err.code || err.message}); NODE_PATH=${process.env.NODE_PATH || ''}. ` +
        'Install it: cd .ci/tools && npm install --no-save playwright-core@1.65.1',
    );
  }
  const executablePath = input.executablePath || process.env.HUTONG_CHROMIUM || '/usr/bin/chromium';
  const actionTimeout = input.actionTimeoutMs || 15000;
  fs.mkdirSync(input.screenshots, { recursive: true });

  const browser = await playwright.chromium.launch({
    executablePath,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: actionTimeout * 2,
  });
  state.browser = browser;
  const options = {
    baseURL: input.baseURL,
    // The console's certificate chains to the ministry's (here: the demo) CA, which this browser
    // does not trust. Tests only: accept it rather than install the CA into a browser profile.
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 800 },
    locale: 'zh-CN',
    timezoneId: 'UTC',
  };
  if (input.clientCertificate) {
    // Playwright presents the certificate itself (a TLS proxy in front of the browser), only to
    // exactly this origin: scheme, host and port.
    options.clientCertificates = [
      {
        origin: new URL(input.baseURL).origin,
        certPath: input.clientCertificate.certPath,
        keyPath: input.clientCertificate.keyPath,
      },
    ];
  }
  const context = await browser.newContext(options);
  context.setDefaultTimeout(actionTimeout);
  context.setDefaultNavigationTimeout(actionTimeout);
  const page = await context.newPage();
  state.page = page;

  let status = null;
  let problems = [];
  page.on('response', (response) => {
    if (response.request().isNavigationRequest() && response.frame() === page.mainFrame()) status = response.status();
  });
  page.on('console', (message) => {
    if (message.type() === 'error' || message.type() === 'warning') {
      problems.push(`console ${message.type()}: ${message.text()} (${message.location().url})`);
    }
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('requestfailed', (request) => {
    problems.push(`request failed: ${request.method()} ${request.url()}: ${(request.failure() || {}).errorText}`);
  });

  const captures = [];
  for (const [i, step] of input.steps.entries()) {
    state.step = `step ${i} ${describe(step)}`;
    if (typeof step.goto === 'string' || (typeof step.click === 'string' && step.navigation !== false)) status = null;
    if (typeof step.goto === 'string') {
      await page.goto(step.goto, { waitUntil: 'load' });
    } else if (typeof step.fill === 'string') {
      await page.fill(step.fill, step.value);
    } else if (typeof step.select === 'string') {
      await page.selectOption(step.select, step.value);
    } else if (typeof step.check === 'string') {
      await page.check(step.check);
    } else if (typeof step.click === 'string') {
      if (step.navigation === false) {
        await page.click(step.click);
      } else {
        // Wait for the main frame to navigate (a link, a form posted and its redirect), then for it to load.
        await Promise.all([
          // A little longer than the click's own timeout: a missing element is reported as such.
          page.waitForEvent('framenavigated', {
            predicate: (frame) => frame === page.mainFrame(),
            timeout: actionTimeout + 2000,
          }),
          page.click(step.click),
        ]);
        await page.waitForLoadState('load');
      }
    } else if (typeof step.capture === 'string') {
      await page.screenshot({ path: path.join(input.screenshots, `${step.capture}.png`), fullPage: true });
      const shown = await page.evaluate(readPage);
      captures.push({ name: step.capture, url: page.url(), status, ...shown, problems });
      problems = [];
    }
  }
  state.step = 'closing the browser';
  await context.close();
  await browser.close();
  state.browser = null;
  return captures;
}

async function saveFailure(input, state) {
  if (!state.page || !input || !input.screenshots) return;
  try {
    await state.page.screenshot({ path: path.join(input.screenshots, '_failure.png'), fullPage: true, timeout: 5000 });
  } catch {
    // the page may be gone with the browser: the message on stderr is what matters
  }
}

async function main() {
  const state = { browser: null, page: null, step: 'reading stdin' };
  let input = null;
  // Bounded whatever happens: the whole run, browser start included. Exiting kills the browser
  // (playwright-core stops the processes it started when node exits).
  let timer = null;
  const bound = (ms) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      process.stderr.write(`drive.cjs: gave up after ${ms} ms overall, at ${state.step}\n`);
      process.exit(EXIT_TIMEOUT);
    }, ms);
    timer.unref(); // pending work keeps node running; the bound alone does not
  };
  bound(60000);
  try {
    input = parseInput(await readStdin());
    if (input.overallTimeoutMs) bound(input.overallTimeoutMs);
    const captures = await run(input, state);
    process.stdout.write(`${JSON.stringify(captures)}\n`, () => process.exit(0));
  } catch (err) {
    await saveFailure(input, state);
    if (state.browser) await state.browser.close().catch(() => {});
    die(`${state.step}: ${err && err.message ? err.message : err}`);
  }
}

main();
