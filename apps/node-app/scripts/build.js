'use strict';
// Real build step: copies src/ into dist/ and stamps build info, so a deploy
// that skips `npm run build` (or runs it in the wrong dir) fails visibly.
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

const root = path.resolve(__dirname, '..');
const cwd = process.cwd();

// Failure switch for tests: a FAIL_BUILD file makes this release's build fail.
if (fs.existsSync(path.join(cwd, 'FAIL_BUILD')) || fs.existsSync(path.join(root, 'FAIL_BUILD'))) {
  console.error('build failed: FAIL_BUILD file present (fabship test switch)');
  process.exit(1);
}

const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
const src = fs.readFileSync(path.join(root, 'src', 'server.js'), 'utf8');
const dist = path.join(root, 'dist');
fs.mkdirSync(dist, { recursive: true });

const builtAt = new Date().toISOString();
const banner = `// built by scripts/build.js from src/server.js at ${builtAt}\n`;
fs.writeFileSync(path.join(dist, 'server.js'), banner + src);
const info = {
  name: pkg.name,
  version: pkg.version,
  builtAt,
  node: process.version,
  sourceSha256: crypto.createHash('sha256').update(src).digest('hex'),
};
fs.writeFileSync(path.join(dist, 'build-info.json'), JSON.stringify(info, null, 2) + '\n');
console.log(`built dist/server.js (${pkg.name}@${pkg.version})`);
