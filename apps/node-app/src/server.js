'use strict';
// fabship sample app. Zero dependencies; Node >= 18 only.
// Never logs env values: they may hold secrets.
const fs = require('fs');
const path = require('path');
const http = require('http');

// dist/server.js and src/server.js both sit one level below the app root.
const appRoot = path.resolve(__dirname, '..');
// Working dir is the release dir; also check the app root (usually the same).
const dirs = [...new Set([process.cwd(), appRoot])];

function switchOn(name) {
  return process.env[name] === '1' || dirs.some((d) => fs.existsSync(path.join(d, name)));
}

function readVersion() {
  // Precedence: APP_VERSION env > VERSION file > package.json version.
  if (process.env.APP_VERSION) return process.env.APP_VERSION.trim();
  for (const d of dirs) {
    try {
      const v = fs.readFileSync(path.join(d, 'VERSION'), 'utf8').trim();
      if (v) return v;
    } catch (e) { /* absent */ }
  }
  try {
    return JSON.parse(fs.readFileSync(path.join(appRoot, 'package.json'), 'utf8')).version || 'unknown';
  } catch (e) {
    return 'unknown';
  }
}

function readBuildInfo() {
  try {
    return JSON.parse(fs.readFileSync(path.join(appRoot, 'dist', 'build-info.json'), 'utf8'));
  } catch (e) {
    return null;
  }
}

if (switchOn('FAIL_START')) {
  console.error('startup failed: FAIL_START switch is on (fabship test switch)');
  process.exit(1);
}

const version = readVersion();
const build = readBuildInfo();
const port = parseInt(process.env.PORT || '3000', 10);
const host = process.env.HOST || '0.0.0.0';

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function health() {
  if (switchOn('FAIL_HEALTH')) return [503, { status: 'fail', reason: 'FAIL_HEALTH switch', version }];
  const secret = process.env.APP_SECRET;
  // Used by the rotate-env failure test; only the length is inspected.
  if (secret !== undefined && secret.length < 16) {
    return [503, { status: 'fail', reason: 'APP_SECRET too short', version }];
  }
  return [200, { status: 'ok', version }];
}

const server = http.createServer((req, res) => {
  const started = Date.now();
  res.on('finish', () => {
    console.log(`${new Date().toISOString()} ${req.method} ${req.url} ${res.statusCode} ${Date.now() - started}ms`);
  });
  const url = (req.url || '/').split('?')[0];
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    return send(res, 405, 'application/json', JSON.stringify({ error: 'method not allowed' }));
  }
  if (url === '/health') {
    const [status, body] = health();
    return send(res, status, 'application/json', JSON.stringify(body));
  }
  if (url === '/version') return send(res, 200, 'text/plain; charset=utf-8', version + '\n');
  if (url === '/build-info') return send(res, build ? 200 : 404, 'application/json', JSON.stringify(build || { error: 'no build info' }));
  if (url === '/') {
    return send(res, 200, 'text/html; charset=utf-8',
      `<!doctype html><html><head><title>fabship node-app</title></head>` +
      `<body><h1>fabship node-app</h1><p>version: <span id="version">${version}</span></p></body></html>\n`);
  }
  return send(res, 404, 'application/json', JSON.stringify({ error: 'not found' }));
});

server.on('error', (err) => {
  console.error(`server error: ${err.code || err.message}`);
  process.exit(1);
});

server.listen(port, host, () => {
  console.log(`node-app ${version} listening on ${host}:${port} (pid ${process.pid})`);
});

function shutdown(sig) {
  console.log(`${sig} received, shutting down`);
  server.close(() => process.exit(0));
  // Keep-alive sockets would hold close() open; drop them (Node >= 18.2).
  if (server.closeAllConnections) server.closeAllConnections();
  setTimeout(() => process.exit(0), 500).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
