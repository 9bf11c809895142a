// Rollouts: state, progress, waves and abort reasons (GET /v1/rollouts), a rollout's devices on demand
// (GET /v1/rollouts/<id>).
import {getJson} from './api.js';
import {fill, fmtAgo, fmtClock, fmtDate, fmtDuration, fmtNum, h, isNum, morph} from './dom.js';

const FINISHED = ['completed', 'aborted', 'cancelled'];
const STATE_CLASS = {completed: 'ok', aborted: 'bad', aborting: 'bad', cancelled: 'muted', paused: 'warn'};
// A device's phase in a rollout: its colour, in the order the phases fill a progress bar.
const PHASES = [
  ['confirmed', 'ok2'], ['confirming', 'ok'], ['healthy', 'ok'], ['updating', 'busy'], ['reverting', 'warn'],
  ['failed', 'bad'], ['revert_failed', 'bad'], ['rolled_back', 'bad2'], ['reverted', 'warn'], ['skipped', 'idle'],
  ['waiting', 'idle'],
];
const PHASE_CLASS = Object.fromEntries(PHASES);
const words = (phase) => phase.replaceAll('_', ' ');

/** The rollout summary as phase counts: its "healthy" includes confirming and confirmed devices, its
 * "in_progress" the updating and reverting ones. */
function summaryPhases(sum) {
  const n = (k) => (isNum(sum[k]) ? sum[k] : 0);
  return {confirmed: n('confirmed'), healthy: n('healthy') - n('confirmed'), updating: n('in_progress'),
    failed: n('failed'), revert_failed: n('revert_failed'), rolled_back: n('rolled_back'), reverted: n('reverted'),
    skipped: n('skipped'), waiting: n('waiting')};
}

// The rollout's flags as deploy takes them: [label, value] (null: not shown).
const PARAMS = {
  canary: (v) => ['canary', `${v}`], canary_pct: (v) => ['canary', `${v} %`], soak_s: (v) => ['soak', fmtDuration(v)],
  rate: (v) => ['rate', `${v}/min`], growth: (v, p) => (p.rate ? ['growth', `×${v}`] : null),
  wave_interval_s: (v, p) => (p.rate ? ['waves every', fmtDuration(v)] : null),
  max_failures_pct: (v) => ['max failures', `${v} %`], min_done: (v) => ['min done', `${v}`],
  max_error_rate: (v) => ['max error rate', `${v}`], max_p99_increase_pct: (v) => ['max p99 increase', `${v} %`],
  expires_s: (v) => ['expires after', fmtDuration(v)],
};
const SHOWN = 8;
const DEVICE_ROWS = 400;

function bar(counts, total, cls = 'bar') {
  const present = PHASES.filter(([k]) => isNum(counts[k]) && counts[k] > 0);
  const whole = Math.max(total || 0, present.reduce((a, [k]) => a + counts[k], 0), 1);
  const el = h('div', {class: cls, role: 'img', 'aria-label': present.map(([k]) => `${counts[k]} ${words(k)}`).join(', ')});
  for (const [k, color] of present) {
    const seg = h('span', {class: `seg-${color}`, title: `${counts[k]} ${words(k)}`});
    seg.style.width = `${(100 * counts[k]) / whole}%`;
    el.append(seg);
  }
  return el;
}

function chips(counts) {
  const other = Object.keys(counts).filter((k) => !(k in PHASE_CLASS)).map((k) => [k, 'idle']);
  return PHASES.concat(other).filter(([k]) => isNum(counts[k]) && counts[k] > 0)
    .map(([k, color]) => h('span', {class: ['chip', color], dataset: {phase: k}}, `${words(k)} ${counts[k]}`));
}

function abortValue(criterion, v) {
  if (!isNum(v)) return String(v);
  return criterion === 'max-error-rate' ? v.toPrecision(3) : `${fmtNum(v, 1)} %`;
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
    morph(this.root, list.slice(0, SHOWN).map((r) => this.card(r, now)),
      list.length > SHOWN ? h('p', {class: 'muted small'}, `${list.length - SHOWN} older rollouts not shown`) : null);
  }

  card(r, now) {
    const sum = r.summary || {};
    const selected = isNum(sum.selected) ? sum.selected : 0;
    const phases = summaryPhases(sum);
    const healthy = isNum(sum.healthy) ? sum.healthy : 0;
    const open = this.expanded.has(r.rollout);
    const p = r.params || {};
    const params = Object.entries(p).filter(([, v]) => v !== null && v !== undefined && v !== false)
      .map(([k, v]) => (PARAMS[k] ? PARAMS[k](v, p) : [k.replaceAll('_', ' '), Array.isArray(v) ? v.join(', ') : `${v}`]))
      .filter(Boolean);
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
        bar(phases, selected),
        h('div', {class: 'progress-text', dataset: {col: 'progress'}},
          h('b', null, `${healthy} / ${selected}`), ` on v${r.version}`,
          isNum(sum.released) ? ` · ${sum.released} released` : '', ' ', chips(phases))),
      (r.waves || []).length ? h('table', {class: 'waves'},
        h('thead', null, h('tr', null, h('th', null, 'wave'), h('th', {class: 'num'}, 'devices'), h('th', null, 'released'),
          h('th', {class: 'wide'}, 'progress'), h('th', null, 'states'))),
        h('tbody', null, r.waves.map((w) => h('tr', {dataset: {wave: String(w.wave)}},
          h('td', null, w.canary ? 'canary' : `wave ${w.wave}`),
          h('td', {class: 'num'}, String(w.devices)),
          h('td', {title: fmtDate(w.released_at)}, isNum(w.released_at) ? fmtClock(w.released_at) : 'not yet'),
          h('td', {class: 'wide'}, bar(w.states || {}, w.devices, 'bar thin')),
          h('td', null, chips(w.states || {})))))) : null,
      h('div', {class: 'rollout-foot'},
        params.length ? h('span', {class: 'params'}, params.map(([label, value]) =>
          h('span', {class: 'param'}, h('span', {class: 'muted'}, label), ` ${value}`))) : null,
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
        h('td', null, h('span', {class: ['chip', PHASE_CLASS[d.phase] || 'idle']}, words(String(d.phase || '')))),
        h('td', null, d.state || '–'),
        h('td', null, d.previous ? `${d.previous.name} v${d.previous.version}` : 'none'),
        h('td', {class: 'reason'}, d.reason || ''))))),
    devices.length > DEVICE_ROWS ? h('p', {class: 'muted small'}, `${devices.length - DEVICE_ROWS} more devices not shown`) : null);
  }
}
