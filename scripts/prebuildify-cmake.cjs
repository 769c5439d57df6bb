#!/usr/bin/env node
// prebuildify always calls `<node-gyp> rebuild --target=... --arch=...`; we build with cmake-js instead.
'use strict';
const { spawnSync } = require('node:child_process');
const args = process.argv.slice(2);
const arch = (args.find((a) => a.startsWith('--arch=')) || '').slice(7) || process.arch;
const r = spawnSync(process.execPath, [require.resolve('cmake-js/bin/cmake-js'), 'rebuild', '--arch', arch], { stdio: 'inherit' });
process.exit(r.status ?? 1);
