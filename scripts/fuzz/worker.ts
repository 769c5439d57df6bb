// A fuzz worker: builds its context once (the stories260K model, a real side-memory file, datasets), then
// runs the cases the supervisor sends, one at a time, and answers each with its CaseResult. A crash or a
// hang of this process is the supervisor's to detect.
import { join } from 'node:path';
import { makeCtx, runCase, type Kind } from './cases.js';

const workDir = process.argv[2]!;
const ctx = await makeCtx(join(workDir, `w${process.pid}`));
process.on('message', (msg: { index: number; kind: Kind; seed: number }) => {
  void runCase(msg.kind, msg.seed, ctx).then((res) => process.send!({ index: msg.index, res }));
});
process.send!({ ready: true });
