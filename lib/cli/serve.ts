// cli/serve.ts — `repair-edit serve --model DIR [--memory FILE] [--host 127.0.0.1] [--port 8080] [--api-key KEY]`:
// an OpenAI-compatible server of the edited model that takes edits, rollbacks and explanations while it
// serves (lib/server/). With --memory, accepted edits are journaled (FILE.journal) and the memory file is
// checkpointed; a restart replays what the file does not hold yet.

import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { Editor } from '../editor.js';
import { loadModel, type BackendChoice } from '../model.js';
import { checkBind, createServer } from '../server/app.js';
import { choiceOption, floatOption, intOption, resolveModelDir, writeOut, type CliCommand } from './common.js';
import { editorOptions, type EditorCliOptions } from './memory.js';

interface ServeCliOptions extends EditorCliOptions {
  model?: string;
  memory?: string;
  host: string;
  port: number;
  apiKey?: string;
  backend: BackendChoice;
  device?: number;
  threads?: number;
  contextLength?: number;
  checkpointEvery: number;
  maxTokens: number;
  maxBatch: number;
  maxQueue: number;
  bodyLimit: number;
  log?: boolean;
}

export const serveCommand: CliCommand = {
  name: 'serve',
  register(program: Command): void {
    program
      .command('serve')
      .description('serve the edited model over an OpenAI-compatible HTTP API that also takes edits, rollbacks and explanations (web page at /)')
      .option('--model <dir>', 'Hugging Face model folder (default: the shipped stories260K demo model)')
      .option('--memory <file>', 'side-memory file: loaded when it exists, checkpointed as edits arrive, with its journal FILE.journal (without it edits live in memory only)')
      .option('--host <addr>', 'bind address; a non-loopback address needs --api-key', '127.0.0.1')
      .option('--port <n>', 'port (0 = any free port; the URL is printed)', intOption(0, 65535), 8080)
      .option('--api-key <key>', 'require Authorization: Bearer KEY on every /v1 route (default: $REPAIR_API_KEY)')
      .option('--checkpoint-every <k>', 'save the memory file after every k applied edits and rollbacks', intOption(1, 1e9), 8)
      .option('--max-tokens <n>', 'largest max_tokens a request may ask for', intOption(1, 1 << 20), 512)
      .option('--max-batch <n>', 'edits per POST /v1/edits at most', intOption(1, 1e6), 64)
      .option('--max-queue <n>', 'edits and rollbacks waiting at most (more: 429)', intOption(1, 1e7), 1024)
      .option('--body-limit <bytes>', 'largest request body', intOption(1024, 1 << 30), 1 << 20)
      .option('--method <name>', 'new memory only: wise | repair | ft (default: wise)', choiceOption(['wise', 'repair', 'ft'] as const))
      .option('--layer <n>', "new memory only: decoder layer of the side memories (default: the model's preset)", intOption(0))
      .option('--save-freq <n>', 'new memory only: freeze the working memory every n edits', intOption(1))
      .option('--merge-freq <n>', 'new memory only: merge the frozen memories every n edits', intOption(1))
      .option('--n-iter <n>', "new memory only: optimisation steps per edit (default: the model's preset)", intOption(1, 100000))
      .option('--lr <x>', "new memory only: learning rate (default: the model's preset)", floatOption((x) => x > 0, 'a number > 0'))
      .option('--seed <s>', 'new memory only: seed of the context templates and shard masks', intOption(0, 0xffffffff))
      .option('--backend <name>', 'auto | cpu | cuda (auto honours REPAIR_BACKEND)', choiceOption(['auto', 'cpu', 'cuda'] as const), 'auto')
      .option('--device <n>', 'CUDA device index', intOption(0, 1024))
      .option('--threads <n>', 'CPU threads (0 = all)', intOption(0, 4096))
      .option('--context-length <n>', 'cap on the context length', intOption(1))
      .option('--log', 'log every request (JSON lines on stdout)')
      .action(async (o: ServeCliOptions) => {
        const apiKey = o.apiKey ?? (process.env.REPAIR_API_KEY || undefined);
        checkBind(o.host, apiKey); // before loading anything
        const dir = resolveModelDir(o.model);
        const model = await loadModel(dir, { backend: o.backend, device: o.device, threads: o.threads, contextLength: o.contextLength });
        const editor = o.memory !== undefined && existsSync(o.memory) ? await Editor.load(model, o.memory) : await Editor.create(model, editorOptions(o));
        const server = await createServer(editor, {
          host: o.host,
          port: o.port,
          apiKey,
          memoryPath: o.memory,
          checkpointEvery: o.checkpointEvery,
          maxTokens: o.maxTokens,
          maxBatch: o.maxBatch,
          maxQueue: o.maxQueue,
          bodyLimit: o.bodyLimit,
          logger: o.log === true,
        });
        const url = await server.listen();
        const replayed = server.queue.depth;
        await writeOut(
          `repair-edit: serving ${model.dir} (${model.backend}) on ${url}` +
            `${o.memory !== undefined ? `, memory ${o.memory}, journal ${server.queue.journalPath}${replayed ? `, ${replayed} queued from the journal` : ''}` : ', edits in memory only (no --memory)'}\n`,
        );
        // Run until SIGINT/SIGTERM: stop listening, finish the edit in progress, checkpoint, exit.
        await new Promise<void>((resolve) => {
          const stop = () => {
            process.off('SIGINT', stop);
            process.off('SIGTERM', stop);
            resolve();
          };
          process.on('SIGINT', stop);
          process.on('SIGTERM', stop);
        });
        await server.close();
        await editor.dispose();
        await model.dispose();
      });
  },
};
