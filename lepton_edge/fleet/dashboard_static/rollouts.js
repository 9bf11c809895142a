// Rollouts: state, progress, waves and abort reasons (GET /v1/rollouts), a rollout's devices on demand
// (GET /v1/rollouts/<id>).
import {getJson} from './api.js';
import {fill, fmtAgo, fmtClock, fmtDate, fmtNum, h, isNum} from './dom.js';

const FINISHED = ['completed', 'aborted', 'cancelled'];
const STATE_CLASS = {completed: 'ok', aborted: 'bad', aborting: 'bad', cancelled: 'muted', paused: 'warn'};
// Progress segments, in the order they fill the bar.
const SEGMENTS = [
  ['confirmed', 'confirmed', 'ok2'], ['healthy', 'healthy', 'ok'], ['in_progress', 'updating', 'busy'],
  ['failed', 'failed', 'bad'], ['rolled_back', 'rolled back', 'bad2'], ['reverted', 'reverted', 'warn'],
  ['waiting', 'waiting', 'idle'],
];
const PHASE_CLASS = {
  healthy: 'ok', confirmed: 'ok2', confirming: 'ok', updating: 'busy', failed: 'bad', rolled_back: 'bad2',
  revert_failed: 'bad', reverting: 'warn', reverted: 'warn', waiting: 'idle', skipped: 'idle',
};
const PARAM_NAMES = {
  canary: 'canary', canary_pct: 'canary %', soak_s: 'soak s', rate: 'rate/min', growth: 'growth',
  wave_interval_s: 'wave every s', max_failures_pct: 'max failures %', min_done: 'min done',
  max_error_rate: 'max error rate', max_p99_increase_pct: 'max p99 +%', expires_s: 'expires s',
};
const SHOWN = 8;
const DEVICE_ROWS = 400;

function bar(counts, total, cls = 'bar') {
  const sum = SEGMENTS.reduce((a, [key]) => a + (isNum(counts[key]) ? counts[key] : 0), 0);
  const whole = Math.max(total || 0, sum, 1);
  const el = h('div', {class: cls, role: 'img',
    'aria-label': SEGMENTS.filter(([k]) => counts[k] > 0).map(([k, label]) => `${counts[k]} ${label}`).join(', ')});
  for (const [key, , color] of SEGMENTS) {
    const n = counts[key];
    if (!isNum(n) || n <= 0) continue;
    const seg = h('span', {class: `seg-${color}`, title: `${n} ${key.replace('_', ' ')}`});
    seg.style.width = `${(100 * n) / whole}%`;
    el.append(seg);
  }
  return el;
}

function chips(counts, classes) {
  return Object.entries(counts || {}).filter(([, n]) => isNum(n) && n > 0)
    .map(([k, n]) => h('span', {class: ['chip', classes[k] || 'idle'], dataset: {state: k}}, `${k.replace('_', ' ')} ${n}`));
}

function abortValue(criterion, v) {
  if (!isNum(v)) return String(v);
  return criterion === 'max-error-rate' ? v.toPrecision(3) : `${fmtNum(v, 1)} %`;
}

function waveStates(states) {
  const counts = {};
  for (const [k, n] of Object.entries(states || {})) {
    const key = ['updating', 'reverting', 'confirming'].includes(k) ? 'in_progress' : k;
    counts[key] = (counts[key] || 0) + n;
  }
  return counts;
}

export class RolloutList {
  constructor(root, {onError}) {
    this.root = root;
    this.onError = onError;
    this.expanded = new Set();
    this.details = new Map();
    this.rollouts = null;
  }

  /** rollouts: the list, or null when the controller has no rollout API. */
  async update(rollouts) {
    this.rollouts = rollouts;
    const ids = new Set((rollouts || []).map((r) => r.rollout));
    for (const id of [...this.expanded]) if (!ids.has(id)) this.expanded.delete(id);
    await Promise.all([...this.expanded].map((id) => this.fetchDetail(id)));
    this.render();
  }

  async fetchDetail(id) {
    try {
      this.details.set(id, await getJson(`/v1/rollouts/${encodeURIComponent(id)}`));
    } catch (err) {
      this.onError(err);
    }
  }

  async toggle(id) {
    if (this.expanded.has(id)) {
      this.expanded.delete(id);
    } else {
      this.expanded.add(id);
      this.render();
      await this.fetchDetail(id);
    }
    this.render();
  }

  render() {
    const list = [...(this.rollouts || [])].sort((a, b) => (b.created || 0) - (a.created || 0));
    if (!list.length) {
      fill(this.root, h('p', {class: 'none', id: 'no-rollouts'}, 'no rollouts'));
      return;
    }
    const now = Date.now() / 1000;
    fill(this.root, list.slice(0, SHOWN).map((r) => this.card(r, now)),
      list.length > SHOWN ? h('p', {class: 'muted small'}, `${list.length - SHOWN} older rollouts not shown`) : null);
  }

  card(r, now) {
    const sum = r.summary || {};
    const selected = isNum(sum.selected) ? sum.selected : 0;
    const done = ['confirmed', 'healthy', 'failed', 'rolled_back', 'reverted']
      .reduce((a, k) => a + (isNum(sum[k]) ? sum[k] : 0), 0);
    const open = this.expanded.has(r.rollout);
    const params = Object.entries(r.params || {}).filter(([, v]) => v !== null && v !== undefined && v !== false);
    return h('article', {class: ['rollout', FINISHED.includes(r.state) && 'finished'], dataset: {rollout: r.rollout, state: r.state}},
      h('div', {class: 'rollout-head'},
        h('span', {class: ['state', STATE_CLASS[r.state] || 'busy'], dataset: {col: 'state'}}, r.state),
        h('span', {class: 'rollout-model'}, r.name || '?', h('span', {class: 'ver'}, ` v${r.version}`)),
        h('span', {class: 'mono muted', title: `rollout ${r.rollout}\nartifact ${r.artifact}`}, String(r.rollout).slice(0, 8)),
        h('span', {class: 'spacer'}),
        h('span', {class: 'muted small', title: `started ${fmtDate(r.created)}`},
          `started ${fmtAgo(r.created, now)}${FINISHED.includes(r.state) && isNum(r.updated) ? ` · ended ${fmtClock(r.updated)}` : ''}`)),
      r.abort ? h('div', {class: 'abort', dataset: {col: 'abort'},
        title: `${abortValue(r.abort.criterion, r.abort.value)} > ${abortValue(r.abort.criterion, r.abort.limit)}`},
        h('b', null, `Aborted on ${r.abort.criterion}`), h('span', {class: 'abort-text'}, ' — ', r.abort.text
          || `${abortValue(r.abort.criterion, r.abort.value)} > ${abortValue(r.abort.criterion, r.abort.limit)}`)) : null,
      h('div', {class: 'progress'},
        bar(sum, selected),
        h('div', {class: 'progress-text', dataset: {col: 'progress'}},
          h('b', null, `${done} / ${selected}`), ' done', isNum(sum.released) ? ` · ${sum.released} released` : '',
          ' ', chips(Object.fromEntries(SEGMENTS.map(([k]) => [k, sum[k]])), Object.fromEntries(SEGMENTS.map(([k, , c]) => [k, c]))))),
      (r.waves || []).length ? h('table', {class: 'waves'},
        h('thead', null, h('tr', null, h('th', null, 'wave'), h('th', {class: 'num'}, 'devices'), h('th', null, 'released'),
          h('th', {class: 'wide'}, 'progress'), h('th', null, 'states'))),
        h('tbody', null, r.waves.map((w) => h('tr', {dataset: {wave: String(w.wave)}},
          h('td', null, w.canary ? 'canary' : `wave ${w.wave}`),
          h('td', {class: 'num'}, String(w.devices)),
          h('td', {title: fmtDate(w.released_at)}, isNum(w.released_at) ? fmtClock(w.released_at) : 'not yet'),
          h('td', {class: 'wide'}, bar(waveStates(w.states), w.devices, 'bar thin')),
          h('td', null, chips(w.states, PHASE_CLASS)))))) : null,
      h('div', {class: 'rollout-foot'},
        params.length ? h('span', {class: 'params'}, params.map(([k, v]) =>
          h('span', {class: 'param'}, h('span', {class: 'muted'}, PARAM_NAMES[k] || k.replaceAll('_', ' ')), ` ${Array.isArray(v) ? v.join(', ') : v}`))) : null,
        h('span', {class: 'spacer'}),
        h('button', {type: 'button', class: 'link', 'aria-expanded': String(open), onclick: () => this.toggle(r.rollout)},
          open ? 'hide devices' : 'show devices')),
      open ? this.devicesTable(r.rollout) : null);
  }

  devicesTable(id) {
    const detail = this.details.get(id);
    if (!detail) return h('p', {class: 'muted small'}, 'loading…');
    const wave = (d) => (isNum(d.wave) ? d.wave : Infinity); // devices never sent a job last
    const devices = [...(detail.devices || [])].sort((a, b) => (wave(a) - wave(b)) || (a.device < b.device ? -1 : 1));
    return h('div', {class: 'table-wrap rollout-devices'}, h('table', {class: 'grid'},
      h('thead', null, h('tr', null, ['device', 'wave', 'phase', 'job state', 'previous model', 'reason'].map((x) => h('th', null, x)))),
      h('tbody', null, devices.slice(0, DEVICE_ROWS).map((d) => h('tr', {dataset: {device: d.device}},
        h('td', {class: 'mono'}, d.device),
        h('td', null, isNum(d.wave) ? (d.wave === 0 ? 'canary' : String(d.wave)) : '–'),
        h('td', null, h('span', {class: ['chip', PHASE_CLASS[d.phase] || 'idle']}, String(d.phase || '').replace('_', ' '))),
        h('td', null, d.state || '–'),
        h('td', null, d.previous ? `${d.previous.name} v${d.previous.version}` : 'none'),
        h('td', {class: 'reason'}, d.reason || ''))))),
    devices.length > DEVICE_ROWS ? h('p', {class: 'muted small'}, `${devices.length - DEVICE_ROWS} more devices not shown`) : null);
  }
}
