// server/edits.ts — the serve command's edit queue: accepted edits and rollbacks, their statuses, the
// worker that trains them one at a time between generation requests, the journal and the checkpoints.
//
// Policy for a request that arrives while an edit trains: it WAITS, and is answered by the new state.
// The Gate below is a first-come-first-served readers/writer lock: generation and explain requests are
// readers (they run together; the model's own queue still serialises their native calls), an edit or a
// rollback is a writer. A request that arrived before an edit is answered before it trains (by the old
// state); one that arrives while it trains waits for it and sees the edit. A request never sees a
// half-applied edit (an edit spans several model-queue slots: training, then thresholds and bookkeeping).

import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import type { Editor, EditRequest } from '../editor.js';
import { toRepairError } from '../errors.js';
import { Journal, type JournalEntry } from './journal.js';

/** First-come-first-served readers/writer lock. */
export class Gate {
  #readers = 0;
  #writer = false;
  #waiting: { write: boolean; go: () => void }[] = [];

  /** Operations waiting for the gate (readers and writers). */
  get waiting(): number {
    return this.#waiting.length;
  }

  read<T>(fn: () => Promise<T>): Promise<T> {
    return this.#run(false, fn);
  }

  write<T>(fn: () => Promise<T>): Promise<T> {
    return this.#run(true, fn);
  }

  async #run<T>(write: boolean, fn: () => Promise<T>): Promise<T> {
    if (this.#waiting.length > 0 || this.#writer || (write && this.#readers > 0)) {
      await new Promise<void>((go) => this.#waiting.push({ write, go }));
    } else if (write) {
      this.#writer = true;
    } else {
      this.#readers++;
    }
    try {
      return await fn();
    } finally {
      if (write) this.#writer = false;
      else this.#readers--;
      this.#drain();
    }
  }

  #drain(): void {
    while (this.#waiting.length > 0 && !this.#writer) {
      const head = this.#waiting[0]!;
      if (head.write && this.#readers > 0) return;
      this.#waiting.shift();
      if (head.write) this.#writer = true;
      else this.#readers++;
      head.go();
    }
  }
}

export type EditState = 'queued' | 'training' | 'live' | 'failed' | 'rolling_back' | 'rolled_back';

/** GET /v1/edits/{id}. Times are Unix milliseconds. */
export interface EditStatus {
  id: string;
  object: 'edit';
  state: EditState;
  prompt: string;
  target: string;
  /** 'request': accepted by this server; 'memory': already in the memory file it was started on. */
  source: 'request' | 'memory';
  created_at: number | null;
  trained_at: number | null;
  /** From acceptance to live (the time a client waits for its edit to be served). */
  latency_ms: number | null;
  /** Where the edit lives: 'working' or a memory index (live edits). */
  memory: 'working' | number | null;
  steps: number | null;
  loss: number | null;
  error: { code: string; message: string } | null;
}

/** The status of an edit accepted (or replayed from the journal) and not yet trained. */
function queuedStatus(id: string, r: { prompt: string; target: string }, at: number): EditStatus {
  return { id, object: 'edit', state: 'queued', prompt: r.prompt, target: r.target, source: 'request', created_at: at, trained_at: null, latency_ms: null, memory: null, steps: null, loss: null, error: null };
}

type Op = { kind: 'edit'; id: string; request: EditRequest } | { kind: 'rollback'; id: string };

export interface EditQueueOptions {
  /** Memory file checkpointed every `checkpointEvery` applied edits and rollbacks (and on close); none = in memory only. */
  memoryPath?: string;
  /** Journal file (default memoryPath + '.journal'); only with memoryPath. */
  journalPath?: string;
  checkpointEvery?: number;
  /** Edits and rollbacks waiting at most (a POST beyond it gets 429). */
  maxQueue?: number;
  /** Called after each applied op with its duration (metrics). */
  onApplied?: (status: EditStatus, ms: number) => void;
}

export class EditQueue {
  readonly gate = new Gate();
  readonly editor: Editor;
  readonly maxQueue: number;
  readonly checkpointEvery: number;
  readonly memoryPath: string | undefined;
  #journal: Journal | undefined;
  #status = new Map<string, EditStatus>();
  #ops: Op[] = [];
  #current: Op | undefined;
  #worker: Promise<void> | undefined;
  #closing = false;
  /** The editor went away under the worker: nothing more can train here. */
  #stopped = false;
  #sinceCheckpoint = 0;
  #lastLatencyMs: number | null = null;
  #onApplied: EditQueueOptions['onApplied'];
  /** Ops applied (edits and rollbacks), successful or not, and the checkpoints written. */
  applied = 0;
  checkpoints = 0;

  private constructor(editor: Editor, opts: EditQueueOptions) {
    this.editor = editor;
    this.maxQueue = opts.maxQueue ?? 1024;
    this.checkpointEvery = opts.checkpointEvery ?? 8;
    this.memoryPath = opts.memoryPath;
    this.#onApplied = opts.onApplied;
  }

  /**
   * Open the queue on an editor: list the edits it already holds as live, open the journal and queue
   * again what the journal has that the editor does not hold yet (replay), in journal order. With a
   * memory path and no memory file yet, the first checkpoint is written now, so a file always exists
   * once an edit has been acknowledged.
   */
  static async open(editor: Editor, opts: EditQueueOptions = {}): Promise<EditQueue> {
    const q = new EditQueue(editor, opts);
    for (const id of editor.edits()) q.#status.set(id, q.#fromEditor(id, 'memory'));
    for (const id of editor.pending().queued) q.#status.set(id, { ...q.#fromEditor(id, 'memory'), state: 'queued' });
    if (opts.memoryPath !== undefined) {
      const { journal, entries } = Journal.open(opts.journalPath ?? `${opts.memoryPath}.journal`);
      q.#journal = journal;
      q.#replay(entries);
      if (!existsSync(opts.memoryPath)) await q.#checkpoint();
    }
    q.#kick();
    return q;
  }

  #fromEditor(id: string, source: 'request' | 'memory'): EditStatus {
    const info = this.editor.editInfo(id);
    const mem = info?.memory;
    return {
      id,
      object: 'edit',
      state: 'live',
      prompt: info?.request.prompt ?? '',
      target: info?.request.target ?? '',
      source,
      created_at: null,
      trained_at: null,
      latency_ms: null,
      memory: mem === undefined || mem === 'queued' ? null : mem,
      steps: null,
      loss: info?.loss ?? null,
      error: null,
    };
  }

  /** Net effect of the journal against what the editor holds: queue what it lacks, keep failures' statuses. */
  #replay(entries: readonly JournalEntry[]): void {
    const rolledBack = new Set(entries.filter((e) => e.op === 'rollback').map((e) => e.id));
    const failed = new Map<string, { code: string; message: string }>();
    for (const e of entries) if (e.op === 'failed') failed.set(e.id, { code: e.code, message: e.message });
    const held = (id: string) => this.editor.editInfo(id) !== undefined;
    for (const e of entries) {
      if (e.op === 'edit') {
        const base = queuedStatus(e.id, e.request, e.at);
        if (failed.has(e.id)) {
          this.#status.set(e.id, { ...base, state: 'failed', error: failed.get(e.id)! });
        } else if (held(e.id)) {
          this.#status.set(e.id, { ...this.#fromEditor(e.id, 'request'), created_at: e.at });
        } else if (rolledBack.has(e.id)) {
          this.#status.set(e.id, { ...base, state: 'rolled_back' }); // never trained, or trained and undone: no op either way
        } else {
          this.#status.set(e.id, base);
          this.#ops.push({ kind: 'edit', id: e.id, request: e.request });
        }
      } else if (e.op === 'rollback') {
        if (held(e.id) || this.#ops.some((o) => o.kind === 'edit' && o.id === e.id)) {
          const st = this.#status.get(e.id);
          if (st) st.state = 'rolling_back';
          this.#ops.push({ kind: 'rollback', id: e.id });
        }
      }
    }
  }

  get depth(): number {
    return this.#ops.length;
  }
  get training(): string | undefined {
    return this.#current?.id;
  }
  get lastLatencyMs(): number | null {
    return this.#lastLatencyMs;
  }
  get journalPath(): string | undefined {
    return this.#journal?.path;
  }

  status(id: string): EditStatus | undefined {
    const s = this.#status.get(id);
    return s ? { ...s } : undefined;
  }

  list(): EditStatus[] {
    return [...this.#status.values()].map((s) => ({ ...s }));
  }

  counts(): Record<EditState, number> {
    const c: Record<EditState, number> = { queued: 0, training: 0, live: 0, failed: 0, rolling_back: 0, rolled_back: 0 };
    for (const s of this.#status.values()) c[s.state]++;
    return c;
  }

  /**
   * Accept edits: give each an id, journal them (fsynced) and queue them. When this returns they are
   * durable. Throws (nothing accepted) on a full queue (429), a duplicate id (409) or a journal failure.
   */
  accept(requests: readonly EditRequest[]): EditStatus[] {
    this.#open();
    if (this.#ops.length + requests.length > this.maxQueue) {
      throw new HttpError(429, 'queue_full', `the edit queue holds ${this.#ops.length} of at most ${this.maxQueue} edits and rollbacks; retry later`, 'rate_limit_error');
    }
    const seen = new Set<string>();
    const ids = requests.map((r) => {
      const id = r.id ?? `edit-${randomBytes(6).toString('hex')}`;
      if (seen.has(id) || this.#status.has(id) || this.editor.editInfo(id) !== undefined) {
        throw new HttpError(409, 'edit_exists', `an edit with id ${id} already exists`, 'invalid_request_error', 'id');
      }
      seen.add(id);
      return id;
    });
    const at = Date.now();
    const entries: JournalEntry[] = requests.map((r, i) => ({ op: 'edit', id: ids[i]!, request: { ...r, id: ids[i]! }, at }));
    this.#journal?.append(entries);
    const out: EditStatus[] = [];
    requests.forEach((r, i) => {
      const id = ids[i]!;
      const st = queuedStatus(id, r, at);
      this.#status.set(id, st);
      this.#ops.push({ kind: 'edit', id, request: { ...r, id } });
      out.push({ ...st });
    });
    this.#kick();
    return out;
  }

  /**
   * Accept a rollback. A queued edit that has not trained is taken off the queue; a live (or training)
   * one is rolled back by the worker after what is queued before it. Journaled before it returns.
   */
  rollback(id: string): EditStatus {
    this.#open();
    const st = this.#status.get(id);
    if (!st) throw new HttpError(404, 'edit_not_found', `no edit with id ${id}`, 'invalid_request_error', 'id');
    if (st.state === 'failed' || st.state === 'rolled_back' || st.state === 'rolling_back') {
      throw new HttpError(409, 'edit_not_live', `edit ${id} is ${st.state}: there is nothing to roll back`, 'invalid_request_error', 'id');
    }
    const queuedIdx = this.#ops.findIndex((o) => o.kind === 'edit' && o.id === id);
    if (queuedIdx < 0 && this.#ops.length + 1 > this.maxQueue) {
      throw new HttpError(429, 'queue_full', `the edit queue holds ${this.#ops.length} of at most ${this.maxQueue} edits and rollbacks; retry later`, 'rate_limit_error');
    }
    this.#journal?.append([{ op: 'rollback', id, at: Date.now() }]);
    if (queuedIdx >= 0) {
      this.#ops.splice(queuedIdx, 1);
      st.state = 'rolled_back';
    } else {
      if (st.state !== 'training') st.state = 'rolling_back';
      this.#ops.push({ kind: 'rollback', id });
      this.#kick();
    }
    return { ...st };
  }

  #open(): void {
    if (this.#closing) throw new HttpError(503, 'server_shutting_down', 'the server is shutting down', 'server_error');
    if (this.#stopped || this.editor.disposed) throw new HttpError(503, 'model_unavailable', 'the editor has been disposed: edits cannot be applied', 'server_error');
  }

  #kick(): void {
    if (this.#worker || this.#closing || this.#stopped || this.#ops.length === 0) return;
    this.#worker = this.#work().finally(() => {
      this.#worker = undefined;
      this.#kick();
    });
  }

  async #work(): Promise<void> {
    while (this.#ops.length > 0 && !this.#closing && !this.#stopped) {
      const op = this.#ops.shift()!;
      this.#current = op;
      try {
        await this.gate.write(() => this.#apply(op));
      } finally {
        this.#current = undefined;
      }
      if (this.#sinceCheckpoint >= this.checkpointEvery) {
        try {
          await this.gate.write(() => this.#checkpoint());
        } catch {
          /* a failed checkpoint keeps the journal as it is: nothing is lost, the next one retries */
        }
      }
    }
  }

  async #apply(op: Op): Promise<void> {
    const st = this.#status.get(op.id)!;
    const t0 = Date.now();
    if (op.kind === 'edit') {
      st.state = 'training';
      try {
        const r = await this.editor.edit(op.request);
        const info = this.editor.editInfo(op.id);
        st.trained_at = Date.now();
        st.latency_ms = st.created_at !== null ? st.trained_at - st.created_at : null;
        st.steps = r.steps;
        st.loss = r.losses.at(-1) ?? null;
        st.memory = info && info.memory !== 'queued' ? info.memory : null;
        // a rollback accepted while it trained is queued behind it
        st.state = this.#ops.some((o) => o.kind === 'rollback' && o.id === op.id) ? 'rolling_back' : 'live';
        this.#lastLatencyMs = st.latency_ms;
      } catch (e) {
        const err = toRepairError(e);
        if (err.code === 'ERR_DISPOSED' || err.code === 'ERR_ABORTED') {
          // not the edit's fault: the editor or model went away (or the work was cancelled). It stays
          // queued (and journaled), the worker stops, a restart trains it.
          st.state = 'queued';
          this.#ops.unshift(op);
          this.#stopped = true;
          return;
        }
        st.state = 'failed';
        st.error = { code: err.code, message: err.message };
        this.#ops = this.#ops.filter((o) => o.id !== op.id); // a rollback of it has nothing to undo
        try {
          this.#journal?.append([{ op: 'failed', id: op.id, code: err.code, message: err.message, at: Date.now() }]);
        } catch {
          /* replay would retry it: acceptable, it is still acknowledged */
        }
      }
    } else {
      try {
        await this.editor.rollback(op.id);
        st.state = 'rolled_back';
        st.memory = null;
      } catch (e) {
        const err = toRepairError(e);
        if (err.code === 'ERR_DISPOSED' || err.code === 'ERR_ABORTED') {
          this.#ops.unshift(op); // as for an edit: still queued, journaled, retried on restart
          this.#stopped = true;
          return;
        }
        if (err.code === 'ERR_UNKNOWN_EDIT') {
          st.state = 'rolled_back';
        } else {
          st.state = 'live'; // the editor is unchanged (rollback is transactional)
          st.error = { code: err.code, message: `rollback failed: ${err.message}` };
        }
      }
    }
    this.applied++;
    this.#sinceCheckpoint++;
    this.#onApplied?.({ ...st }, Date.now() - t0);
  }

  /** Save the memory file atomically, then shorten the journal to what the file does not hold. */
  async #checkpoint(): Promise<void> {
    if (this.memoryPath === undefined) return;
    await this.editor.save(this.memoryPath);
    this.#sinceCheckpoint = 0;
    this.checkpoints++;
    // what the file does not hold: the history of failed and rolled-back edits (their statuses), then
    // the queued edits and rollbacks, in queue order
    const history: JournalEntry[] = [];
    const outcomes: JournalEntry[] = [];
    for (const s of this.#status.values()) {
      // every rolled-back or failed edit, from a request or from the memory file it started on: once this
      // checkpoint drops it from the file, the journal is the only record that it existed
      if (s.state !== 'failed' && s.state !== 'rolled_back') continue;
      const at = s.created_at ?? 0;
      history.push({ op: 'edit', id: s.id, request: { prompt: s.prompt, target: s.target, id: s.id }, at });
      outcomes.push(s.state === 'failed' ? { op: 'failed', id: s.id, code: s.error!.code, message: s.error!.message, at } : { op: 'rollback', id: s.id, at });
    }
    const now = Date.now();
    const queued: JournalEntry[] = this.#ops.map((op) =>
      op.kind === 'edit' ? { op: 'edit', id: op.id, request: op.request, at: this.#status.get(op.id)?.created_at ?? now } : { op: 'rollback', id: op.id, at: now },
    );
    const ordered = [...history, ...outcomes, ...queued];
    this.#journal?.rewrite(ordered);
  }

  /** Stop taking work, let the op in progress finish, write a last checkpoint and close the journal. */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    await this.#worker;
    try {
      if (this.#sinceCheckpoint > 0 && !this.editor.disposed) await this.gate.write(() => this.#checkpoint());
    } finally {
      this.#journal?.close();
    }
  }
}

/** An error with its HTTP status and OpenAI error fields (type, code, param). */
export class HttpError extends Error {
  constructor(
    readonly statusCode: number,
    readonly code: string,
    message: string,
    readonly type: string = 'invalid_request_error',
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = 'HttpError';
  }
}
