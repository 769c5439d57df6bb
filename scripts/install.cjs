// Install step (the package is ESM; this is CommonJS on purpose, it runs before anything is compiled).
// Load a matching prebuild (prebuilds/<platform>-<arch>/node.napi.node, packed by scripts/prebuild.cjs)
// or an existing build; otherwise compile the addon with cmake-js, after checking that cmake and a C++
// compiler exist (and saying what to install when they do not). REPAIR_BUILD_FROM_SOURCE=1 forces a
// source build. With --ignore-scripts this never runs: the prebuild is loaded at run time.
'use strict';
const { spawnSync } = require('node:child_process');
const os = require('node:os');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const force = process.env.REPAIR_BUILD_FROM_SOURCE && process.env.REPAIR_BUILD_FROM_SOURCE !== '0';

if (!force) {
  try {
    require('node-gyp-build')(root);
    console.log('repair-edit: using an existing native build');
    process.exit(0);
  } catch {
    // fall through to a source build
  }
}
function has(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return !r.error && r.status === 0;
}
const missing = [];
if (!has('cmake', ['--version'])) missing.push('cmake (>= 3.18)');
if (!has(process.env.CXX || 'c++', ['--version']) && !has('g++', ['--version']) && !has('clang++', ['--version'])) missing.push('a C++17 compiler (g++ or clang++)');
if (missing.length) {
  console.error(
    `repair-edit: no prebuilt addon matches this platform (${process.platform}-${process.arch}, Node ${process.version}) and a source build needs ${missing.join(' and ')}.\n` +
      '  Install them (Debian/Ubuntu: apt-get install cmake g++), then run "npm rebuild repair-edit".',
  );
  process.exit(1);
}
const jobs = String(typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length);
const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const r = spawnSync(process.execPath, [cmakeJs, 'rebuild', '--parallel', jobs], { cwd: root, stdio: 'inherit' });
if (r.status !== 0) {
  console.error('repair-edit: native build failed (see the output above)');
  process.exit(r.status ?? 1);
}
