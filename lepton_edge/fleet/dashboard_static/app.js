// The dashboard: polls the controller every few seconds and redraws.
import {ApiError, getJson, getToken, setToken} from './api.js';
import {DeviceDetail} from './detail.js';
import {DeviceTable, Throughput, renderSummary} from './devices.js';
import {fill, fmtClock, h} from './dom.js';
import {RolloutList} from './rollouts.js';

const REFRESH_MS = 3000;
const $ = (id) => document.getElementById(id);

class Dashboard {
  constructor() {
    this.devices = [];
    this.rollouts = null;
    this.throughput = new Throughput();
    this.timer = null;
    this.running = false;
    this.waitingForToken = false;
    this.lastError = null;
    this.table = new DeviceTable($('devices'), {onSelect: (id) => this.select(id)});
    this.detail = new DeviceDetail($('device-detail'), {onClose: () => this.select(null), onError: (e) => this.fail(e)});
    this.rolloutList = new RolloutList($('rollouts'), {onError: (e) => this.fail(e)});
    $('filter').addEventListener('input', (ev) => {
      this.table.filter = ev.target.value.trim();
      this.showCount(this.table.render());
    });
    $('token-form').addEventListener('submit', (ev) => this.submitToken(ev));
    $('token-dialog').addEventListener('cancel', () => this.tokenCancelled());
    $('token-again').addEventListener('click', () => this.askToken(null));
    $('forget-token').addEventListener('click', () => { setToken(null); this.showTokenState(); this.tick(); });
    document.addEventListener('visibilitychange', () => { if (!document.hidden) this.tick(); });
    const fromHash = decodeURIComponent(location.hash.replace(/^#device=/, '')) || null;
    this.selected = location.hash.startsWith('#device=') ? fromHash : null;
    this.table.selected = this.selected;
    this.showTokenState();
  }

  select(id) {
    this.selected = id === this.selected ? null : id;
    this.table.selected = this.selected;
    history.replaceState(null, '', this.selected ? `#device=${encodeURIComponent(this.selected)}` : location.pathname);
    this.table.render();
    if (this.selected) {
      this.detail.show(this.selected, this.devices.find((d) => d.device === this.selected));
      $('device-detail').scrollIntoView({block: 'nearest', behavior: 'smooth'});
    } else {
      this.detail.hide();
    }
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.tick(), REFRESH_MS);
  }

  async tick() {
    if (this.running || this.waitingForToken) return;
    this.running = true;
    clearTimeout(this.timer);
    try {
      await this.refresh();
      this.ok();
    } catch (err) {
      this.fail(err);
    } finally {
      this.running = false;
      if (!this.waitingForToken) this.schedule();
    }
  }

  async refresh() {
    const [, devices, rollouts] = await Promise.all([
      getJson('/v1/health').then((health) => this.renderHealth(health), () => null), // needs no token
      getJson('/v1/devices'),
      getJson('/v1/rollouts').catch((err) => {
        if (err instanceof ApiError && err.status === 404) return null; // a controller without rollouts
        throw err;
      }),
    ]);
    this.devices = (devices.devices || []).map((d) => ({...d, rate: this.throughput.rate(d)}));
    this.rollouts = rollouts === null ? null : Array.isArray(rollouts) ? rollouts : rollouts.rollouts || [];
    this.showCount(this.table.update(this.devices));
    renderSummary($('summary'), this.devices, this.rollouts);
    await Promise.all([
      this.rolloutList.update(this.rollouts),
      this.selected ? this.detail.show(this.selected, this.devices.find((d) => d.device === this.selected)) : null,
    ]);
    $('updated').textContent = `updated ${fmtClock(Date.now() / 1000)}`;
    document.body.dataset.loaded = 'true';
  }

  renderHealth(health) {
    if (!health) return;
    $('fleet-name').textContent = health.fleet || '';
    const conn = $('broker');
    conn.className = `conn ${health.broker_connected ? 'ok' : 'bad'}`;
    conn.title = health.broker || '';
    fill(conn, h('i', {class: 'dot'}), health.broker_connected ? 'broker connected' : 'broker disconnected');
  }

  showCount(shown) {
    const total = this.devices.length;
    $('device-count').textContent = shown === total ? `${total}` : `${shown} of ${total}`;
  }

  ok() {
    this.lastError = null;
    $('error').hidden = true;
  }

  fail(err) {
    if (err instanceof ApiError && err.status === 401) {
      this.askToken(getToken() ? 'The controller refused that token.' : null);
      return;
    }
    this.lastError = err;
    const banner = $('error');
    banner.textContent = err instanceof ApiError && err.status === 0
      ? 'The controller cannot be reached; retrying…' : `Error: ${err.message}`;
    banner.hidden = false;
  }

  askToken(problem) {
    this.waitingForToken = true;
    clearTimeout(this.timer);
    $('token-problem').textContent = problem || '';
    $('token-problem').hidden = !problem;
    $('token-needed').hidden = true;
    $('updated').textContent = 'waiting for the API token';
    const dialog = $('token-dialog');
    if (!dialog.open) dialog.showModal();
    $('token-input').focus();
  }

  submitToken(ev) {
    ev.preventDefault(); // never a form submission: the token must not reach a URL
    const input = $('token-input');
    const token = input.value.trim();
    if (!token) return;
    setToken(token);
    input.value = '';
    $('token-dialog').close();
    this.waitingForToken = false;
    this.showTokenState();
    this.tick();
  }

  tokenCancelled() {
    $('token-needed').hidden = false; // the banner's button opens the form again
  }

  showTokenState() {
    $('forget-token').hidden = !getToken();
  }
}

new Dashboard().tick();
