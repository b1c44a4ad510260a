'use strict';
// fabship sample OTA update server (xavia-ota-like HTTP surface), zero deps, Node >= 18.
// Never logs env values: most of them are secrets.
const fs = require('fs');
const path = require('path');
const http = require('http');
const crypto = require('crypto');

const root = __dirname;
const dirs = [...new Set([process.cwd(), root])];
function switchOn(name) {
  return process.env[name] === '1' || dirs.some((d) => fs.existsSync(path.join(d, name)));
}
function die(msg) {
  console.error(`ota-server: ${msg}`);
  process.exit(1);
}

if (switchOn('FAIL_START')) die('startup failed: FAIL_START switch is on (fabship test switch)');

const REQUIRED = [
  'HOST', 'NODE_ENV', 'PORT', 'BLOB_STORAGE_TYPE', 'DB_TYPE', 'S3_REGION', 'S3_BUCKET_NAME',
  'SUPABASE_URL', 'SUPABASE_API_KEY', 'ADMIN_PASSWORD', 'ADMIN_SESSION_SECRET',
  'ADMIN_SESSION_MAX_AGE_SECONDS', 'UPLOAD_KEY', 'PRIVATE_KEY_BASE_64',
];
// Optional (may be absent or empty): S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, S3_ENDPOINT.
const env = process.env;
const missing = REQUIRED.filter((k) => env[k] === undefined || env[k] === '');
if (missing.length) die(`missing required environment variable(s): ${missing.join(', ')}`);
if (!/^[0-9a-fA-F]{64,}$/.test(env.ADMIN_SESSION_SECRET)) die('ADMIN_SESSION_SECRET must be at least 64 hex characters');
const maxAge = Number(env.ADMIN_SESSION_MAX_AGE_SECONDS);
if (!Number.isInteger(maxAge) || maxAge <= 0) die('ADMIN_SESSION_MAX_AGE_SECONDS must be a positive integer');
if (!/^[A-Za-z0-9+/=\s_-]+$/.test(env.PRIVATE_KEY_BASE_64)) die('PRIVATE_KEY_BASE_64 is not base64');
const port = parseInt(env.PORT, 10);
if (!(port > 0 && port < 65536)) die('PORT must be a port number');

let buildId;
try {
  buildId = fs.readFileSync(path.join(root, '.next', 'BUILD_ID'), 'utf8').trim();
} catch (e) {
  die("could not find a production build in '.next'; run `npm run build` first");
}
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
function readVersion() {
  // Precedence: APP_VERSION env > VERSION file > package.json version.
  if (env.APP_VERSION) return env.APP_VERSION.trim();
  for (const d of dirs) {
    try {
      const v = fs.readFileSync(path.join(d, 'VERSION'), 'utf8').trim();
      if (v) return v;
    } catch (e) { /* absent */ }
  }
  return pkg.version;
}
const version = readVersion();
let bundle;
try {
  bundle = fs.readFileSync(path.join(root, '.next', 'static', 'bundle.js'));
} catch (e) {
  bundle = Buffer.from('console.log("hello from OTA");\n');
}
const bundleHash = crypto.createHash('sha256').update(bundle).digest('base64url');
const startedAt = new Date().toISOString();

// --- sessions: cookie "session=<base64url(JSON payload)>.<hex HMAC-SHA256(payload part, ADMIN_SESSION_SECRET as UTF-8)>"
const sessionKey = Buffer.from(env.ADMIN_SESSION_SECRET, 'utf8');
function sign(payload) {
  return crypto.createHmac('sha256', sessionKey).update(payload).digest('hex');
}
function makeSession() {
  const now = Math.floor(Date.now() / 1000);
  const payload = Buffer.from(JSON.stringify({ sub: 'admin', iat: now, exp: now + maxAge })).toString('base64url');
  return `${payload}.${sign(payload)}`;
}
function safeEqual(a, b) {
  // Hash first so lengths match and timing does not leak the length.
  const ha = crypto.createHash('sha256').update(String(a)).digest();
  const hb = crypto.createHash('sha256').update(String(b)).digest();
  return crypto.timingSafeEqual(ha, hb);
}
function validSession(req) {
  const cookies = Object.fromEntries((req.headers.cookie || '').split(';').map((c) => {
    const i = c.indexOf('=');
    return i < 0 ? [c.trim(), ''] : [c.slice(0, i).trim(), c.slice(i + 1).trim()];
  }));
  const token = cookies.session;
  if (!token || token.indexOf('.') < 0) return false;
  const [payload, sig] = token.split('.', 2);
  if (!safeEqual(sig, sign(payload))) return false;
  try {
    const data = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    return typeof data.exp === 'number' && data.exp > Date.now() / 1000;
  } catch (e) {
    return false;
  }
}

function uuidFrom(...parts) {
  const h = crypto.createHash('sha256').update(parts.join('|')).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

const releases = [
  { id: uuidFrom(buildId, '1.0.0', 'ios'), runtimeVersion: '1.0.0', platform: 'ios', createdAt: startedAt, commitHash: buildId },
  { id: uuidFrom(buildId, '1.0.0', 'android'), runtimeVersion: '1.0.0', platform: 'android', createdAt: startedAt, commitHash: buildId },
];

function send(res, status, body, headers = {}) {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  const type = typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json';
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function readJson(req, cb) {
  let size = 0;
  const chunks = [];
  req.on('data', (c) => {
    size += c.length;
    if (size > 65536) req.destroy(); else chunks.push(c);
  });
  req.on('end', () => {
    try { cb(null, JSON.parse(Buffer.concat(chunks).toString('utf8') || 'null')); } catch (e) { cb(e); }
  });
}

function manifest(req, res) {
  const proto = req.headers['expo-protocol-version'];
  const platform = req.headers['expo-platform'];
  const runtime = req.headers['expo-runtime-version'];
  if (proto !== '0' && proto !== '1') return send(res, 400, { error: 'expo-protocol-version must be 0 or 1' });
  if (platform !== 'ios' && platform !== 'android') return send(res, 400, { error: 'expo-platform must be ios or android' });
  if (!runtime || !/^[\w.\-]+$/.test(runtime)) return send(res, 400, { error: 'missing or invalid expo-runtime-version' });
  const base = `http://${req.headers.host || 'localhost'}`;
  const body = {
    id: uuidFrom(buildId, runtime, platform),
    createdAt: startedAt,
    runtimeVersion: runtime,
    launchAsset: {
      hash: bundleHash,
      key: bundleHash.slice(0, 16),
      contentType: 'application/javascript',
      fileExtension: '.bundle',
      url: `${base}/api/assets?asset=bundle.js&runtimeVersion=${encodeURIComponent(runtime)}&platform=${platform}`,
    },
    assets: [],
    metadata: {},
    extra: { expoClient: { version } },
  };
  return send(res, 200, body, {
    'expo-protocol-version': proto,
    'expo-sfv-version': '0',
    'cache-control': 'private, max-age=0',
  });
}

const server = http.createServer((req, res) => {
  const started = Date.now();
  res.on('finish', () => {
    // Path only: query strings could carry tokens.
    console.log(`${new Date().toISOString()} ${req.method} ${(req.url || '').split('?')[0]} ${res.statusCode} ${Date.now() - started}ms`);
  });
  const url = new URL(req.url || '/', 'http://x');
  const route = `${req.method} ${url.pathname.replace(/\/+$/, '') || '/'}`;
  switch (route) {
    case 'GET /api/health':
      if (switchOn('FAIL_HEALTH')) return send(res, 503, { status: 'fail', reason: 'FAIL_HEALTH switch' });
      return send(res, 200, { status: 'ok' });
    case 'GET /api/version':
      return send(res, 200, { version, buildId });
    case 'GET /api/manifest':
      return manifest(req, res);
    case 'GET /api/assets':
      if (url.searchParams.get('asset') !== 'bundle.js') return send(res, 404, { error: 'asset not found' });
      res.writeHead(200, { 'content-type': 'application/javascript', 'content-length': bundle.length });
      return res.end(bundle);
    case 'POST /api/login':
      return readJson(req, (err, data) => {
        if (err || !data || typeof data.password !== 'string') return send(res, 400, { error: 'expected JSON {"password": "..."}' });
        if (!safeEqual(data.password, env.ADMIN_PASSWORD)) return send(res, 401, { error: 'invalid password' });
        return send(res, 200, { ok: true }, {
          'set-cookie': `session=${makeSession()}; HttpOnly; Path=/; Max-Age=${maxAge}; SameSite=Lax`,
        });
      });
    case 'POST /api/logout':
      return send(res, 200, { ok: true }, { 'set-cookie': 'session=; HttpOnly; Path=/; Max-Age=0' });
    case 'GET /api/releases':
      if (!validSession(req)) return send(res, 401, { error: 'unauthorized' });
      return send(res, 200, { releases });
    case 'GET /':
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      return res.end(`<!doctype html><html><head><title>OTA server</title></head><body><h1>fabship OTA server</h1><p>version: ${version}</p></body></html>\n`);
    default:
      return send(res, 404, { error: 'not found' });
  }
});

server.on('error', (err) => die(`server error: ${err.code || err.message}`));
server.listen(port, env.HOST || '0.0.0.0', () => {
  console.log(`ota-server ${version} (build ${buildId}) listening on ${env.HOST}:${port} pid ${process.pid}`);
});

function shutdown(sig) {
  console.log(`${sig} received, shutting down`);
  server.close(() => process.exit(0));
  if (server.closeAllConnections) server.closeAllConnections();
  setTimeout(() => process.exit(0), 500).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
