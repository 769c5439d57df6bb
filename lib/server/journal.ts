// server/journal.ts — the serve command's write-ahead journal of accepted edits and rollbacks.
//
// One JSON object per line. append() writes the lines and fsyncs before it returns, so an edit the
// server acknowledged (202) survives a kill -9. A line torn by a crash mid-append was never
// acknowledged: open() cuts it off. rewrite() replaces the journal atomically (temporary file, fsync,
// rename, fsync of the folder) when a checkpoint of the memory file has made older lines redundant.

import { closeSync, existsSync, fsyncSync, ftruncateSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { EditRequest } from '../editor.js';
import { RepairError } from '../errors.js';

export type JournalEntry =
  | { op: 'edit'; id: string; request: EditRequest; at: number }
  | { op: 'rollback'; id: string; at: number }
  | { op: 'failed'; id: string; code: string; message: string; at: number };

function isEntry(x: unknown): x is JournalEntry {
  if (typeof x !== 'object' || x === null) return false;
  const e = x as Record<string, unknown>;
  if (typeof e.id !== 'string' || typeof e.at !== 'number') return false;
  if (e.op === 'edit') {
    const r = e.request as Record<string, unknown> | null;
    return typeof r === 'object' && r !== null && typeof r.prompt === 'string' && typeof r.target === 'string';
  }
  if (e.op === 'rollback') return true;
  return e.op === 'failed' && typeof e.code === 'string' && typeof e.message === 'string';
}

function fsyncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch {
    /* some filesystems refuse to fsync a folder; the rename itself is still atomic */
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

export class Journal {
  readonly path: string;
  #fd: number;

  private constructor(path: string, fd: number) {
    this.path = path;
    this.#fd = fd;
  }

  /**
   * Open (or create) the journal and return it with the entries it holds. A last line without its
   * newline (a crash mid-append) is cut off; a complete line that is not a journal entry is an error
   * (ERR_IO naming the line): the file is not ours, or it was damaged, and guessing would lose edits.
   */
  static open(path: string): { journal: Journal; entries: JournalEntry[] } {
    let text = '';
    try {
      text = existsSync(path) ? readFileSync(path, 'utf8') : '';
    } catch (e) {
      throw new RepairError('ERR_IO', `cannot read the journal ${path}: ${(e as Error).message}`, { file: path }, { cause: e });
    }
    const complete = text.lastIndexOf('\n') + 1; // bytes of whole lines (ASCII newline: byte index = char index for the cut)
    const entries: JournalEntry[] = [];
    const lines = text.slice(0, complete).split('\n');
    lines.forEach((line, i) => {
      if (line.trim() === '') return;
      let v: unknown;
      try {
        v = JSON.parse(line);
      } catch {
        v = undefined;
      }
      if (!isEntry(v)) throw new RepairError('ERR_IO', `${path}: line ${i + 1} is not a journal entry`, { file: path, line: i + 1 });
      entries.push(v);
    });
    let fd: number;
    try {
      fd = openSync(path, 'a+');
      if (complete < text.length) {
        ftruncateSync(fd, Buffer.byteLength(text.slice(0, complete)));
        fsyncSync(fd);
      }
    } catch (e) {
      throw new RepairError('ERR_IO', `cannot open the journal ${path}: ${(e as Error).message}`, { file: path }, { cause: e });
    }
    return { journal: new Journal(path, fd), entries };
  }

  /** Append entries and fsync: when this returns they survive a crash. */
  append(entries: readonly JournalEntry[]): void {
    if (entries.length === 0) return;
    const buf = Buffer.from(entries.map((e) => `${JSON.stringify(e)}\n`).join(''));
    try {
      let off = 0;
      while (off < buf.length) off += writeSync(this.#fd, buf, off, buf.length - off);
      fsyncSync(this.#fd);
    } catch (e) {
      throw new RepairError('ERR_IO', `cannot append to the journal ${this.path}: ${(e as Error).message}`, { file: this.path }, { cause: e });
    }
  }

  /** Replace the whole journal with `entries`, atomically. */
  rewrite(entries: readonly JournalEntry[]): void {
    const tmp = join(dirname(this.path), `.${basename(this.path)}.${process.pid}.tmp`);
    try {
      const fd = openSync(tmp, 'w');
      try {
        const buf = Buffer.from(entries.map((e) => `${JSON.stringify(e)}\n`).join(''));
        let off = 0;
        while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, this.path);
      fsyncDir(dirname(this.path));
      const fd2 = openSync(this.path, 'a+');
      closeSync(this.#fd);
      this.#fd = fd2;
    } catch (e) {
      throw new RepairError('ERR_IO', `cannot rewrite the journal ${this.path}: ${(e as Error).message}`, { file: this.path }, { cause: e });
    }
  }

  close(): void {
    try {
      closeSync(this.#fd);
    } catch {
      /* already closed */
    }
  }
}
