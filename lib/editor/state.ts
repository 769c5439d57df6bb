// editor/state.ts — what an editor holds: the side-memory store's handle, the working memory, the frozen
// memories with their thresholds, the stored edits, the REPAIR loop's queue and pools, and the counters
// of the shard cadence. One EditorState per Editor; every module under lib/editor/ and lib/repair/loop.ts
// reads and updates it (Editor, the facade, only holds it and serialises the calls). saveState /
// restoreState take the whole state (bookkeeping and every side-memory slot) to undo a failed call.
import { disposedError } from '../errors.js';
import { modelInternals, type Model } from '../model.js';
import type { RepairEvent } from '../repair/loop.js';
import type { EditorConfig } from './config.js';
import type { EditRequest } from './rows.js';
import type { Calibration } from './router.js';

/** min_a before any edit (EditingMeanAct): no memory has a threshold yet. */
export const NO_ACT = 1e9;

/** Editor#editInfo: one edit and where it lives. */
export interface EditInfo {
  id: string;
  request: EditRequest;
  /** 'working', the index into memories(), or 'queued' (not trained yet: an interrupted editMany resumes it). */
  memory: 'working' | number | 'queued';
  /** The threshold statistic and prompt score at its last training step, and its share of L_edit (trained edits). */
  score?: number;
  promptScore?: number;
  loss?: number;
}

export interface ShardPart {
  seed: number;
  edits: string[];
}
export interface MemoryState {
  /** Stable name (survives slot moves; a merge makes a new one): what events and error rates refer to. */
  uid: string;
  kind: 'shard' | 'merged';
  /** repair `recalibrate`: the threshold recalibrated on the current weights, and its two distributions. */
  thr?: number;
  cal?: Calibration;
  minAct: number;
  /** min over its edits of the prompt-only score: the threshold base for routing bare prompts. */
  minPrompt: number;
  edits: string[];
  /** The shards it was merged from (one for a plain shard): what rollback retrains. */
  parts: ShardPart[];
  /** The TIES weights used for `parts` (retrieve merge) — kept for re-merging after rollback. */
  weights: number[];
}
export interface WorkingState {
  uid: string;
  seed: number;
  thr?: number;
  cal?: Calibration;
  minAct: number;
  minPrompt: number;
  edits: string[];
}
export interface StoredEdit {
  request: EditRequest;
  irrelevant: string[];
  score: number;
  promptScore: number;
  /** Its share of L_edit at the last training step (the loss-aware merge's L_i averages these). */
  loss: number;
}
/** An edit waiting to be trained (the queue, the residual pool). */
export interface Pending {
  id: string;
  request: EditRequest;
  attempts: number;
}
/** The REPAIR loop's state: saved with the memory file so an interrupted editMany can resume. */
export interface LoopState {
  queue: Pending[];
  residual: Pending[];
  /** E: edits whose last monitored prediction failed. */
  feedback: string[];
  /** Last monitored status of each edit: the memory it routed to (uid, or 'main') and a(x). */
  status: Record<string, { memory: string; routedTo?: string; score: number; ok: boolean }>;
  attempts: Record<string, number>;
  gaveUp: string[];
  uidCounter: number;
}

/** What the state needs of its Editor. */
export interface EditorHost {
  readonly config: Readonly<EditorConfig>;
}

/** Everything an editor holds; the modules of lib/editor/ work on it. */
export class EditorState {
  readonly model: Model;
  /** The Editor this state belongs to: its config is read at each use, test hooks are symbols set on it. */
  readonly host: EditorHost;
  /** The native side-memory store (slot 0 = working memory, slot i + 1 = memories[i]). */
  side = 0;
  /** dispose() ran (the model may also be gone: see `disposed`). */
  freed = false;
  unhook: () => void = () => {};
  templates: string[] = [];
  irrelevantPool: string[] = [];
  fingerprint = '';
  editCount = 0;
  shardCount = 0;
  globalMinAct = NO_ACT;
  globalMinPrompt = NO_ACT;
  working: WorkingState = { uid: 'w0', seed: 0, minAct: NO_ACT, minPrompt: NO_ACT, edits: [] };
  memories: MemoryState[] = [];
  edits = new Map<string, StoredEdit>();
  nextId = 1;
  irrCursor = 0;
  /** repair marginScale 'auto': the margin scale measured on the first training call (undefined until then). */
  marginScale: number | undefined;
  loop: LoopState = { queue: [], residual: [], feedback: [], status: {}, attempts: {}, gaveUp: [], uidCounter: 1 };
  /** repair `recalibrate`: memories (uids) whose weights changed since their threshold was set. */
  dirty = new Set<string>();
  /** Token ids of texts scored for recalibration (negatives recur across calls). */
  tokCache = new Map<string, number[]>();
  /**
   * repair `keyRouting`: the unit-norm key (mean FFN activation of the unedited layer) of each stored edit's
   * prompt row and prompt + target row, by row text. A function of the base model and the text alone, so
   * it survives rollbacks and reloads (recomputed on demand), and is never part of a snapshot.
   */
  keyCache = new Map<string, Float32Array>();
  nonContent: Set<number> | undefined;
  /** The event callback of the editMany call in progress (merges run by the cadence report through it). */
  onEvent: ((e: RepairEvent) => void) | undefined;

  constructor(model: Model, host: EditorHost) {
    this.model = model;
    this.host = host;
  }

  get config(): Readonly<EditorConfig> {
    return this.host.config;
  }
  /** A test hook set on the Editor (TRAIN_HOOK, FAIL_SAVE_AFTER), if any. */
  hook<T>(key: symbol): T | undefined {
    return (this.host as unknown as Record<symbol, T | undefined>)[key];
  }

  get disposed(): boolean {
    return this.freed || this.model.disposed;
  }
  check(): void {
    if (this.disposed) throw disposedError();
  }
  uid(prefix: string): string {
    return `${prefix}${this.loop.uidCounter++}`;
  }
  freshId(): string {
    while (this.edits.has(`e${this.nextId}`) || this.loop.queue.some((p) => p.id === `e${this.nextId}`)) this.nextId++;
    return `e${this.nextId++}`;
  }
  threshold(minAct: number): number {
    return this.config.actRatio * minAct;
  }
  /** repair `recalibrate` (issue 12) is on (retrieve mode only: WISE-Merge keeps the reference thresholds). */
  get recal(): boolean {
    return this.config.method === 'repair' && this.config.repair!.recalibrate && this.config.retrieve;
  }
  /** repair `keyRouting` (issue 12): on with recalibrated thresholds only (it picks among memories above them). */
  get keyed(): boolean {
    return this.recal && this.config.repair!.keyRouting;
  }
  /** repair `subjectRouting` (issue 12): within key routing, inputs that mention a stored edit's subject. */
  get subjectKeyed(): boolean {
    return this.keyed && this.config.repair!.subjectRouting;
  }
  /** A memory's routing threshold: the recalibrated one (repair `recalibrate`), else act_ratio × its min statistic. */
  thrOf(x: { minAct: number; minPrompt: number; thr?: number; edits: string[] }, basis: 'full' | 'prompt'): number {
    if (this.recal && x.thr !== undefined) return x.thr;
    if (this.recal && x.edits.length === 0) return this.threshold(NO_ACT);
    return this.threshold(basis === 'full' ? x.minAct : x.minPrompt);
  }
  /** The memory that holds an edit (the shard it was trained into; the latest when re-trained). */
  holder(id: string): string {
    if (this.working.edits.includes(id)) return this.working.uid;
    for (let i = this.memories.length - 1; i >= 0; i--) if (this.memories[i]!.edits.includes(id)) return this.memories[i]!.uid;
    return 'main';
  }
  /** The uid of a slot (-1 = the main weight). */
  slotUid(slot: number): string {
    return slot < 0 ? 'main' : slot === 0 ? this.working.uid : this.memories[slot - 1]!.uid;
  }
  /** The working memory and every frozen memory with its slot. */
  slots(): { slot: number; x: MemoryState | WorkingState }[] {
    return [{ slot: 0, x: this.working }, ...this.memories.map((m, i) => ({ slot: i + 1, x: m }))];
  }
}

export interface Snapshot {
  js: unknown;
  slots: Float32Array[];
}

/** The whole editor state (bookkeeping and every side-memory slot), to undo a failed edit(). */
export async function saveState(ed: EditorState): Promise<Snapshot> {
  const js = structuredClone({
    editCount: ed.editCount,
    shardCount: ed.shardCount,
    globalMinAct: ed.globalMinAct,
    globalMinPrompt: ed.globalMinPrompt,
    working: ed.working,
    memories: ed.memories,
    edits: ed.edits,
    nextId: ed.nextId,
    irrCursor: ed.irrCursor,
    marginScale: ed.marginScale,
    loop: ed.loop,
  });
  const slots = await modelInternals(ed.model).enqueue(async (nm) => {
    const out: Float32Array[] = [];
    const n = nm.sideSlots(ed.side);
    for (let s = 0; s < n; s++) out.push(await nm.sideRead(ed.side, s));
    return out;
  });
  return { js, slots };
}

export async function restoreState(ed: EditorState, saved: Snapshot): Promise<void> {
  await modelInternals(ed.model).enqueue(async (nm) => {
    const n = nm.sideSlots(ed.side);
    const want = saved.slots.length;
    if (n > want) await nm.sideRemove(ed.side, Int32Array.from({ length: n - want }, (_, i) => want + i));
    for (let s = n; s < want; s++) await nm.sideAdd(ed.side, -1);
    for (let s = 0; s < want; s++) await nm.sideWrite(ed.side, s, saved.slots[s]!);
  });
  const j = structuredClone(saved.js) as {
    editCount: number; shardCount: number; globalMinAct: number; globalMinPrompt: number; working: WorkingState;
    memories: MemoryState[]; edits: Map<string, StoredEdit>; nextId: number; irrCursor: number; marginScale: number | undefined; loop: LoopState;
  };
  ed.editCount = j.editCount;
  ed.shardCount = j.shardCount;
  ed.globalMinAct = j.globalMinAct;
  ed.globalMinPrompt = j.globalMinPrompt;
  ed.working = j.working;
  ed.memories = j.memories;
  ed.edits = j.edits;
  ed.nextId = j.nextId;
  ed.irrCursor = j.irrCursor;
  ed.marginScale = j.marginScale;
  ed.loop = j.loop;
}

/**
 * Create the editor's native side-memory store on its layer (slot 0: the working memory W' = W_v) and
 * record the base weight's fingerprint; a model dispose marks the editor disposed (the model frees its
 * stores itself).
 */
export async function attach(ed: EditorState): Promise<void> {
  const mi = modelInternals(ed.model);
  await mi.enqueue(async (nm) => {
    const target = ed.config.editMatrix === 'key' ? 1 : 0;
    ed.side = nm.sideCreate(ed.config.layer, target);
    try {
      await nm.sideAdd(ed.side, -1); // slot 0: the working memory W' = W_v
      ed.fingerprint = await nm.baseFingerprint(ed.config.layer, target);
    } catch (e) {
      nm.sideFree(ed.side);
      throw e;
    }
  });
  ed.unhook = mi.onDispose(() => {
    ed.freed = true;
  });
}
