// One device: its latency and throughput over time, from GET /v1/devices/<id>/telemetry.
import {getJson} from './api.js';
import {LineChart} from './chart.js';
import {fill, fmtAgo, fmtBytes, fmtDate, fmtDuration, fmtNum, h, isNum} from './dom.js';

const WINDOWS = [[300, '5 min'], [900, '15 min'], [3600, '1 h']];
const LIMIT = 5000;

/** Per-second rates from a cumulative counter (a decrease means a restart: the new count is the delta). */
function rates(rows, key) {
  const out = [];
  for (let i = 1; i < rows.length; i++) {
    const a = rows[i - 1], b = rows[i];
    if (!isNum(a[key]) || !isNum(b[key])) continue;
    const ta = isNum(a.ts) ? a.ts : a.received, tb = isNum(b.ts) ? b.ts : b.received;
    if (!(tb > ta)) continue;
    out.push([b.received, (b[key] >= a[key] ? b[key] - a[key] : b[key]) / (tb - ta)]);
  }
  return out;
}

export class DeviceDetail {
  constructor(root, {onClose, onError}) {
    this.root = root;
    this.onError = onError;
    this.device = null;
    this.rows = [];
    this.windowS = 900;
    this.generation = 0;
    this.title = h('h2', {id: 'detail-title'});
    this.facts = h('dl', {class: 'facts'});
    this.windowButtons = h('div', {class: 'seg', role: 'group', 'aria-label': 'time window'});
    this.latencyEl = h('div', {id: 'chart-latency'});
    this.throughputEl = h('div', {id: 'chart-throughput'});
    fill(root,
      h('div', {class: 'panel-head'}, this.title, h('div', {class: 'spacer'}), this.windowButtons,
        h('button', {class: 'ghost', type: 'button', title: 'close', 'aria-label': 'close', onclick: onClose}, '×')),
      this.facts,
      h('div', {class: 'charts'}, this.latencyEl, this.throughputEl));
    this.latency = new LineChart(this.latencyEl, {title: 'Latency', unit: 'ms', digits: 2});
    this.throughput = new LineChart(this.throughputEl, {title: 'Throughput', unit: '/s', digits: 1});
    this.renderWindows();
  }

  renderWindows() {
    fill(this.windowButtons, WINDOWS.map(([secs, label]) => h('button', {
      type: 'button', class: secs === this.windowS ? 'on' : null, 'aria-pressed': String(secs === this.windowS),
      onclick: () => { this.windowS = secs; this.renderWindows(); this.show(this.device, this.record, true); },
    }, label)));
  }

  /** Show a device (its row from /v1/devices); refetches its whole window when it is another device. */
  async show(device, record, reload = false) {
    this.record = record;
    this.renderFacts();
    if (device !== this.device || reload) {
      this.device = device;
      this.rows = [];
      this.generation += 1;
      this.root.hidden = false;
      fill(this.title, 'Device ', h('span', {class: 'mono'}, device));
    }
    await this.refresh();
  }

  hide() {
    this.device = null;
    this.generation += 1;
    this.root.hidden = true;
  }

  renderFacts() {
    const d = this.record;
    if (!d) { fill(this.facts); return; }
    const t = d.telemetry || {};
    const fact = (k, v) => (v === null || v === undefined || v === '' ? null : h('div', null, h('dt', null, k), h('dd', null, v)));
    fill(this.facts,
      fact('status', d.online ? 'online' : `offline${d.offline_reason ? ` (${d.offline_reason})` : ''}`),
      fact('model', d.model ? `${d.model.name} v${d.model.version}${d.model.slot ? ` · slot ${d.model.slot}` : ''}` : 'none'),
      fact('sha256', d.model ? h('span', {class: 'mono', title: d.model.sha256}, d.model.sha256.slice(0, 12)) : null),
      fact('profile', d.profile),
      fact('tags', Array.isArray(d.tags) && d.tags.length ? d.tags.map((tag) => h('span', {class: 'tag'}, tag)) : null),
      fact('budget', isNum(d.latency_budget_ms) ? `${fmtNum(d.latency_budget_ms, 2)} ms` : null),
      fact('agent', d.agent),
      fact('uptime', isNum(t.uptime_s) ? fmtDuration(t.uptime_s) : null),
      fact('inferences', isNum(t.inferences) ? String(t.inferences) : null),
      fact('errors', isNum(t.errors) ? String(t.errors) : null),
      fact('arena', isNum(t.arena_bytes) ? fmtBytes(t.arena_bytes) : null),
      fact('cpu', isNum(t.cpu_percent) ? `${fmtNum(t.cpu_percent, 1)} %` : null),
      fact('temp', isNum(t.temperature_c) ? `${fmtNum(t.temperature_c, 1)} °C` : null),
      fact('first seen', d.first_seen ? h('span', {title: fmtDate(d.first_seen)}, fmtAgo(d.first_seen, Date.now() / 1000)) : null));
  }

  async refresh() {
    if (this.device === null) return;
    const generation = this.generation;
    const now = Date.now() / 1000;
    const last = this.rows.length ? this.rows[this.rows.length - 1] : null;
    const since = last ? last.received : now - this.windowS;
    let answer;
    try {
      answer = await getJson(`/v1/devices/${encodeURIComponent(this.device)}/telemetry?since=${String(since)}&limit=${LIMIT}`);
    } catch (err) {
      if (generation === this.generation) this.onError(err);
      return;
    }
    if (generation !== this.generation) return; // another device was chosen meanwhile
    const seen = new Set(this.rows.slice(-50).map((r) => `${r.received}:${r.seq}`));
    const fresh = (answer.series || []).filter((r) => isNum(r.received) && !seen.has(`${r.received}:${r.seq}`));
    const cutoff = now - this.windowS;
    this.rows = this.rows.concat(fresh).filter((r) => r.received >= cutoff);
    this.draw();
  }

  draw() {
    const rows = this.rows;
    const pick = (key) => rows.filter((r) => isNum(r[key])).map((r) => [r.received, r[key]]);
    const own = pick('inferences_per_s');
    const errors = rates(rows, 'errors');
    this.latency.update([
      {name: 'p50', cls: 's0', points: pick('latency_p50_ms')},
      {name: 'p99', cls: 's1', points: pick('latency_p99_ms')},
    ]);
    const throughput = [{name: 'inferences', cls: 's2', points: own.length ? own : rates(rows, 'inferences')}];
    if (errors.some((p) => p[1] > 0)) throughput.push({name: 'errors', cls: 's3', points: errors});
    this.throughput.update(throughput);
    Object.assign(this.root.dataset, {
      device: this.device, rows: String(rows.length),
      firstReceived: rows.length ? String(rows[0].received) : '', lastReceived: rows.length ? String(rows[rows.length - 1].received) : '',
    });
  }
}
