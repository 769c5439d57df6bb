// prebuild.cjs — `npm pack` / `npm publish` (prepack): put the addon built here into
// prebuilds/<platform>-<arch>/node.napi.node, where node-gyp-build finds it at run time, so that an
// install needs no compiler (scripts/install.cjs only compiles when no prebuild loads).
// The build must exist (npm install / npx cmake-js compile). It is stripped of debug symbols and
// loaded once to check it; a build without the CUDA backend is packed with a warning
// (REPAIR_PREBUILD_REQUIRE_CUDA=1 makes that an error, for release builds).
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const built = path.join(root, 'build', 'Release', 'repair_edit.node');
if (!fs.existsSync(built)) {
  console.error(`repair-edit prebuild: ${built} does not exist; build the addon first (npm install, or npx cmake-js compile)`);
  process.exit(1);
}
const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
fs.mkdirSync(dir, { recursive: true });
const out = path.join(dir, 'node.napi.node');
const tmp = `${out}.tmp`;
fs.copyFileSync(built, tmp);
const strip = spawnSync('strip', ['--strip-debug', tmp], { stdio: 'ignore' });
if (strip.status !== 0) console.warn('repair-edit prebuild: strip not available; packing the unstripped addon');
fs.renameSync(tmp, out);
const info = require(out).info();
if (!info.cuda.built) {
  const msg = 'repair-edit prebuild: this build has no CUDA backend (nvcc was not found, or REPAIR_CPU_ONLY was set)';
  if (process.env.REPAIR_PREBUILD_REQUIRE_CUDA === '1') {
    console.error(`${msg}; refusing (REPAIR_PREBUILD_REQUIRE_CUDA=1)`);
    fs.rmSync(out);
    process.exit(1);
  }
  console.warn(`${msg}; packing a CPU-only prebuild`);
}
console.log(`repair-edit prebuild: ${path.relative(root, out)} (${(fs.statSync(out).size / 2 ** 20).toFixed(1)} MiB, backends ${info.backends.join(', ')})`);
