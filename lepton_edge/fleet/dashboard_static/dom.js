// DOM building without HTML strings: every text goes in through a text node (escaped by construction).

const SVG_NS = 'http://www.w3.org/2000/svg';

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function setProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.setAttribute('class', Array.isArray(value) ? value.filter(Boolean).join(' ') : value);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  return el;
}

/** An HTML element: h('td', {class: 'num'}, 'text', otherNode). */
export function h(tag, props, ...children) {
  return append(setProps(document.createElement(tag), props), children);
}

/** An SVG element. */
export function s(tag, props, ...children) {
  return append(setProps(document.createElementNS(SVG_NS, tag), props), children);
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

function sameShell(a, b) {
  if (a.nodeType !== b.nodeType || a.nodeName !== b.nodeName) return false;
  if (a.nodeType !== Node.ELEMENT_NODE) return true;
  if (a.attributes.length !== b.attributes.length) return false;
  for (const {name, value} of b.attributes) if (a.getAttribute(name) !== value) return false;
  return true;
}

/** Make el's children look like `children`, keeping every existing node whose tag and attributes are
 * unchanged (only their text and descendants are updated): a refresh then does not take away the row
 * under the mouse, its focus or a click in progress. The kept nodes keep their listeners, so a node's
 * listeners must depend only on its attributes (as data-device does for a row). */
export function morph(el, ...children) {
  const next = append(document.createDocumentFragment(), children).childNodes;
  const nodes = [...next];
  const old = [...el.childNodes];
  nodes.forEach((node, i) => {
    const prev = old[i];
    if (prev && sameShell(prev, node)) {
      if (prev.nodeType === Node.ELEMENT_NODE) morph(prev, [...node.childNodes]);
      else if (prev.nodeValue !== node.nodeValue) prev.nodeValue = node.nodeValue;
      nodes[i] = prev;
    }
  });
  nodes.forEach((node, i) => {
    if (el.childNodes[i] !== node) el.insertBefore(node, el.childNodes[i] || null);
  });
  while (el.childNodes.length > nodes.length) el.lastChild.remove();
  return el;
}

export const isNum = (v) => typeof v === 'number' && Number.isFinite(v);

export function fmtNum(v, digits) {
  return isNum(v) ? v.toFixed(digits) : '–';
}

/** Like lepton_edge.console.human_bytes: exact bytes below 1 KiB, else one decimal. */
export function fmtBytes(n) {
  if (!isNum(n)) return '–';
  if (Math.abs(n) < 1024) return `${Math.trunc(n)} B`;
  for (const unit of ['KiB', 'MiB', 'GiB']) {
    n /= 1024;
    if (Math.abs(n) < 1024 || unit === 'GiB') return `${n.toFixed(1)} ${unit}`;
  }
  return '–';
}

export function fmtAgo(ts, now) {
  if (!isNum(ts) || ts <= 0) return '–';
  const secs = Math.max(0, now - ts);
  if (secs < 60) return `${secs.toFixed(secs < 10 ? 1 : 0)} s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
  if (secs < 86400) return `${(secs / 3600).toFixed(1)} h ago`;
  return `${(secs / 86400).toFixed(1)} d ago`;
}

export function fmtClock(ts, withSeconds = true) {
  if (!isNum(ts)) return '–';
  const d = new Date(ts * 1000);
  const pad = (x) => String(x).padStart(2, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}${withSeconds ? ':' + pad(d.getSeconds()) : ''}`;
}

const DATE_TIME = new Intl.DateTimeFormat(undefined, {dateStyle: 'medium', timeStyle: 'medium'}); // made once: slow to make

export function fmtDate(ts) {
  return isNum(ts) ? DATE_TIME.format(new Date(ts * 1000)) : '–';
}

export function fmtDuration(secs) {
  if (!isNum(secs)) return '–';
  if (secs < 120) return `${Math.round(secs)} s`;
  if (secs < 7200) return `${Math.round(secs / 60)} min`;
  return `${(secs / 3600).toFixed(1)} h`;
}
