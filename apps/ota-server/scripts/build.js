'use strict';
// Next.js-style build: writes .next/BUILD_ID (and a tiny bundle). `npm start`
// refuses to run without it, like `next start` does.
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

const root = path.resolve(__dirname, '..');
const cwd = process.cwd();
if (fs.existsSync(path.join(cwd, 'FAIL_BUILD')) || fs.existsSync(path.join(root, 'FAIL_BUILD'))) {
  console.error('build failed: FAIL_BUILD file present (fabship test switch)');
  process.exit(1);
}

const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
const src = fs.readFileSync(path.join(root, 'server.js'));
const buildId = crypto.createHash('sha256').update(src).update(String(Date.now())).digest('hex').slice(0, 21);
const out = path.join(root, '.next');
fs.mkdirSync(path.join(out, 'static'), { recursive: true });
fs.writeFileSync(path.join(out, 'BUILD_ID'), buildId);
// The "launch asset" served to Expo clients: deterministic per build.
fs.writeFileSync(path.join(out, 'static', 'bundle.js'), `// ${pkg.name}@${pkg.version} build ${buildId}\nconsole.log("hello from OTA");\n`);
fs.writeFileSync(path.join(out, 'build-info.json'),
  JSON.stringify({ name: pkg.name, version: pkg.version, buildId, builtAt: new Date().toISOString(), node: process.version }, null, 2) + '\n');
console.log(`built .next/BUILD_ID ${buildId}`);
