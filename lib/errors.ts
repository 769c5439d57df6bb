// errors.ts — the one error type of the public API. Every failure that reaches a caller is a
// RepairError with a stable `code`; native errors (plain Errors with a `code` property) are re-wrapped
// here so callers can rely on `instanceof RepairError` and on the code alone.

/** Codes raised by the native layer (see native/errors.h). */
export const NATIVE_ERROR_CODES = [
  'ERR_OOM',
  'ERR_CUDA',
  'ERR_CUDA_UNAVAILABLE',
  'ERR_SAFETENSORS',
  'ERR_IO',
  'ERR_DISPOSED',
  'ERR_ABORTED',
  'ERR_CONTEXT_LENGTH',
  'ERR_INVALID_ARG',
  'ERR_INTERNAL',
  'ERR_BUSY',
  'ERR_NAN_LOSS',
  'ERR_DIVERGED',
  'ERR_MISSING_TENSOR',
  'ERR_SHAPE',
  'ERR_UNSUPPORTED_CPU',
] as const;

/** Codes raised only by the TypeScript layer. */
export const TS_ERROR_CODES = [
  'ERR_UNSUPPORTED_ARCH',
  'ERR_CONFIG',
  'ERR_TOKENIZER',
  'ERR_MEMORY_FILE',
  'ERR_MEMORY_MISMATCH',
  'ERR_MEMORY_VERSION',
  'ERR_EDIT_REQUEST',
  'ERR_UNKNOWN_EDIT',
  'ERR_DATASET',
] as const;

export type NativeErrorCode = (typeof NATIVE_ERROR_CODES)[number];
export type ErrorCode = NativeErrorCode | (typeof TS_ERROR_CODES)[number];

const KNOWN = new Set<string>([...NATIVE_ERROR_CODES, ...TS_ERROR_CODES]);

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && KNOWN.has(code);
}

export class RepairError extends Error {
  readonly code: ErrorCode;
  /** Structured context (file, tensor, expected/actual shape, lengths...). */
  readonly details?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = 'RepairError';
    this.code = code;
    if (details !== undefined) this.details = details;
  }
}

/** True when `e` is a RepairError (optionally with the given code). */
export function isRepairError(e: unknown, code?: ErrorCode): e is RepairError {
  return e instanceof RepairError && (code === undefined || e.code === code);
}

/**
 * Turn anything thrown (a native Error with a `code`, a plain Error, a string) into a RepairError.
 * Native codes are preserved; an unknown or missing code becomes ERR_INTERNAL.
 */
export function toRepairError(e: unknown, fallback: ErrorCode = 'ERR_INTERNAL'): RepairError {
  if (e instanceof RepairError) return e;
  if (e instanceof Error) {
    const code = (e as Error & { code?: unknown }).code;
    return new RepairError(isErrorCode(code) ? code : fallback, e.message, undefined, { cause: e });
  }
  return new RepairError(fallback, String(e));
}

/** Run a native call (sync or async) and re-wrap what it throws. */
export async function callNative<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw toRepairError(e);
  }
}

/** Synchronous twin of callNative. */
export function callNativeSync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw toRepairError(e);
  }
}

export function abortedError(what = 'the operation'): RepairError {
  return new RepairError('ERR_ABORTED', `${what} was aborted`);
}

export function disposedError(what = 'the model'): RepairError {
  return new RepairError('ERR_DISPOSED', `${what} has been disposed`);
}
