// The fleet table and the summary cards above it, from GET /v1/devices.
import {fill, fmtAgo, fmtBytes, fmtDate, fmtNum, h, isNum, morph} from './dom.js';

const COLUMNS = [
  {key: 'device', label: 'Device', sort: (d) => d.device},
  {key: 'online', label: 'Status', sort: (d) => (d.online ? 0 : 1)},
  {key: 'model', label: 'Model', sort: (d) => (d.model ? `${d.model.name}\u0000${String(d.model.version).padStart(9, '0')}` : '\uffff')},
  {key: 'p50', label: 'p50 ms', num: true, sort: (d) => tel(d, 'latency_p50_ms')},
  {key: 'p99', label: 'p99 ms', num: true, sort: (d) => tel(d, 'latency_p99_ms')},
  {key: 'throughput', label: 'inf/s', num: true, sort: (d) => d.rate},
  {key: 'memory', label: 'Memory', num: true, sort: (d) => tel(d, 'rss_bytes')},
  {key: 'last_seen', label: 'Last seen', num: true, sort: (d) => -(d.last_seen || 0)},
  {key: 'ota', label: 'Update', sort: (d) => (d.ota ? d.ota.state : '')},
];

function tel(d, key) {
  const v = d.telemetry ? d.telemetry[key] : null;
  return isNum(v) ? v : null;
}

/** Inferences per second: the device's own figure, else from its cumulative count between two polls. */
export class Throughput {
  constructor() { this.last = new Map(); }

  rate(d) {
    const t = d.telemetry || {};
    if (isNum(t.inferences_per_s)) return t.inferences_per_s;
    if (!isNum(t.inferences) || !isNum(t.ts)) return null;
    const last = this.last.get(d.device);
    if (!last) {
      this.last.set(d.device, {ts: t.ts, inferences: t.inferences, rate: null});
      return null;
    }
    if (t.ts > last.ts) { // a decrease of the count means a restart: the new count is the delta
      const delta = t.inferences >= last.inferences ? t.inferences - last.inferences : t.inferences;
      Object.assign(last, {rate: delta / (t.ts - last.ts), ts: t.ts, inferences: t.inferences});
    }
    return last.rate;
  }
}

function otaText(ota) {
  if (!ota) return '';
  let text = ota.state.replaceAll('_', ' ');
  if (ota.state === 'downloading' && ota.total) text += ` ${Math.round((100 * ota.received) / ota.total)}%`;
  return text;
}

const OTA_CLASS = {healthy: 'ok', failed: 'bad', rolled_back: 'bad', expired: 'warn', superseded: 'muted'};

function td(col, value, props, ...children) {
  return h('td', {...props, dataset: {col, value: value === null || value === undefined ? '' : String(value)}}, ...children);
}

/** A row's cells: for each column a signature (it changes exactly when the cell's look changes) and how
 * to make the cell. A refresh rebuilds only the cells whose signature changed. */
function cellSpecs(d, now) {
  const t = d.telemetry || {};
  const budget = isNum(d.latency_budget_ms) ? d.latency_budget_ms : null;
  const p50 = tel(d, 'latency_p50_ms'), p99 = tel(d, 'latency_p99_ms'), rss = tel(d, 'rss_bytes');
  const over = budget !== null && p99 !== null && p99 > budget;
  const tags = Array.isArray(d.tags) ? d.tags : [];
  const m = d.model;
  const modelText = m ? `${m.name} v${m.version}` : '';
  const ago = fmtAgo(d.last_seen, now);
  const ota = d.ota;
  return [
    [`${d.device}\u0001${tags.join('\u0001')}`, () => td('device', d.device, {}, h('span', {class: 'dev-id'}, d.device),
      tags.slice(0, 3).map((tag) => h('span', {class: 'tag'}, tag)),
      tags.length > 3 ? h('span', {class: 'tag muted', title: tags.slice(3).join(' ')}, `+${tags.length - 3}`) : null)],
    [`${d.online}\u0001${d.offline_reason}`, () => td('online', d.online ? 'online' : 'offline', {},
      h('span', {class: ['pill', d.online ? 'ok' : 'off'], title: d.online ? null : d.offline_reason || null},
        d.online ? 'online' : 'offline'))],
    [m ? `${modelText}\u0001${m.sha256}\u0001${m.slot}` : '', () => td('model', modelText,
      {title: m ? `sha256 ${m.sha256}${m.slot ? ', slot ' + m.slot : ''}` : null},
      m ? [h('span', {class: 'model-name'}, m.name), h('span', {class: 'ver'}, ` v${m.version}`)]
        : h('span', {class: 'muted'}, 'none'))],
    [`${p50}`, () => td('p50', p50, {class: 'num'}, fmtNum(p50, 2))],
    [`${p99}\u0001${budget}`, () => td('p99', p99,
      {class: ['num', over && 'over'], title: budget !== null ? `latency budget ${fmtNum(budget, 2)} ms` : null},
      fmtNum(p99, 2))],
    [`${d.rate}`, () => td('throughput', d.rate, {class: 'num'}, fmtNum(d.rate, 1))],
    [`${rss}`, () => td('memory', rss, {class: 'num'}, fmtBytes(t.rss_bytes))],
    [`${d.last_seen}\u0001${ago}`, () => td('last_seen', d.last_seen, {class: 'num', title: fmtDate(d.last_seen)}, ago)],
    [ota ? `${ota.state}\u0001${ota.received}\u0001${ota.total}\u0001${ota.reason}` : '', () => td('ota',
      ota ? ota.state : '', {}, ota ? h('span', {class: ['ota', OTA_CLASS[ota.state] || 'busy'], title: ota.reason || null},
        otaText(ota)) : '')],
  ];
}

export class DeviceTable {
  constructor(table, {onSelect}) {
    this.table = table;
    this.onSelect = onSelect;
    this.sortKey = 'device';
    this.desc = false;
    this.filter = '';
    this.devices = [];
    this.selected = null;
    this.rows = new Map(); // device -> {tr, sigs}
    this.head = h('tr');
    table.replaceChildren(h('thead', null, this.head), this.body = h('tbody'));
    this.renderHead();
  }

  renderHead() {
    fill(this.head, COLUMNS.map((c) => h('th', {
      class: [c.num && 'num', this.sortKey === c.key && (this.desc ? 'desc' : 'asc')],
      scope: 'col', 'aria-sort': this.sortKey === c.key ? (this.desc ? 'descending' : 'ascending') : null,
      onclick: () => {
        this.desc = this.sortKey === c.key ? !this.desc : false;
        this.sortKey = c.key;
        this.renderHead();
        this.render();
      },
    }, c.label)));
  }

  update(devices) {
    this.devices = devices;
    const present = new Set(devices.map((d) => d.device));
    for (const id of this.rows.keys()) if (!present.has(id)) this.rows.delete(id);
    return this.render();
  }

  /** The device's row: the same element from refresh to refresh (the row under the mouse, its focus and a
   * click in progress survive), with only its changed cells made again. */
  row(d, now) {
    let cached = this.rows.get(d.device);
    if (!cached) {
      const id = d.device;
      const tr = h('tr', {dataset: {device: id}, tabindex: '0', onclick: () => this.onSelect(id),
        onkeydown: (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); this.onSelect(id); } }});
      cached = {tr, sigs: []};
      this.rows.set(id, cached);
    }
    const {tr, sigs} = cached;
    const selected = d.device === this.selected;
    const cls = [!d.online && 'offline', selected && 'selected'].filter(Boolean).join(' ');
    if ((tr.getAttribute('class') || '') !== cls) tr.setAttribute('class', cls);
    tr.setAttribute('aria-selected', String(selected));
    cellSpecs(d, now).forEach(([sig, make], i) => {
      if (sigs[i] === sig && tr.cells[i]) return;
      const cell = make();
      if (tr.cells[i]) tr.cells[i].replaceWith(cell); else tr.append(cell);
      sigs[i] = sig;
    });
    return tr;
  }

  matches(d) {
    if (!this.filter) return true;
    const f = this.filter.toLowerCase();
    const hay = [d.device, d.model ? `${d.model.name} v${d.model.version}` : '', ...(d.tags || []),
      d.profile || '', d.online ? 'online' : 'offline', d.ota ? d.ota.state : ''];
    return hay.some((x) => String(x).toLowerCase().includes(f));
  }

  render() {
    const col = COLUMNS.find((c) => c.key === this.sortKey) || COLUMNS[0];
    const key = (d) => col.sort(d);
    const shown = this.devices.filter((d) => this.matches(d)).sort((a, b) => {
      const ka = key(a), kb = key(b);
      if (ka === kb) return a.device < b.device ? -1 : 1;
      if (ka === null || ka === undefined) return 1; // blanks last, either way
      if (kb === null || kb === undefined) return -1;
      return (ka < kb ? -1 : 1) * (this.desc ? -1 : 1);
    });
    const now = Date.now() / 1000;
    if (!this.devices.length) {
      fill(this.body, h('tr', {class: 'empty'}, h('td', {colspan: COLUMNS.length},
        'no devices yet: they appear when they first say something on the broker')));
    } else if (!shown.length) {
      fill(this.body, h('tr', {class: 'empty'}, h('td', {colspan: COLUMNS.length}, 'no device matches the filter')));
    } else {
      const rows = shown.map((d) => this.row(d, now));
      const current = this.body.children;
      if (current.length !== rows.length || rows.some((tr, i) => current[i] !== tr)) this.body.replaceChildren(...rows);
    }
    return shown.length;
  }
}

function card(label, value, sub, cls) {
  return h('div', {class: ['card', cls]}, h('div', {class: 'card-label'}, label),
    h('div', {class: 'card-value', title: typeof value === 'string' ? value : null}, value),
    h('div', {class: 'card-sub', title: typeof sub === 'string' ? sub : null}, sub));
}

export function renderSummary(el, devices, rollouts) {
  const online = devices.filter((d) => d.online);
  const rates = online.map((d) => d.rate).filter(isNum);
  const p99s = online.map((d) => tel(d, 'latency_p99_ms')).filter(isNum).sort((a, b) => a - b);
  const mem = online.map((d) => tel(d, 'rss_bytes')).filter(isNum);
  const over = online.filter((d) => isNum(d.latency_budget_ms) && isNum(tel(d, 'latency_p99_ms'))
    && tel(d, 'latency_p99_ms') > d.latency_budget_ms).length;
  const models = new Map();
  for (const d of devices) if (d.model) {
    const k = `${d.model.name} v${d.model.version}`;
    models.set(k, (models.get(k) || 0) + 1);
  }
  const topModel = [...models.entries()].sort((a, b) => b[1] - a[1])[0];
  const active = (rollouts || []).filter((r) => !['completed', 'aborted', 'cancelled'].includes(r.state));
  const worst = p99s.length ? p99s[p99s.length - 1] : null;
  morph(el,
    card('Devices online', h('span', {dataset: {summary: 'online'}}, `${online.length} / ${devices.length}`),
      devices.length - online.length ? `${devices.length - online.length} offline` : 'all online',
      devices.length && online.length < devices.length ? 'warn' : 'good'),
    card('Throughput', h('span', {dataset: {summary: 'throughput'}},
      `${fmtNum(rates.reduce((a, b) => a + b, 0), 1)}`), 'inferences/s, whole fleet'),
    card('p99 latency', `${fmtNum(p99s.length ? p99s[Math.floor((p99s.length - 1) / 2)] : null, 2)} ms`,
      worst === null ? 'no telemetry' : over ? `${over} over budget · worst ${fmtNum(worst, 2)} ms`
        : `median · worst ${fmtNum(worst, 2)} ms`, over ? 'bad' : null),
    card('Memory', fmtBytes(mem.length ? mem.reduce((a, b) => a + b, 0) / mem.length : null), 'RSS, mean of devices'),
    card('Most served', topModel ? topModel[0] : '–',
      topModel ? `${topModel[1]} devices · ${models.size} model${models.size > 1 ? 's' : ''} in use` : 'no device serves a model',
      'text'),
    card('Rollouts', String(active.length), active.length ? active.map((r) => r.state).join(', ') : 'none running',
      active.some((r) => r.state === 'aborting') ? 'bad' : null));
}
