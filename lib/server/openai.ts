// server/openai.ts — the OpenAI-compatible inference routes of the serve command:
// POST /v1/chat/completions, POST /v1/completions (JSON or server-sent events, streamed as the OpenAI API
// streams them, ending with `data: [DONE]`) and GET /v1/models.
//
// Every generation is routed once, on its prompt, exactly as Editor.generate routes it; the route
// (memory, score, threshold) is returned in the `repair` extension field (the first chunk of a stream).
// A model without a chat template gets its chat messages as plain text, one message a line.

import { randomBytes } from 'node:crypto';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Explanation } from '../editor.js';
import type { GenerateOptions, GenerateResult, Prompt } from '../model.js';
import type { ChatMessage } from '../tokenizer.js';
import { HttpError } from './edits.js';
import type { ServerContext } from './app.js';

/** The route of one generation, as returned in the `repair` extension field. */
export interface RouteJson {
  /** 'main' (the unedited weights), 'working' (the working memory) or the index of a side memory. */
  memory: 'main' | 'working' | number;
  score: number;
  threshold: number;
}

export function routeJson(e: Explanation): RouteJson {
  return { memory: e.route === 'main' ? 'main' : e.route === -1 ? 'working' : e.route, score: e.score, threshold: e.threshold };
}

const stopSchema = {
  anyOf: [{ type: 'string', minLength: 1, maxLength: 256 }, { type: 'array', maxItems: 4, items: { type: 'string', minLength: 1, maxLength: 256 } }, { type: 'null' }],
};
const sampling = {
  model: { type: 'string', maxLength: 256 },
  max_tokens: { type: ['integer', 'null'], minimum: 0 },
  temperature: { type: ['number', 'null'], minimum: 0, maximum: 2 },
  top_p: { type: ['number', 'null'], exclusiveMinimum: 0, maximum: 1 },
  stop: stopSchema,
  seed: { type: ['integer', 'null'] },
  stream: { type: ['boolean', 'null'] },
  stream_options: { type: ['object', 'null'], properties: { include_usage: { type: 'boolean' } } },
  n: { type: ['integer', 'null'], minimum: 1, maximum: 1 },
  user: { type: 'string', maxLength: 256 },
};

const chatSchema = {
  type: 'object',
  required: ['messages'],
  properties: {
    ...sampling,
    max_completion_tokens: { type: ['integer', 'null'], minimum: 0 },
    messages: {
      type: 'array',
      minItems: 1,
      maxItems: 256,
      items: {
        type: 'object',
        required: ['role', 'content'],
        properties: {
          role: { enum: ['system', 'developer', 'user', 'assistant'] },
          content: {
            anyOf: [
              { type: 'string' },
              { type: 'array', maxItems: 64, items: { type: 'object', required: ['type', 'text'], properties: { type: { const: 'text' }, text: { type: 'string' } } } },
            ],
          },
          name: { type: 'string', maxLength: 256 },
        },
      },
    },
  },
};

const completionSchema = {
  type: 'object',
  required: ['prompt'],
  properties: {
    ...sampling,
    prompt: {
      anyOf: [
        { type: 'string', minLength: 1 },
        { type: 'array', minItems: 1, maxItems: 1, items: { type: 'string', minLength: 1 } },
        { type: 'array', minItems: 1, maxItems: 65536, items: { type: 'integer', minimum: 0 } },
      ],
    },
    echo: { type: ['boolean', 'null'] },
  },
};

interface SamplingBody {
  model?: string;
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  stop?: string | string[] | null;
  seed?: number | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
}
interface ChatBody extends SamplingBody {
  messages: { role: string; content: string | { type: 'text'; text: string }[] }[];
}
interface CompletionBody extends SamplingBody {
  prompt: string | string[] | number[];
  echo?: boolean | null;
}

function finishReason(r: GenerateResult['finishReason']): 'stop' | 'length' {
  return r === 'length' ? 'length' : 'stop';
}

/** The body's sampling fields as generate() options, with the server's limits applied. */
function generateOptions(ctx: ServerContext, body: SamplingBody): GenerateOptions {
  const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? ctx.limits.defaultMaxTokens;
  if (maxTokens > ctx.limits.maxTokens) {
    throw new HttpError(400, 'max_tokens_exceeded', `max_tokens is ${maxTokens}; this server allows at most ${ctx.limits.maxTokens}`, 'invalid_request_error', 'max_tokens');
  }
  if (body.model !== undefined && body.model !== ctx.modelId) {
    throw new HttpError(404, 'model_not_found', `The model \`${body.model}\` does not exist; this server serves \`${ctx.modelId}\``, 'invalid_request_error', 'model');
  }
  const stop = body.stop == null ? [] : typeof body.stop === 'string' ? [body.stop] : body.stop;
  return {
    maxNewTokens: maxTokens,
    temperature: body.temperature ?? 1,
    topP: body.top_p ?? 1,
    seed: body.seed == null ? randomBytes(4).readUInt32LE(0) : ((body.seed % 2 ** 32) + 2 ** 32) % 2 ** 32,
    stop,
  };
}

function chatPrompt(ctx: ServerContext, body: ChatBody): Prompt {
  const messages: ChatMessage[] = body.messages.map((m) => ({
    role: m.role === 'developer' ? 'system' : m.role,
    content: typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join(''),
  }));
  if (ctx.model.tokenizer.hasChatTemplate) return messages;
  return messages.map((m) => m.content).join('\n');
}

function completionPrompt(body: CompletionBody): Prompt {
  const p = body.prompt;
  if (typeof p === 'string') return p;
  if (typeof p[0] === 'string') return p[0];
  return { tokens: p as number[] };
}

/** Abort the generation when the client goes away before the response is complete. */
function clientSignal(reply: FastifyReply): AbortSignal {
  const ac = new AbortController();
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) ac.abort();
  });
  return ac.signal;
}

type Kind = 'chat' | 'text';

/**
 * The completion text of a /v1/completions answer: what follows the prompt in decode(prompt ++ tokens),
 * so `prompt + text` reads as the model wrote it (GenerateResult.completion decodes the new tokens alone,
 * which drops the leading space of the first piece; chat answers keep that form).
 */
function continuation(ctx: ServerContext, kind: Kind, r: GenerateResult): string {
  if (kind === 'chat') return r.completion;
  const p = ctx.model.tokenizer.decode(r.promptTokens);
  return r.text.startsWith(p) ? r.text.slice(p.length) : r.completion;
}

async function serve(ctx: ServerContext, kind: Kind, reply: FastifyReply, prompt: Prompt, body: SamplingBody, echo: boolean): Promise<unknown> {
  const opts = generateOptions(ctx, body);
  const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomBytes(12).toString('hex')}`;
  const created = Math.floor(Date.now() / 1000);
  const model = ctx.modelId;
  const signal = clientSignal(reply);
  const t0 = performance.now();
  const account = (r: GenerateResult) => {
    const s = (performance.now() - t0) / 1000;
    ctx.metrics.tokens.inc({ endpoint: kind === 'chat' ? 'chat' : 'completions' }, r.tokens.length);
    if (s > 0 && r.tokens.length > 0) ctx.metrics.tokensPerSecond.set(r.tokens.length / s);
  };
  const usage = (r: GenerateResult) => ({ prompt_tokens: r.promptTokens.length, completion_tokens: r.tokens.length, total_tokens: r.promptTokens.length + r.tokens.length });

  if (!body.stream) {
    const { route, result } = await ctx.queue.gate.read(async () => {
      const e = await ctx.editor.explain(prompt, { signal });
      return { route: routeJson(e), result: await ctx.editor.generate(prompt, { ...opts, signal }) };
    });
    account(result);
    const fr = finishReason(result.finishReason);
    const choice =
      kind === 'chat'
        ? { index: 0, message: { role: 'assistant', content: result.completion, refusal: null }, logprobs: null, finish_reason: fr }
        : { index: 0, text: echo ? result.text : continuation(ctx, kind, result), logprobs: null, finish_reason: fr };
    return reply.send({
      id,
      object: kind === 'chat' ? 'chat.completion' : 'text_completion',
      created,
      model,
      system_fingerprint: ctx.fingerprint,
      choices: [choice],
      usage: usage(result),
      repair: { route },
    });
  }

  // Streaming: the headers go out with the first chunk, so an error before it (a prompt too long for
  // the context, a bad stop string) is still a plain JSON error with its status code.
  const raw = reply.raw;
  let started = false;
  const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) =>
    `data: ${JSON.stringify({ id, object: kind === 'chat' ? 'chat.completion.chunk' : 'text_completion', created, model, system_fingerprint: ctx.fingerprint, choices, ...extra })}\n\n`;
  const delta = (text: string, fr: string | null = null) =>
    kind === 'chat' ? { index: 0, delta: text === '' && fr !== null ? {} : { content: text }, logprobs: null, finish_reason: fr } : { index: 0, text, logprobs: null, finish_reason: fr };
  const write = (s: string) => {
    if (!raw.destroyed) raw.write(s);
  };
  // /v1/completions: the first piece keeps its leading space (see continuation()), decoded after the prompt
  const promptIds = kind === 'text' ? ctx.model.promptTokens(prompt) : [];
  const promptText = kind === 'text' ? ctx.model.tokenizer.decode(promptIds) : '';
  let route: RouteJson | undefined;
  const start = () => {
    if (started) return;
    started = true;
    reply.hijack();
    raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    const first = kind === 'chat' ? { index: 0, delta: { role: 'assistant', content: '', refusal: null }, logprobs: null, finish_reason: null } : undefined;
    if (first) write(chunk([first], { repair: { route } }));
    else if (echo) write(chunk([delta(promptText)], { repair: { route } }));
    else write(chunk([delta('')], { repair: { route } }));
  };
  // Text that may still turn out to be the start of a stop string is held back; a token that completes
  // one is cut where the stop string starts, as the whole response is.
  const stops = opts.stop ?? [];
  const maxStop = Math.max(0, ...stops.map((s) => s.length));
  let acc = '';
  let sent = 0;
  let stopped = false;
  const ids: number[] = [];
  try {
    const result = await ctx.queue.gate.read(async () => {
      route = routeJson(await ctx.editor.explain(prompt, { signal }));
      return ctx.editor.generate(prompt, {
        ...opts,
        signal,
        onToken: (t) => {
          start();
          if (stopped) return;
          ids.push(t.id);
          if (kind === 'text' && acc === '') {
            const full = ctx.model.tokenizer.decode([...promptIds, ...ids]);
            const head = full.startsWith(promptText) ? full.slice(promptText.length) : t.text;
            acc = head.endsWith('\uFFFD') ? '' : head; // a character still incomplete: wait for its next byte
          } else {
            acc += t.text;
          }
          let upto = acc.length - Math.max(0, maxStop - 1);
          for (const s of stops) {
            const i = acc.indexOf(s, Math.max(0, sent - maxStop));
            if (i >= 0) {
              upto = Math.min(upto, i);
              stopped = true;
            }
          }
          if (upto > sent) {
            write(chunk([delta(acc.slice(sent, upto))]));
            sent = upto;
          }
        },
      });
    });
    start();
    account(result);
    const final = continuation(ctx, kind, result);
    const rest = final.startsWith(acc.slice(0, sent)) ? final.slice(sent) : '';
    if (rest.length > 0) write(chunk([delta(rest)]));
    write(chunk([delta('', finishReason(result.finishReason))]));
    if (body.stream_options?.include_usage) write(chunk([], { usage: usage(result) }));
    write('data: [DONE]\n\n');
    raw.end();
  } catch (e) {
    if (!started) throw e;
    // after the first chunk the status is sent: the error goes in the stream, as the OpenAI API does
    write(`data: ${JSON.stringify(ctx.errorBody(e).payload)}\n\n`);
    raw.end();
  }
  return reply;
}

export function registerOpenAI(app: FastifyInstance, ctx: ServerContext): void {
  app.get('/v1/models', async () => ({
    object: 'list',
    data: [{ id: ctx.modelId, object: 'model', created: ctx.created, owned_by: 'repair-edit' }],
  }));

  app.post<{ Body: ChatBody }>('/v1/chat/completions', { schema: { body: chatSchema } }, (req, reply) =>
    serve(ctx, 'chat', reply, chatPrompt(ctx, req.body), req.body, false),
  );

  app.post<{ Body: CompletionBody }>('/v1/completions', { schema: { body: completionSchema } }, (req, reply) =>
    serve(ctx, 'text', reply, completionPrompt(req.body), req.body, req.body.echo === true),
  );
}
