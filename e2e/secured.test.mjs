// End to end with access control on and sites (issues 16 and 17): OHIF's published build in
// headless Chromium opens a study at a site's root and at the enterprise root of a server
// that requires a bearer token. OHIF sends it: a `token` query parameter on its viewer route
// becomes `Authorization: Bearer <token>` on every request it makes (OHIF 3.x's
// updateAuthServiceAndCleanUrl). The token is an API key made with `dicomweb-server apikey`.
// Run by `make e2e` after ohif.test.mjs; same environment variables.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..');
const require = createRequire(import.meta.url);
const dist = join(dirname(require.resolve('@ohif/app/package.json')), 'dist');
const python = process.env.PYTHON || join(repo, '.venv', 'bin', 'python');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const artifacts = process.env.E2E_ARTIFACTS || join(here, 'results');

let server;
let root;
let siteRoot;
let token;
let seeded;
let context;
const viewers = [];
const scratch = mkdtempSync(join(tmpdir(), 'dicomweb-e2e-secured-'));
const serverLog = [];

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

async function waitFor(url) {
  const end = Date.now() + 30_000;
  for (;;) {
    try {
      await fetch(url);
      return;
    } catch {
      // not listening yet
    }
    if (Date.now() > end) throw new Error(`${url} did not answer:\n${serverLog.join('')}`);
    await new Promise(r => setTimeout(r, 200));
  }
}

function appConfig(dicomwebRoot) {
  return `window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  investigationalUseDialog: { option: 'never' },
  maxNumberOfWebWorkers: 2,
  defaultDataSourceName: 'dicomweb',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'dicomweb',
    configuration: {
      friendlyName: 'dicomweb_server',
      name: 'dicomweb_server',
      wadoUriRoot: '${dicomwebRoot}',
      qidoRoot: '${dicomwebRoot}',
      wadoRoot: '${dicomwebRoot}',
      qidoSupportsIncludeField: true,
      supportsFuzzyMatching: true,
      supportsWildcard: true,
      imageRendering: 'wadors',
      thumbnailRendering: 'thumbnail',
      thumbnailRequestStrategy: 'fetch',
      enableStudyLazyLoad: true,
      singlepart: 'bulkdata,video,pdf',
      bulkDataURI: { enabled: true, relativeResolution: 'studies' },
      omitQuotationForMultipartRequest: true,
    },
  }],
};
`;
}

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
};

async function serveOhif(config) {
  const viewer = createServer((request, response) => {
    const path = decodeURIComponent(new URL(request.url, 'http://x').pathname);
    if (path === '/app-config.js') {
      response.writeHead(200, { 'Content-Type': TYPES['.js'] });
      response.end(config);
      return;
    }
    let file = normalize(join(dist, path));
    if (!file.startsWith(dist)) {
      response.writeHead(403).end();
      return;
    }
    try {
      if (!statSync(file).isFile()) throw new Error('not a file');
    } catch {
      file = join(dist, 'index.html');
    }
    response.writeHead(200, { 'Content-Type': TYPES[extname(file)] || 'application/octet-stream' });
    response.end(readFileSync(file));
  });
  const port = await freePort();
  await new Promise(resolve => viewer.listen(port, '127.0.0.1', resolve));
  viewers.push(viewer);
  return `http://127.0.0.1:${port}`;
}

function cli(...args) {
  const env = { ...process.env, DICOMWEB_DATA_DIR: join(scratch, 'data') };
  return execFileSync(python, ['-m', 'dicomweb_server', ...args], { cwd: repo, env, encoding: 'utf8' });
}

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  cli('sites', 'add', 'hospital-a', '--description', 'e2e site');
  token = cli('apikey', 'create', '--name', 'e2e-viewer', '--grant', '*:read', '--grant', '*:write').trim();
  const apiPort = await freePort();
  root = `http://127.0.0.1:${apiPort}/dicomweb`;
  siteRoot = `${root}/sites/hospital-a`;
  server = spawn(
    python,
    ['-m', 'dicomweb_server', 'serve', '--port', String(apiPort), '--workers', '1'],
    {
      cwd: repo,
      env: { ...process.env, DICOMWEB_DATA_DIR: join(scratch, 'data'), DICOMWEB_AUTH: 'apikey' },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  server.stdout.on('data', chunk => serverLog.push(chunk.toString()));
  server.stderr.on('data', chunk => serverLog.push(chunk.toString()));
  await waitFor(`${root}/studies?limit=1`);
  const refused = await fetch(`${siteRoot}/studies`);
  assert.equal(refused.status, 401, 'the server must refuse requests without a token');
  seeded = JSON.parse(execFileSync(python, [join(here, 'seed.py'), siteRoot], {
    encoding: 'utf8', env: { ...process.env, E2E_TOKEN: token },
  }));
  context = await chromium.launchPersistentContext(join(scratch, 'profile'), {
    executablePath: chromiumPath,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1400, height: 900 },
  });
});

after(async () => {
  await context?.close();
  viewers.forEach(viewer => viewer.close());
  server?.kill('SIGTERM');
  writeFileSync(join(artifacts, 'secured-server.log'), serverLog.join(''));
  rmSync(scratch, { recursive: true, force: true });
});

// The largest canvas in the page and how many of its pixels are lit.
async function litPixels(page) {
  return page.evaluate(() => {
    const canvases = [...document.querySelectorAll('canvas')].filter(c => c.width > 100 && c.height > 100);
    canvases.sort((a, b) => b.width * b.height - a.width * a.height);
    if (!canvases[0]) return 0;
    const { width, height } = canvases[0];
    const data = canvases[0].getContext('2d').getImageData(0, 0, width, height).data;
    let lit = 0;
    for (let i = 0; i < data.length; i += 4) if (data[i] + data[i + 1] + data[i + 2] > 30) lit += 1;
    return lit;
  });
}

async function openWithToken(dicomwebRoot, screenshot) {
  const viewerUrl = await serveOhif(appConfig(dicomwebRoot));
  const page = await context.newPage();
  const answers = [];
  page.on('request', request => {
    if (request.url().startsWith(root) && request.method() !== 'OPTIONS') {
      answers.push([request.url(), request.headers().authorization || '']);
    }
  });
  const failures = [];
  page.on('response', response => {
    if (response.url().startsWith(root) && response.status() >= 400) {
      failures.push(`${response.status()} ${response.url()}`);
    }
  });
  const study = seeded.study;
  await page.goto(`${viewerUrl}/viewer?StudyInstanceUIDs=${study}&token=${encodeURIComponent(token)}`,
    { waitUntil: 'domcontentloaded' });
  let lit = 0;
  const end = Date.now() + 120_000;
  while (Date.now() < end && lit <= 1000) {
    lit = await litPixels(page);
    await page.waitForTimeout(500);
  }
  await page.screenshot({ path: join(artifacts, screenshot) });
  assert.ok(lit > 1000, `the viewport stays blank; failed: ${failures.join(', ')}`);
  assert.ok(answers.length > 0, 'OHIF asked the server for nothing');
  assert.ok(answers.every(([, auth]) => auth === `Bearer ${token}`),
    `a request went without the token: ${JSON.stringify(answers.filter(([, a]) => !a).slice(0, 3))}`);
  assert.deepEqual(failures, [], 'requests refused');
  await page.close();
  return answers;
}

test('OHIF with a bearer token opens a study at a site root', { timeout: 180_000 }, async () => {
  const answers = await openWithToken(siteRoot, 'secured-site-root.png');
  assert.ok(answers.every(([url]) => url.startsWith(siteRoot)), 'every request stays in the site');
});

test('OHIF with a bearer token opens the same study at the enterprise root', { timeout: 180_000 }, async () => {
  const answers = await openWithToken(root, 'secured-enterprise-root.png');
  assert.ok(answers.some(([url]) => url.includes('/studies?') || url.includes('/series')),
    'OHIF searched at the enterprise root');
});
