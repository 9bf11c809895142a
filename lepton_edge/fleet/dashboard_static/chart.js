// A small SVG line chart over time: several series, gaps where the data stops, a hover read-out.
import {fmtClock, fmtNum, h, isNum, s} from './dom.js';

const M = {left: 46, right: 12, top: 10, bottom: 22};
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400];

function niceStep(span, count) {
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * mag;
}

function median(values) {
  if (!values.length) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** Index of the point whose time is closest to t (points sorted by time). */
function nearest(points, t) {
  let lo = 0, hi = points.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (points[mid][0] < t) lo = mid; else hi = mid;
  }
  return Math.abs(points[lo][0] - t) <= Math.abs(points[hi][0] - t) ? lo : hi;
}

export class LineChart {
  /** root: an empty element; options: {title, unit, digits, height}. */
  constructor(root, {title, unit = '', digits = 1, height = 168} = {}) {
    this.opts = {title, unit, digits, height};
    this.series = [];
    this.hoverT = null;
    this.legend = h('div', {class: 'legend'});
    this.plot = h('div', {class: 'plot'});
    this.tip = h('div', {class: 'tip', hidden: true});
    root.classList.add('chart');
    root.replaceChildren(h('div', {class: 'chart-head'}, h('span', {class: 'chart-title'}, title), this.legend),
      this.plot);
    this.plot.append(this.tip);
    this.plot.addEventListener('pointermove', (ev) => this.hover(ev));
    this.plot.addEventListener('pointerleave', () => { this.hoverT = null; this.drawHover(); });
    this.width = 0;
    new ResizeObserver(() => {
      const w = Math.round(this.plot.clientWidth);
      if (w && w !== this.width) { this.width = w; this.render(); }
    }).observe(this.plot);
  }

  /** series: [{name, cls, points: [[unixSeconds, value], ...] sorted by time}] */
  update(series) {
    this.series = series.map((x) => ({...x, points: x.points.filter((p) => isNum(p[0]) && isNum(p[1]))}));
    this.renderLegend();
    this.render();
  }

  fmt(v) {
    const unit = this.opts.unit;
    return `${fmtNum(v, this.opts.digits)}${unit ? (unit.startsWith('/') ? unit : ' ' + unit) : ''}`;
  }

  renderLegend() {
    this.legend.replaceChildren(...this.series.map((x) => {
      const last = x.points.length ? x.points[x.points.length - 1][1] : null;
      return h('span', {class: 'key'}, h('i', {class: `swatch ${x.cls}`}), `${x.name} `,
        h('b', {dataset: {series: x.name}}, last === null ? '–' : this.fmt(last)));
    }));
  }

  render() {
    const W = this.width || Math.round(this.plot.clientWidth) || 480;
    const H = this.opts.height;
    const iw = W - M.left - M.right, ih = H - M.top - M.bottom;
    const all = this.series.flatMap((x) => x.points);
    const svg = s('svg', {class: 'chart-svg', width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img',
      'aria-label': this.opts.title,
      dataset: {points: String(this.series.length ? this.series[0].points.length : 0)}});
    this.svg = svg;
    this.geom = null;
    if (!all.length) {
      svg.append(s('text', {class: 'empty', x: W / 2, y: H / 2, 'text-anchor': 'middle'}, 'no telemetry in this window'));
      this.plot.replaceChildren(svg, this.tip);
      this.tip.hidden = true;
      return;
    }
    let t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
    if (t1 - t0 < 1) { t0 -= 0.5; t1 += 0.5; }
    let lo = Math.min(0, ...all.map((p) => p[1])), hi = Math.max(...all.map((p) => p[1]));
    if (hi <= lo) hi = lo + 1;
    hi += (hi - lo) * 0.08; // headroom: a flat line does not run along the top edge
    const step = niceStep(hi - lo, 4);
    lo = Math.floor(lo / step) * step;
    hi = Math.ceil(hi / step) * step;
    const x = (t) => M.left + ((t - t0) / (t1 - t0)) * iw;
    const y = (v) => M.top + ih - ((v - lo) / (hi - lo)) * ih;
    this.geom = {x, y, t0, t1, iw};

    const grid = s('g', {class: 'grid'});
    const decimals = (String(Number(step.toPrecision(4))).split('.')[1] || '').length;
    for (let v = lo; v <= hi + step / 2; v += step) {
      grid.append(s('line', {x1: M.left, x2: M.left + iw, y1: y(v), y2: y(v)}),
        s('text', {class: 'ylab', x: M.left - 6, y: y(v) + 3.5, 'text-anchor': 'end'}, v.toFixed(decimals)));
    }
    const span = t1 - t0;
    const tstep = TIME_STEPS.find((st) => span / st <= Math.max(2, Math.floor(iw / 90))) || 86400;
    for (let t = Math.ceil(t0 / tstep) * tstep; t <= t1; t += tstep) {
      if (x(t) < M.left + 24 || x(t) > W - M.right - 24) continue; // a label there would run off the plot
      grid.append(s('line', {class: 'xtick', x1: x(t), x2: x(t), y1: M.top + ih, y2: M.top + ih + 4}),
        s('text', {class: 'xlab', x: x(t), y: H - 6, 'text-anchor': 'middle'}, fmtClock(t, tstep < 60)));
    }
    grid.append(s('line', {class: 'axis', x1: M.left, x2: M.left + iw, y1: M.top + ih, y2: M.top + ih}));
    svg.append(grid);

    // Break a line where the data stops for much longer than its usual interval (device offline).
    const dts = [];
    for (const ser of this.series) for (let i = 1; i < ser.points.length; i++) dts.push(ser.points[i][0] - ser.points[i - 1][0]);
    const gap = Math.max(3 * median(dts), 5);
    this.series.forEach((ser, k) => {
      let line = '', area = '', segStart = null, prevT = null;
      const base = y(Math.max(lo, 0)).toFixed(1);
      ser.points.forEach(([t, v], i) => {
        const px = x(t).toFixed(1), py = y(v).toFixed(1);
        const broken = i === 0 || t - prevT > gap;
        if (broken && segStart !== null && k === 0) area += `L${x(prevT).toFixed(1)} ${base}Z`;
        if (broken) segStart = px;
        line += `${broken ? 'M' : 'L'}${px} ${py}`;
        if (k === 0) area += broken ? `M${px} ${base}L${px} ${py}` : `L${px} ${py}`;
        prevT = t;
      });
      if (k === 0 && prevT !== null) {
        area += `L${x(prevT).toFixed(1)} ${base}Z`;
        svg.append(s('path', {class: `area ${ser.cls}`, d: area}));
      }
      if (ser.points.length === 1) {
        const [t, v] = ser.points[0];
        svg.append(s('circle', {class: `dot ${ser.cls}`, cx: x(t), cy: y(v), r: 2.5}));
      }
      svg.append(s('path', {class: `line ${ser.cls}`, d: line,
        dataset: {series: ser.name, count: String(ser.points.length)}}));
    });
    this.hoverLayer = s('g', {class: 'hover'});
    svg.append(this.hoverLayer);
    this.plot.replaceChildren(svg, this.tip);
    this.drawHover();
  }

  hover(ev) {
    if (!this.geom) return;
    const rect = this.svg.getBoundingClientRect();
    const px = ev.clientX - rect.left;
    const {t0, t1, iw} = this.geom;
    this.hoverT = t0 + Math.min(1, Math.max(0, (px - M.left) / iw)) * (t1 - t0);
    this.drawHover();
  }

  drawHover() {
    if (!this.geom || !this.hoverLayer) return;
    this.hoverLayer.replaceChildren();
    const first = this.series.find((x) => x.points.length);
    if (this.hoverT === null || !first) { this.tip.hidden = true; return; }
    const {x, y} = this.geom;
    const t = first.points[nearest(first.points, this.hoverT)][0];
    const H = this.opts.height;
    this.hoverLayer.append(s('line', {class: 'guide', x1: x(t), x2: x(t), y1: M.top, y2: H - M.bottom}));
    const rows = [h('div', {class: 'tip-time'}, fmtClock(t))];
    for (const ser of this.series) {
      if (!ser.points.length) continue;
      const [pt, pv] = ser.points[nearest(ser.points, t)];
      this.hoverLayer.append(s('circle', {class: `dot ${ser.cls}`, cx: x(pt), cy: y(pv), r: 3}));
      rows.push(h('div', null, h('i', {class: `swatch ${ser.cls}`}), `${ser.name} `, h('b', null, this.fmt(pv))));
    }
    this.tip.replaceChildren(...rows);
    this.tip.hidden = false;
    const left = x(t) + 12, w = this.width || 480;
    this.tip.style.left = `${left + 150 > w ? x(t) - 150 : left}px`;
    this.tip.style.top = `${M.top}px`;
  }
}
