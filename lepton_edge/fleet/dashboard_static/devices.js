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

function row(d, now, selected, onSelect) {
  const t = d.telemetry || {};
  const budget = isNum(d.latency_budget_ms) ? d.latency_budget_ms : null;
  const p99 = tel(d, 'latency_p99_ms');
  const over = budget !== null && p99 !== null && p99 > budget;
  const cell = (key, value, text, props = {}) =>
    h('td', {...props, dataset: {col: key, value: value === null || value === undefined ? '' : String(value)}}, text);
  const tags = Array.isArray(d.tags) ? d.tags : [];
  return h('tr', {
    class: [!d.online && 'offline', selected && 'selected'],
    dataset: {device: d.device}, tabindex: '0', 'aria-selected': selected ? 'true' : 'false',
    onclick: () => onSelect(d.device),
    onkeydown: (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); onSelect(d.device); } },
  },
  cell('device', d.device, [h('span', {class: 'dev-id'}, d.device),
    ...tags.slice(0, 3).map((tag) => h('span', {class: 'tag'}, tag)),
    tags.length > 3 ? h('span', {class: 'tag muted', title: tags.slice(3).join(' ')}, `+${tags.length - 3}`) : null]),
  cell('online', d.online ? 'online' : 'offline',
    h('span', {class: ['pill', d.online ? 'ok' : 'off'], title: d.online ? null : d.offline_reason || null},
      d.online ? 'online' : 'offline')),
  cell('model', d.model ? `${d.model.name} v${d.model.version}` : '',
    d.model ? [h('span', {class: 'model-name'}, d.model.name), h('span', {class: 'ver'}, ` v${d.model.version}`)]
      : h('span', {class: 'muted'}, 'none'),
    {title: d.model ? `sha256 ${d.model.sha256}${d.model.slot ? ', slot ' + d.model.slot : ''}` : null}),
  cell('p50', tel(d, 'latency_p50_ms'), fmtNum(t.latency_p50_ms, 2), {class: 'num'}),
  cell('p99', p99, fmtNum(p99, 2),
    {class: ['num', over && 'over'], title: budget !== null ? `latency budget ${fmtNum(budget, 2)} ms` : null}),
  cell('throughput', d.rate, fmtNum(d.rate, 1), {class: 'num'}),
  cell('memory', tel(d, 'rss_bytes'), fmtBytes(t.rss_bytes), {class: 'num'}),
  cell('last_seen', d.last_seen, fmtAgo(d.last_seen, now), {class: 'num', title: fmtDate(d.last_seen)}),
  cell('ota', d.ota ? d.ota.state : '', d.ota ? h('span', {class: ['ota', OTA_CLASS[d.ota.state] || 'busy'],
    title: d.ota.reason || null}, otaText(d.ota)) : ''));
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
    this.render();
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
      morph(this.body, shown.map((d) => row(d, now, d.device === this.selected, this.onSelect)));
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
