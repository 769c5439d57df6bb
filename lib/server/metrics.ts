// server/metrics.ts — GET /metrics for the serve command: Prometheus text through prom-client, on a
// registry of its own (several servers in one process keep separate figures).

import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { EditQueue, EditState } from './edits.js';

export class ServerMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'route' | 'method' | 'status'>;
  readonly duration: Histogram<'route'>;
  readonly tokens: Counter<'endpoint'>;
  readonly tokensPerSecond: Gauge;
  readonly editsApplied: Counter<'kind' | 'result'>;
  readonly lastTraining: Gauge;

  constructor(queue: EditQueue) {
    const registers = [this.registry];
    this.requests = new Counter({ name: 'repair_http_requests_total', help: 'HTTP requests answered, by route, method and status code', labelNames: ['route', 'method', 'status'], registers });
    this.duration = new Histogram({
      name: 'repair_http_request_duration_seconds',
      help: 'Time from request to the last byte of the response, by route',
      labelNames: ['route'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.tokens = new Counter({ name: 'repair_generated_tokens_total', help: 'Tokens generated, by endpoint', labelNames: ['endpoint'], registers });
    this.tokensPerSecond = new Gauge({ name: 'repair_generation_tokens_per_second', help: 'Tokens per second of the last finished generation request', registers });
    this.editsApplied = new Counter({ name: 'repair_edit_ops_total', help: 'Edits and rollbacks applied by the queue, by kind and result', labelNames: ['kind', 'result'], registers });
    this.lastTraining = new Gauge({ name: 'repair_last_edit_training_seconds', help: 'Training time of the last applied edit or rollback', registers });
    new Gauge({
      name: 'repair_edit_queue_depth',
      help: 'Edits and rollbacks accepted and not applied yet',
      registers,
      collect() {
        this.set(queue.depth);
      },
    });
    new Gauge({
      name: 'repair_edits',
      help: 'Edits by state (queued, training, live, failed, rolling_back, rolled_back)',
      labelNames: ['state'],
      registers,
      collect() {
        const c = queue.counts();
        for (const k of Object.keys(c) as EditState[]) this.set({ state: k }, c[k]);
      },
    });
    new Gauge({
      name: 'repair_last_edit_latency_seconds',
      help: 'Time from POST /v1/edits to the last trained edit being live (served)',
      registers,
      collect() {
        const ms = queue.lastLatencyMs;
        if (ms !== null) this.set(ms / 1000);
      },
    });
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
