#!/usr/bin/env bash
# pack-check.sh — install the package as a user would, with no compiler step: `npm pack` (its prepack
# puts the addon built here into prebuilds/), `npm install <tarball> --ignore-scripts` into a fresh
# project in a temp folder, then load it with import and with require, run `repair-edit info` and the
# demo on the shipped model. Prints the install time and the tarball size. Run after `npm ci`.
#   bash scripts/pack-check.sh        (npm run pack-check)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
work=$(mktemp -d "${TMPDIR:-/tmp}/repair-pack-XXXXXX")
trap 'rm -rf "$work"' EXIT

tgz=$(npm pack --silent --pack-destination "$work" | tail -1)
listing=$(tar tzf "$work/$tgz")
nprebuilt=$(grep -c '^package/prebuilds/.*\.node$' <<<"$listing" || true)
echo "pack-check: $tgz ($(du -h "$work/$tgz" | cut -f1)), $(wc -l <<<"$listing") files, prebuilds: $nprebuilt"
[ "$nprebuilt" -ge 1 ] || { echo "pack-check: the tarball has no prebuild" >&2; exit 1; }

mkdir -p "$work/app"
cd "$work/app"
printf '{ "name": "pack-check-app", "version": "1.0.0", "private": true }\n' >package.json
t0=$(date +%s.%N)
npm install --ignore-scripts --no-audit --no-fund --silent "$work/$tgz"
t1=$(date +%s.%N)
printf 'pack-check: npm install --ignore-scripts took %.1f s\n' "$(echo "$t1 - $t0" | bc)"
[ -d node_modules/repair-edit/build ] && { echo "pack-check: a build/ folder was installed" >&2; exit 1; }

node --input-type=module -e "
import { info, loadModel } from 'repair-edit';
const i = info();
console.log('pack-check: import ok, backends', i.backends.join(','), '| cpu kernels', i.cpu.isa);
"
node -e "
const { info, Editor } = require('repair-edit');
if (typeof Editor !== 'function') throw new Error('require: Editor missing');
console.log('pack-check: require ok, version', info().version);
"
npx --no-install repair-edit info | head -4
npx --no-install repair-edit demo --json >demo.json
node -e "
const d = JSON.parse(require('fs').readFileSync('demo.json', 'utf8'));
if (!d || typeof d !== 'object') throw new Error('demo printed no JSON object');
console.log('pack-check: demo ok (' + Object.keys(d).join(', ') + ')');
"
echo "pack-check: ok"
