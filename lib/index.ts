// index.ts — the public API of repair-edit.
export { loadModel, Model } from './model.js';
export type {
  LoadModelOptions,
  BackendChoice,
  Prompt,
  GenerateOptions,
  GenerateResult,
  GeneratedToken,
  FinishReason,
  LogitsOptions,
  LogitsPositions,
  LogitsResult,
  LogitsRow,
} from './model.js';
export { info } from './info.js';
export { shippedModelDir } from './paths.js';
export type { Info, CudaDevice } from './info.js';
export { RepairError, isRepairError } from './errors.js';
export type { ErrorCode } from './errors.js';
export { ModelTokenizer } from './tokenizer.js';
export type { ChatMessage, ChatRole, EncodeOptions, DecodeOptions, ChatTemplateOptions } from './tokenizer.js';
export type { ModelConfig, ModelType, RopeScaling } from './config.js';
export type { BackendName } from './native.js';
export { Editor, presetFor, MEMORY_FORMAT, MEMORY_FORMAT_VERSION } from './editor.js';
export type { EditRequest, EditorConfig, EditorOptions, EditMethod, ScoreMode, EditProgress, EditResult, Explanation, RouteScore, EditInfo, Calibration } from './editor.js';
export type { RepairEvent, EditManyResult } from './editor.js';
export { REPAIR_DEFAULTS, REPAIR_PAPER, calibrateThreshold } from './repair.js';
export type { RepairOptions, Correctness } from './repair.js';
export { loadDataset, loadZsre, loadCounterFact, loadHallucination, loadTemporal, loadJsonl, datasetDirs, NAMED_DATASETS } from './datasets.js';
export type { Dataset, EditRecord, DatasetFormat, DataDir, LoadOptions } from './datasets.js';
export { evaluate, evaluateVariants, recordsTooLong } from './eval.js';
export type { EvalOptions, EvalReport, EvalRun, EvalSummary, EvalVariant, RoutingBasis, RoutingReport, RoutingCase, RoutePoint, RoutingSummary, TooLongRecord } from './eval.js';
export { createServer } from './server/app.js';
export type { ServerOptions, RepairServer } from './server/app.js';
export type { EditStatus, EditState } from './server/edits.js';
