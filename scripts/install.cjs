// Install step (the package is ESM; this is CommonJS on purpose, it runs before anything is compiled).
// Load a matching prebuild or an existing build; otherwise compile the addon with cmake-js.
// REPAIR_BUILD_FROM_SOURCE=1 forces a source build.
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
const jobs = String(typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length);
const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const r = spawnSync(process.execPath, [cmakeJs, 'rebuild', '--parallel', jobs], { cwd: root, stdio: 'inherit' });
if (r.status !== 0) {
  console.error('repair-edit: native build failed (see the output above)');
  process.exit(r.status ?? 1);
}
