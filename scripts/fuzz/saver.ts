// Helper of the killsave fault script: load a memory file, make one more edit (the new state), write
// that state to a reference path, then save it over `target` in a loop until killed (kill -9).
import { loadModel } from '../../lib/model.js';
import { Editor } from '../../lib/editor.js';
import { packageRoot } from '../../lib/paths.js';
import { join } from 'node:path';

const [memFile, target, ref] = process.argv.slice(2) as [string, string, string];
const model = await loadModel(join(packageRoot(), 'models', 'stories260K'), { backend: 'cpu', threads: 1 });
const ed = await Editor.load(model, memFile);
await ed.edit({ prompt: 'Tom went to the', target: 'moon', id: 'new' });
await ed.save(ref);
process.stdout.write('saving\n');
for (;;) await ed.save(target);
