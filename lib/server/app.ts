// server/app.ts — createServer(editor, options): the HTTP server behind `repair-edit serve`, for the CLI
// and for higher-level tools to embed. fastify with a JSON schema for every body; the OpenAI routes live
// in openai.ts, the edit queue and its journal in edits.ts and journal.ts, the metrics in metrics.ts and
// the web page in page/ (static files, no build step).
//
//   POST /v1/chat/completions, POST /v1/completions, GET /v1/models   OpenAI-compatible, routed, streamed
//   POST /v1/edits, GET /v1/edits, GET|DELETE /v1/edits/{id}           edits while serving (202 + status)
//   POST /v1/explain                                                    the route of a prompt, every score
//   GET /health, GET /metrics (Prometheus text), GET / (the page)
//
// Security: it binds 127.0.0.1 unless told otherwise and refuses a non-loopback address without an API
// key; with a key, every /v1 route needs `Authorization: Bearer KEY` (compared in constant time). Bodies,
// max_tokens, edit batches and the edit queue have limits, answered with 4xx errors in OpenAI's shape.
// No request field names a file: the memory and journal paths are the operator's, fixed at start.

import { createHash, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import { basename, join } from 'node:path';
import fastifyStatic from '@fastify/static';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyRequest } from 'fastify';
import type { Editor, EditRequest } from '../editor.js';
import { RepairError, isRepairError, toRepairError } from '../errors.js';
import { packageVersion } from '../info.js';
import type { Model, Prompt } from '../model.js';
import { packageRoot } from '../paths.js';
import type { ChatMessage } from '../tokenizer.js';
import { EditQueue, HttpError, type EditStatus } from './edits.js';
import { ServerMetrics } from './metrics.js';
import { registerOpenAI, routeJson } from './openai.js';
import { mentions } from '../editor/subject.js';

export interface ServerOptions {
  /** Bind address (default 127.0.0.1). A non-loopback address needs apiKey. */
  host?: string;
  /** Port (default 8080; 0 = any free port, see RepairServer.url). */
  port?: number;
  /** Bearer key required on every /v1 route when set. */
  apiKey?: string;
  /** Memory file: checkpointed (atomically) every checkpointEvery edits and on close. None: edits live in memory only. */
  memoryPath?: string;
  /** Journal of accepted edits and rollbacks (default memoryPath + '.journal'). */
  journalPath?: string;
  /** Applied edits and rollbacks between checkpoints of the memory file (default 8). */
  checkpointEvery?: number;
  /** Largest max_tokens a request may ask for (default 512). */
  maxTokens?: number;
  /** max_tokens when a request gives none (default 128, at most maxTokens). */
  defaultMaxTokens?: number;
  /** Records per POST /v1/edits (default 64). */
  maxBatch?: number;
  /** Edits and rollbacks waiting in the queue (default 1024). */
  maxQueue?: number;
  /** Largest request body in bytes (default 1 MiB). */
  bodyLimit?: number;
  /** The model's id in /v1/models and responses (default: the model folder's name). */
  modelId?: string;
  /** fastify's logger (default off). */
  logger?: boolean;
}

/** What the route modules share. */
export interface ServerContext {
  editor: Editor;
  model: Model;
  queue: EditQueue;
  metrics: ServerMetrics;
  modelId: string;
  fingerprint: string;
  created: number;
  limits: { maxTokens: number; defaultMaxTokens: number; maxBatch: number };
  /** The status and OpenAI-shaped body of an error. */
  errorBody(e: unknown): { status: number; payload: { error: { message: string; type: string; param: string | null; code: string } } };
}

export interface RepairServer {
  readonly app: FastifyInstance;
  readonly queue: EditQueue;
  readonly metrics: ServerMetrics;
  /** http://host:port once listening. */
  readonly url: string;
  /** Start listening (host and port from the options unless given). Resolves to the URL. */
  listen(opts?: { host?: string; port?: number }): Promise<string>;
  /** Stop listening, let the edit in progress finish, checkpoint the memory file, close the journal. The editor stays open. */
  close(): Promise<void>;
}

/** True for 127.0.0.0/8, ::1, ::ffff:127.x and 'localhost'. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1' || /^::ffff:127\./.test(h);
  return false;
}

/** Refuse a non-loopback bind without an API key (ERR_INVALID_ARG). */
export function checkBind(host: string, apiKey: string | undefined): void {
  if (!isLoopback(host) && !apiKey) {
    throw new RepairError('ERR_INVALID_ARG', `refusing to listen on ${host} (not a loopback address) without an API key: pass --api-key (apiKey) or bind 127.0.0.1`, { field: 'host' });
  }
}

/** Constant-time comparison of a presented key with the server's (hashes first, so lengths match too). */
export function keyMatches(presented: string, key: string): boolean {
  const a = createHash('sha256').update(presented).digest();
  const b = createHash('sha256').update(key).digest();
  return timingSafeEqual(a, b);
}

const REPAIR_STATUS: Partial<Record<string, [number, string, string]>> = {
  ERR_CONTEXT_LENGTH: [400, 'invalid_request_error', 'context_length_exceeded'],
  ERR_INVALID_ARG: [400, 'invalid_request_error', 'invalid_value'],
  ERR_EDIT_REQUEST: [400, 'invalid_request_error', 'invalid_edit'],
  ERR_TOKENIZER: [400, 'invalid_request_error', 'invalid_prompt'],
  ERR_UNKNOWN_EDIT: [404, 'invalid_request_error', 'edit_not_found'],
  ERR_ABORTED: [499, 'invalid_request_error', 'request_aborted'],
  ERR_BUSY: [503, 'server_error', 'busy'],
  ERR_DISPOSED: [503, 'server_error', 'model_unavailable'],
  ERR_OOM: [503, 'server_error', 'out_of_memory'],
};

function errorBody(e: unknown): ReturnType<ServerContext['errorBody']> {
  const out = (status: number, message: string, type: string, code: string, param: string | null = null) => ({ status, payload: { error: { message, type, param, code } } });
  if (e instanceof HttpError) return out(e.statusCode, e.message, e.type, e.code, e.param);
  if (isRepairError(e)) {
    const m = REPAIR_STATUS[e.code];
    if (m) return out(m[0], e.message, m[1], m[2], typeof e.details?.field === 'string' ? e.details.field : null);
    return out(500, `${e.code}: ${e.message}`, 'server_error', e.code.toLowerCase());
  }
  const fe = e as FastifyError & { validation?: { instancePath?: string; params?: Record<string, unknown> }[] };
  if (fe && Array.isArray(fe.validation)) {
    const v = fe.validation[0];
    const path = (v?.instancePath ?? '').replace(/^\//, '').replace(/\//g, '.');
    const missing = typeof v?.params?.missingProperty === 'string' ? v.params.missingProperty : undefined;
    const extra = typeof v?.params?.additionalProperty === 'string' ? v.params.additionalProperty : undefined;
    const param = [path, missing ?? extra].filter((x) => x).join('.') || null;
    return out(400, fe.message, 'invalid_request_error', extra ? 'unknown_parameter' : 'invalid_request', param);
  }
  if (fe?.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return out(413, 'the request body is larger than this server accepts', 'invalid_request_error', 'body_too_large');
  if (fe?.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return out(415, 'send the body as application/json', 'invalid_request_error', 'unsupported_media_type');
  if (typeof fe?.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) return out(fe.statusCode, fe.message, 'invalid_request_error', fe.statusCode === 400 ? 'invalid_json' : `http_${fe.statusCode}`);
  const err = toRepairError(e);
  return out(500, `${err.code}: ${err.message}`, 'server_error', 'internal_error');
}

const editRecord = {
  type: 'object',
  required: ['prompt', 'target'],
  additionalProperties: false,
  properties: {
    id: { type: 'string', pattern: '^[A-Za-z0-9_.:-]{1,64}$' },
    prompt: { type: 'string', minLength: 1, maxLength: 4096, pattern: '\\S' },
    target: { type: 'string', minLength: 1, maxLength: 4096, pattern: '\\S' },
    rephrase: { type: 'string', maxLength: 4096 },
    irrelevant: { type: 'string', minLength: 1, maxLength: 4096, pattern: '\\S' },
    subject: { type: 'string', minLength: 1, maxLength: 1024, pattern: '\\S' },
    locality: {
      type: 'array',
      maxItems: 16,
      items: { type: 'object', required: ['prompt', 'answer'], additionalProperties: false, properties: { prompt: { type: 'string', maxLength: 4096 }, answer: { type: 'string', maxLength: 4096 } } },
    },
  },
};
/** One record, or { edits: [records] }. */
const editsBody = {
  type: 'object',
  additionalProperties: false,
  properties: { ...editRecord.properties, edits: { type: 'array', minItems: 1, items: editRecord } },
};
const idParams = { type: 'object', required: ['id'], properties: { id: { type: 'string', maxLength: 128 } } };
const explainBody = {
  type: 'object',
  additionalProperties: false,
  properties: {
    prompt: { type: 'string', minLength: 1, maxLength: 65536 },
    messages: {
      type: 'array',
      minItems: 1,
      maxItems: 256,
      items: { type: 'object', required: ['role', 'content'], properties: { role: { enum: ['system', 'developer', 'user', 'assistant'] }, content: { type: 'string' } } },
    },
  },
};

type EditsBody = Partial<EditRequest> & { edits?: EditRequest[] };

/** Build the server on an editor (and its model). Replays the journal of `memoryPath` before it returns. */
export async function createServer(editor: Editor, options: ServerOptions = {}): Promise<RepairServer> {
  if (editor.disposed) throw new RepairError('ERR_DISPOSED', 'the editor has been disposed');
  const maxTokens = options.maxTokens ?? 512;
  const limits = { maxTokens, defaultMaxTokens: Math.min(options.defaultMaxTokens ?? 128, maxTokens), maxBatch: options.maxBatch ?? 64 };
  const apiKey = options.apiKey === '' ? undefined : options.apiKey;
  const host0 = options.host ?? '127.0.0.1';
  checkBind(host0, apiKey);

  let metrics!: ServerMetrics;
  const queue = await EditQueue.open(editor, {
    memoryPath: options.memoryPath,
    journalPath: options.journalPath,
    checkpointEvery: options.checkpointEvery,
    maxQueue: options.maxQueue,
    onApplied: (st, ms) => {
      metrics?.editsApplied.inc({ kind: st.state === 'rolled_back' ? 'rollback' : 'edit', result: st.state === 'failed' || st.error ? 'failed' : 'ok' });
      metrics?.lastTraining.set(ms / 1000);
    },
  });
  metrics = new ServerMetrics(queue);
  const model = editor.model;
  const app = Fastify({
    logger: options.logger ?? false,
    bodyLimit: options.bodyLimit ?? 1 << 20,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false } },
  });
  const ctx: ServerContext = {
    editor,
    model,
    queue,
    metrics,
    modelId: options.modelId ?? basename(model.dir),
    fingerprint: `fp_repair_edit_${packageVersion()}_${model.backend}`,
    created: Math.floor(Date.now() / 1000),
    limits,
    errorBody,
  };

  app.setErrorHandler((e, _req, reply) => {
    const b = errorBody(e);
    if (b.status >= 500) app.log.error(e);
    return reply.status(b.status).send(b.payload);
  });
  app.setNotFoundHandler((req, reply) =>
    reply.status(404).send({ error: { message: `no route ${req.method} ${req.url.split('?')[0]}`, type: 'invalid_request_error', param: null, code: 'not_found' } }),
  );
  app.addHook('onRequest', async (req) => {
    (req as FastifyRequest & { t0?: number }).t0 = performance.now();
    if (apiKey === undefined || !req.url.startsWith('/v1/')) return;
    const h = req.headers.authorization ?? '';
    const m = /^Bearer\s+(.+)$/i.exec(h);
    if (!m || !keyMatches(m[1]!.trim(), apiKey)) {
      throw new HttpError(401, 'invalid_api_key', m ? 'Incorrect API key provided.' : 'Missing API key: send Authorization: Bearer KEY.', 'invalid_request_error');
    }
  });
  app.addHook('onResponse', async (req, reply) => {
    // streams (hijacked replies) end here too: their status is the raw response's
    metrics.requests.inc({ route: req.routeOptions?.url ?? 'unmatched', method: req.method, status: String(reply.raw.statusCode) });
    const t0 = (req as FastifyRequest & { t0?: number }).t0;
    if (t0 !== undefined) metrics.duration.observe({ route: req.routeOptions?.url ?? 'unmatched' }, (performance.now() - t0) / 1000);
  });

  registerOpenAI(app, ctx);

  app.post<{ Body: EditsBody }>('/v1/edits', { schema: { body: editsBody } }, async (req, reply) => {
    const b = req.body;
    const single = b.prompt !== undefined || b.target !== undefined;
    if (b.edits !== undefined && single) throw new HttpError(400, 'invalid_request', 'send one edit (prompt, target, ...) or { edits: [...] }, not both', 'invalid_request_error', 'edits');
    if (b.edits === undefined && (b.prompt === undefined || b.target === undefined)) {
      throw new HttpError(400, 'invalid_request', 'an edit needs prompt and target (or send { edits: [...] })', 'invalid_request_error', b.prompt === undefined ? 'prompt' : 'target');
    }
    const records: EditRequest[] = b.edits ?? [b as EditRequest];
    if (records.length > limits.maxBatch) {
      throw new HttpError(400, 'batch_too_large', `${records.length} edits in one request; this server takes at most ${limits.maxBatch}`, 'invalid_request_error', 'edits');
    }
    records.forEach((r, i) => {
      const n = model.tokenizer.encode(`${r.prompt} ${r.target}`).length;
      if (n >= model.contextLength) {
        throw new HttpError(400, 'context_length_exceeded', `edit ${i}: prompt and target are ${n} tokens; the model's context is ${model.contextLength}`, 'invalid_request_error', b.edits ? `edits.${i}` : 'prompt');
      }
      if (r.subject !== undefined && !mentions(r.prompt, r.subject)) {
        throw new HttpError(400, 'invalid_edit', `edit ${i}: subject ${JSON.stringify(r.subject)} must occur in the prompt (whole words, any case)`, 'invalid_request_error', b.edits ? `edits.${i}.subject` : 'subject');
      }
    });
    const accepted = queue.accept(records);
    if (accepted.length === 1) reply.header('location', `/v1/edits/${accepted[0]!.id}`);
    return reply.status(202).send({ object: 'list', data: accepted.map((s) => ({ ...s, url: `/v1/edits/${s.id}` })) });
  });

  const summary = () => ({ depth: queue.depth, training: queue.training ?? null, counts: queue.counts(), checkpoints: queue.checkpoints });
  app.get('/v1/edits', async () => ({ object: 'list', data: queue.list(), queue: summary() }));
  app.get<{ Params: { id: string } }>('/v1/edits/:id', { schema: { params: idParams } }, async (req) => {
    const s = queue.status(req.params.id);
    if (!s) throw new HttpError(404, 'edit_not_found', `no edit with id ${req.params.id}`, 'invalid_request_error', 'id');
    return s;
  });
  app.delete<{ Params: { id: string } }>('/v1/edits/:id', { schema: { params: idParams } }, async (req, reply) => {
    const s: EditStatus = queue.rollback(req.params.id);
    return reply.status(202).send({ ...s, url: `/v1/edits/${s.id}` });
  });

  app.post<{ Body: { prompt?: string; messages?: ChatMessage[] } }>('/v1/explain', { schema: { body: explainBody } }, async (req) => {
    const b = req.body;
    if ((b.prompt === undefined) === (b.messages === undefined)) throw new HttpError(400, 'invalid_request', 'send prompt or messages (one of them)', 'invalid_request_error', 'prompt');
    const prompt: Prompt =
      b.prompt ?? (model.tokenizer.hasChatTemplate ? b.messages!.map((m) => ({ role: m.role === 'developer' ? 'system' : m.role, content: m.content })) : b.messages!.map((m) => m.content).join('\n'));
    const e = await queue.gate.read(() => editor.explain(prompt));
    return {
      object: 'explanation',
      route: routeJson(e),
      basis: 'prompt',
      tokens: e.tokens,
      scores: e.scores.map((s) => ({ memory: s.memory === -1 ? 'working' : s.memory, kind: s.kind, score: s.score, threshold: s.threshold, edits: s.edits })),
    };
  });

  app.get('/health', async () => ({
    status: editor.disposed ? 'disposed' : 'ok',
    model: ctx.modelId,
    backend: model.backend,
    edits: queue.counts(),
    queue: summary(),
    memory_file: queue.memoryPath !== undefined,
  }));
  app.get('/metrics', async (_req, reply) => reply.header('content-type', metrics.contentType).send(await metrics.text()));

  await app.register(fastifyStatic, { root: join(packageRoot(), 'lib', 'server', 'page'), prefix: '/', index: 'index.html', cacheControl: false });

  let url = '';
  let closed = false;
  return {
    app,
    queue,
    metrics,
    get url() {
      return url;
    },
    async listen(o = {}) {
      const host = o.host ?? host0;
      checkBind(host, apiKey);
      await app.listen({ host, port: o.port ?? options.port ?? 8080 });
      const a = app.server.address();
      const port = a && typeof a === 'object' ? a.port : (o.port ?? options.port ?? 8080);
      url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
      return url;
    },
    async close() {
      if (closed) return;
      closed = true;
      await app.close();
      await queue.close();
    },
  };
}
