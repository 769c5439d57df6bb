// chat.test.ts — instruct models train their edits through the chat template by default, so the edited
// fact is what a chat query sees (issue 16): a tiny Qwen2 fixture given a chat template, once in a folder
// named like an instruct model and once like a base model; the option and the CLI flags override it.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel, type Model } from '../lib/model.js';
import { Editor, looksInstruct } from '../lib/editor.js';
import { editorOptions } from '../lib/cli/memory.js';
import { packageRoot } from '../lib/paths.js';

const FIXTURE = join(packageRoot(), 'test', 'fixtures', 'tiny-qwen2');
const TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
let tmp = '';

function withTemplate(name: string, template: boolean): string {
  const dir = join(tmp, name);
  cpSync(FIXTURE, dir, { recursive: true });
  if (template) {
    const f = join(dir, 'tokenizer_config.json');
    writeFileSync(f, JSON.stringify({ ...JSON.parse(readFileSync(f, 'utf8')), chat_template: TEMPLATE }, null, 1));
  }
  return dir;
}

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'repair-chat-'));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function withModel<T>(dir: string, fn: (m: Model) => Promise<T>): Promise<T> {
  const m = await loadModel(dir, { backend: 'cpu', threads: 1 });
  try {
    return await fn(m);
  } finally {
    await m.dispose();
  }
}

describe('chat templates in edits', () => {
  it('an instruct model with a template trains through it by default; its edit rows carry the template', async () => {
    await withModel(withTemplate('tiny-qwen2-Instruct', true), async (m) => {
      expect(looksInstruct(m)).toBe(true);
      const ed = await Editor.create(m);
      expect(ed.config.useChatTemplate).toBe(true);
      const b = ed.buildBatch({ prompt: 'Who runs Acme?', target: 'Jane Doe' }, 'Once upon a time');
      const row0 = Array.from(b.tokens.slice(b.pad[0]!, b.T));
      const text = m.tokenizer.decode(row0, { skipSpecialTokens: false });
      expect(text).toContain('<|user|>');
      expect(text).toContain('<|assistant|>');
      expect(text).toContain('Jane Doe');
      await ed.dispose();
      const plain = await Editor.create(m, { useChatTemplate: false }); // the option overrides
      expect(plain.config.useChatTemplate).toBe(false);
      await plain.dispose();
    });
  });

  it('a base model keeps plain prompts even when its tokenizer has a template; no template means no chat', async () => {
    await withModel(withTemplate('tiny-qwen2-base', true), async (m) => {
      expect(looksInstruct(m)).toBe(false);
      expect((await Editor.create(m)).config.useChatTemplate).toBe(false);
      expect((await Editor.create(m, { useChatTemplate: true })).config.useChatTemplate).toBe(true);
    });
    await withModel(withTemplate('tiny-qwen2-chat-notemplate', false), async (m) => {
      expect(looksInstruct(m)).toBe(true);
      expect((await Editor.create(m)).config.useChatTemplate).toBe(false);
    });
  });

  it('the CLI flags map onto the option (--chat / --no-chat; absent = the model default)', () => {
    expect(editorOptions({ chat: true }).useChatTemplate).toBe(true);
    expect(editorOptions({ chat: false }).useChatTemplate).toBe(false);
    expect('useChatTemplate' in editorOptions({})).toBe(false);
  });
});
