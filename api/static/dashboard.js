/* Qui Pipeline dashboard: plain JavaScript, no build step.
 *
 * Reads the SPEC §5 query API of the same origin with `Authorization: Bearer <read key>`;
 * the key is asked for once and kept in localStorage. Charts use plotly.js, which the API
 * serves from the installed `plotly` Python package (/static/plotly.min.js).
 *
 * Every number a test checks is written into the DOM as text under a stable
 * `data-testid`; raw values are also kept in `data-value`. Sections load independently:
 * one failing endpoint shows its error (section note + the banner at the top) and the
 * others still render. `body[data-state]` is `loading`, `ready` or `error` for the last
 * full load; each section card has its own `data-state`.
 */
(() => {
  'use strict';

  const KEY_STORAGE = 'quip.readKey';
  const PROJECT_STORAGE = 'quip.project';
  const DAY_MS = 86400000;
  const EVENT_TYPE_RE = /^[a-z][a-z0-9_.]{0,63}$/;
  const PROP_KEY_RE = /^[A-Za-z0-9_.$-]{1,64}$/;
  const MAX_WINDOW_SECONDS = 14 * 86400;
  const KNOWN_TYPES = [
    'page_view', 'session_start', 'session_end', 'gesture',
    'playback_request', 'playback_start', 'playback_heartbeat', 'playback_rebuffer',
    'playback_quality_change', 'playback_error', 'playback_end',
  ];
  const PALETTE = [
    '#2563eb', '#16a34a', '#f59e0b', '#db2777', '#7c3aed',
    '#0891b2', '#dc2626', '#65a30d', '#ea580c', '#475569',
  ];
  const SECTION_TITLES = {
    key: 'Read key',
    controls: 'Selection',
    charts: 'Charts',
    active: 'Active users',
    schema: 'Schema discovery',
    insight: 'Insight',
    retention: 'Retention',
    lifecycle: 'Lifecycle',
    stickiness: 'Stickiness',
    sessions: 'Sessions',
    funnel: 'Funnel',
    predefined: 'Predefined funnels',
    playback: 'Playback quality',
    events: 'Events by type',
    services: 'Service metrics',
  };
  // Which card shows a section's busy/error state.
  const SECTION_CARDS = {
    active: 'active', schema: 'insight', insight: 'insight', retention: 'retention',
    lifecycle: 'lifecycle', stickiness: 'stickiness', sessions: 'sessions',
    funnel: 'funnels', predefined: 'funnels',
    playback: 'playback', events: 'events', services: 'services',
  };
  const SERVICE_LABELS = {
    social_delivered: 'Social delivered',
    content_published: 'Content published',
    encoding_queued: 'Encodes queued',
    encoding_succeeded: 'Encodes succeeded',
    encoding_failed: 'Encodes failed',
    encode_ms_p95: 'Encode p95',
    emails_sent: 'Emails sent',
    emails_failed: 'Emails failed',
  };

  // ------------------------------------------------------------------ small helpers
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'class') node.className = value;
      else if (name === 'text') node.textContent = value;
      else if (name === 'testid') node.dataset.testid = value;
      else if (name.startsWith('on') && typeof value === 'function') {
        node.addEventListener(name.slice(2), value);
      } else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const intFormat = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
  const fmt = {
    // Integers with thousands separators: 12,345.
    int: (v) => (v === null || v === undefined ? '—' : intFormat.format(v)),
    // Ratios 0..1 as a percentage with fixed decimals (Number.toFixed rounding).
    pct: (v, digits = 1) => (v === null || v === undefined ? '—' : `${(v * 100).toFixed(digits)}%`),
    ms: (v) => (v === null || v === undefined ? '—' : `${intFormat.format(Math.round(v))} ms`),
    fixed: (v, digits) => (v === null || v === undefined ? '—' : v.toFixed(digits)),
    kbps: (v) => (v === null || v === undefined ? '—' : `${intFormat.format(Math.round(v))} kbps`),
  };

  function setValue(node, value, text) {
    if (!node) return;
    node.textContent = text;
    if (value === null || value === undefined) node.removeAttribute('data-value');
    else node.dataset.value = String(value);
  }

  function byTestId(id) {
    return document.querySelector(`[data-testid="${CSS.escape(id)}"]`);
  }

  function storageGet(name) {
    try { return window.localStorage.getItem(name); } catch { return null; }
  }
  function storageSet(name, value) {
    try {
      if (value === null) window.localStorage.removeItem(name);
      else window.localStorage.setItem(name, value);
    } catch { /* private mode: the key lives for this page only */ }
  }

  function todayUtc() {
    return new Date(Math.floor(Date.now() / DAY_MS) * DAY_MS);
  }
  function isoDay(date) {
    return date.toISOString().slice(0, 10);
  }
  function addDays(date, days) {
    return new Date(date.getTime() + days * DAY_MS);
  }
  function parseDay(text) {
    return /^\d{4}-\d{2}-\d{2}$/.test(text) ? new Date(`${text}T00:00:00Z`) : null;
  }
  // "2026-10-01T13:00:00Z" -> "2026-10-01 13:00:00": plotly takes wall-clock strings, and
  // every time here is UTC.
  function plotTime(t) {
    return String(t).replace('T', ' ').replace(/Z$/, '');
  }

  function humanSeconds(total) {
    if (!Number.isFinite(total) || total <= 0) return '';
    const parts = [];
    const units = [['day', 86400], ['h', 3600], ['min', 60], ['s', 1]];
    let rest = Math.floor(total);
    for (const [name, size] of units) {
      const n = Math.floor(rest / size);
      if (n) parts.push(name === 'day' ? `${n} day${n === 1 ? '' : 's'}` : `${n} ${name}`);
      rest -= n * size;
    }
    return `= ${parts.join(' ')}`;
  }

  // ------------------------------------------------------------------ state
  const state = {
    key: storageGet(KEY_STORAGE) || '',
    project: 'default',
    from: '',
    to: '',
    funnel: null, // what the funnel card shows: {kind: 'builder'} | {kind: 'predefined', name}
    insight: null, // the trends body (without the range) of the insight shown
    insightResult: null, // its answer's series
    tokens: {},
    busy: new Set(), // sections loading now
    errors: new Map(), // section -> message
    loads: 0,
    // Set while the Load button's requests go out: the user asked for the stores' numbers,
    // not the API's cache (SPEC §5, `Cache-Control: no-cache`).
    noCache: false,
  };

  // ------------------------------------------------------------------ API client
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== '') search.set(name, value);
    }
    return search.toString();
  }

  function describeError(status, data, fallback) {
    let detail = data && typeof data === 'object' ? (data.detail ?? data.error ?? data.message) : null;
    if (Array.isArray(detail)) {
      detail = detail.map((item) => {
        if (!item || typeof item !== 'object') return String(item);
        const where = Array.isArray(item.loc)
          ? item.loc.filter((part) => part !== 'body' && part !== 'query').join('.')
          : '';
        return where ? `${where}: ${item.msg}` : String(item.msg ?? JSON.stringify(item));
      }).join('; ');
    } else if (detail && typeof detail === 'object') {
      detail = JSON.stringify(detail);
    }
    detail = detail ? String(detail) : fallback;
    if (status === 401) {
      return `401: the read key was rejected${detail ? ` (${detail})` : ''}. Enter a valid read key for this project.`;
    }
    if (status === 403) return `403: this key may not read project "${state.project}"${detail ? ` (${detail})` : ''}.`;
    return `${status}: ${detail || 'request failed'}`;
  }

  async function api(path, { method = 'GET', body } = {}) {
    const headers = { Accept: 'application/json' };
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    if (state.noCache) headers['Cache-Control'] = 'no-cache';
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new ApiError(0, `the API is not reachable (${error.message})`);
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = null; }
    }
    if (!response.ok) {
      const fallback = text && data === null ? text.slice(0, 200) : response.statusText;
      throw new ApiError(response.status, describeError(response.status, data, fallback));
    }
    if (data === null) throw new ApiError(response.status, `${path.split('?')[0]} did not answer JSON`);
    return data;
  }

  const rangeParams = () => ({ project: state.project, from: state.from, to: state.to });

  // ------------------------------------------------------------------ errors and status
  function renderBanner() {
    const banner = $('#banner');
    const list = $('#banner-list');
    list.replaceChildren();
    if (!state.errors.size) {
      banner.hidden = true;
      return;
    }
    // One line per distinct message (a bad key fails every section the same way).
    const byMessage = new Map();
    const order = Object.keys(SECTION_TITLES);
    const entries = [...state.errors].sort((a, b) => order.indexOf(a[0]) - order.indexOf(b[0]));
    for (const [section, message] of entries) {
      if (!byMessage.has(message)) byMessage.set(message, []);
      byMessage.get(message).push(SECTION_TITLES[section] || section);
    }
    for (const [message, sections] of byMessage) {
      list.append(el('li', {}, el('span', { class: 'banner-where', text: `${sections.join(', ')}: ` }), message));
    }
    const unauthorized = [...state.errors.values()].some((m) => m.startsWith('401'));
    const inputOnly = [...state.errors.keys()].every((name) => name === 'key' || name === 'controls');
    $('#banner-title').textContent = unauthorized ? 'The read key was not accepted'
      : (inputOnly ? 'Check the selection' : 'Some data could not be loaded');
    banner.hidden = false;
  }

  function sectionError(section, message) {
    if (message) state.errors.set(section, message);
    else state.errors.delete(section);
    const note = $(`[data-section-error="${section === 'predefined' ? 'funnel' : section}"]`);
    if (note && section !== 'predefined') {
      note.textContent = message || '';
      note.hidden = !message;
    }
    renderBanner();
  }

  // Forget the errors of earlier loads (a missing chart library stays reported).
  function clearErrors() {
    for (const section of [...state.errors.keys()]) {
      if (section !== 'charts') state.errors.delete(section);
    }
  }

  function setStatus(text) {
    $('#status').textContent = text;
  }

  // A card's state covers all of its sections (the funnels card has two): `loading` while
  // any loads, else `error` if any failed, else `ready`.
  function updateCard(cardId) {
    const card = document.getElementById(cardId);
    const sections = Object.keys(SECTION_CARDS).filter((name) => SECTION_CARDS[name] === cardId);
    const busy = sections.some((name) => state.busy.has(name));
    if (busy) card.setAttribute('aria-busy', 'true');
    else card.removeAttribute('aria-busy');
    card.dataset.state = busy ? 'loading' : (sections.some((name) => state.errors.has(name)) ? 'error' : 'ready');
  }

  // Runs one section's load; a newer load of the same section makes an older one moot.
  // Resolves to false when the section failed (its error is shown), never rejects.
  async function runSection(section, work) {
    const token = (state.tokens[section] || 0) + 1;
    state.tokens[section] = token;
    const cardId = SECTION_CARDS[section];
    const current = () => state.tokens[section] === token;
    state.busy.add(section);
    updateCard(cardId);
    try {
      await work(current);
      if (current()) sectionError(section, null);
      return true;
    } catch (error) {
      if (!current()) return true;
      const message = error instanceof ApiError ? error.message : `unexpected error: ${error.message}`;
      if (!(error instanceof ApiError)) console.error(error); // eslint-disable-line no-console
      sectionError(section, message);
      $$('.chart', document.getElementById(cardId)).forEach((chart) => {
        if (!chart.querySelector('.plot-container') && !chart.querySelector('.chart-note')) {
          chart.append(el('p', { class: 'chart-note', text: 'Not loaded: see the message below.' }));
        }
      });
      if (error instanceof ApiError && error.status === 401 && $('#key-entry').hidden) showKeyEntry(true);
      return false;
    } finally {
      if (current()) {
        state.busy.delete(section);
        updateCard(cardId);
      }
    }
  }

  // ------------------------------------------------------------------ charts
  const BASE_LAYOUT = {
    autosize: true,
    margin: { l: 56, r: 24, t: 12, b: 40 },
    paper_bgcolor: 'rgba(0,0,0,0)',
    plot_bgcolor: 'rgba(0,0,0,0)',
    font: { family: 'Inter, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif', size: 12, color: '#334155' },
    colorway: PALETTE,
    legend: { orientation: 'h', x: 0, y: 1.02, yanchor: 'bottom', bgcolor: 'rgba(0,0,0,0)' },
    hovermode: 'x unified',
    hoverlabel: { bgcolor: '#ffffff', bordercolor: '#cbd5e1', font: { color: '#0f172a' } },
    xaxis: { gridcolor: '#eef2f7', linecolor: '#cbd5e1', automargin: true },
    yaxis: { gridcolor: '#eef2f7', zeroline: false, rangemode: 'tozero', automargin: true },
  };
  const PLOT_CONFIG = {
    displaylogo: false,
    responsive: true,
    modeBarButtonsToRemove: ['lasso2d', 'select2d', 'autoScale2d', 'toggleSpikelines'],
    toImageButtonOptions: { format: 'png', scale: 2 },
  };

  function merge(base, extra) {
    const out = { ...base };
    for (const [name, value] of Object.entries(extra || {})) {
      out[name] = value && typeof value === 'object' && !Array.isArray(value)
        && base[name] && typeof base[name] === 'object' ? merge(base[name], value) : value;
    }
    return out;
  }

  function plot(container, traces, layout, emptyText = 'No data in this range.') {
    const hasData = traces.some((trace) => (trace.x || trace.y || []).length > 0);
    $$('.chart-note', container).forEach((node) => node.remove());
    if (!window.Plotly) {
      container.append(el('p', { class: 'chart-note', text: 'Chart library unavailable: numbers are still shown in the tables.' }));
      return;
    }
    if (!hasData) {
      window.Plotly.purge(container);
      container.append(el('p', { class: 'chart-note', text: emptyText }));
      return;
    }
    window.Plotly.react(container, traces, merge(BASE_LAYOUT, layout), PLOT_CONFIG);
  }

  // ------------------------------------------------------------------ active users
  function loadActive() {
    return runSection('active', async (current) => {
      const rows = await api(`/v1/metrics/active-users?${query(rangeParams())}`);
      if (!current()) return;
      const last = rows.length ? rows[rows.length - 1] : null;
      setValue(byTestId('active-latest-day'), last && last.day, last ? last.day : '—');
      setValue(byTestId('dau-latest'), last && last.dau, fmt.int(last && last.dau));
      setValue(byTestId('wau-latest'), last && last.wau, fmt.int(last && last.wau));
      setValue(byTestId('mau-latest'), last && last.mau, fmt.int(last && last.mau));
      setValue(byTestId('stickiness-latest'), last && last.stickiness, fmt.pct(last && last.stickiness));
      const days = rows.map((r) => r.day);
      const line = (name, key, color, extra = {}) => ({
        type: 'scatter', mode: 'lines', name, x: days, y: rows.map((r) => r[key]),
        line: { color, width: 2, shape: 'linear' }, hovertemplate: '%{y:,}', ...extra,
      });
      plot($('#active-chart'), [
        line('DAU', 'dau', PALETTE[0], { fill: 'tozeroy', fillcolor: 'rgba(37,99,235,0.08)' }),
        line('WAU', 'wau', PALETTE[1]),
        line('MAU', 'mau', PALETTE[4]),
        line('Stickiness', 'stickiness', PALETTE[2], {
          yaxis: 'y2', line: { color: PALETTE[2], width: 2, dash: 'dot' }, hovertemplate: '%{y:.1%}',
        }),
      ], {
        xaxis: { type: 'date', tickformat: '%b %d' },
        yaxis: { title: { text: 'users' } },
        yaxis2: {
          overlaying: 'y', side: 'right', tickformat: '.1~%', rangemode: 'tozero',
          showgrid: false, zeroline: false, title: { text: 'stickiness' },
        },
        margin: { r: 64 },
      });
    });
  }

  // ------------------------------------------------------------------ retention
  function retentionPeriod() {
    const checked = $('input[name="retention-period"]:checked');
    return checked ? checked.value : 'day';
  }

  function heatColor(share) {
    const alpha = 0.06 + 0.84 * Math.max(0, Math.min(1, share));
    return `rgba(37, 99, 235, ${alpha.toFixed(3)})`;
  }

  function loadRetention() {
    const period = retentionPeriod();
    return runSection('retention', async (current) => {
      const cohorts = await api(`/v1/metrics/retention?${query({ ...rangeParams(), period })}`);
      if (!current()) return;
      renderRetention(cohorts, period);
    });
  }

  function renderRetention(cohorts, period) {
    const table = $('#retention-table');
    table.dataset.period = period;
    const head = $('thead', table);
    const body = $('tbody', table);
    const foot = $('tfoot', table);
    const width = cohorts.reduce((n, c) => Math.max(n, c.retained.length), 0);
    const unit = period === 'week' ? 'Week' : 'Day';
    $('#retention-empty').hidden = cohorts.length > 0;
    table.hidden = cohorts.length === 0;

    table.style.minWidth = `${132 + width * 43}px`;
    $$('colgroup', table).forEach((node) => node.remove());
    $('caption', table).after(el('colgroup', {},
      el('col', { class: 'col-cohort' }), el('col', { class: 'col-size' }),
      Array.from({ length: width }, () => el('col', {}))));
    head.replaceChildren(
      el('tr', { class: 'group-row' },
        el('td', { colspan: 2, class: 'sticky-col' }),
        width ? el('th', { scope: 'colgroup', colspan: width, text: `${unit}s since the cohort's first event` }) : null),
      el('tr', {},
        el('th', { scope: 'col', class: 'sticky-col', text: period === 'week' ? 'Week of' : 'Cohort' }),
        el('th', { scope: 'col', class: 'num', text: 'Users' }),
        Array.from({ length: width }, (_, k) => el('th', { scope: 'col', 'aria-label': `${unit} ${k}`, text: String(k) }))));

    body.replaceChildren(...cohorts.map((cohort) => {
      const cells = Array.from({ length: width }, (_, k) => {
        if (k >= cohort.retained.length) return el('td', { class: 'future', 'aria-label': 'not started yet' });
        const users = cohort.retained[k];
        const share = cohort.size ? users / cohort.size : 0;
        const id = `${cohort.cohort}-${k}`;
        const cell = el('td', {
          class: `cell${share > 0.55 ? ' dark' : ''}`,
          testid: `retention-cell-${id}`,
          title: `${cohort.cohort}, ${unit.toLowerCase()} ${k}: ${fmt.int(users)} of ${fmt.int(cohort.size)} users (${fmt.pct(share)})`,
          style: `background-color: ${heatColor(share)}`,
        },
        el('span', { class: 'pct', testid: `retention-pct-${id}`, 'data-value': share, text: fmt.pct(share) }),
        el('span', { class: 'n', testid: `retention-users-${id}`, 'data-value': users, text: fmt.int(users) }));
        return cell;
      });
      return el('tr', { testid: `retention-row-${cohort.cohort}` },
        el('th', { scope: 'row', class: 'sticky-col', testid: `retention-cohort-${cohort.cohort}`, text: cohort.cohort }),
        el('td', { class: 'num size', testid: `retention-size-${cohort.cohort}`, 'data-value': cohort.size, text: fmt.int(cohort.size) }),
        cells);
    }));

    // Weighted mean over the cohorts that have reached period k.
    const averages = Array.from({ length: width }, (_, k) => {
      let users = 0;
      let size = 0;
      for (const cohort of cohorts) {
        if (k < cohort.retained.length) {
          users += cohort.retained[k];
          size += cohort.size;
        }
      }
      return size ? users / size : null;
    });
    const total = cohorts.reduce((n, c) => n + c.size, 0);
    foot.replaceChildren(cohorts.length ? el('tr', {},
      el('th', { scope: 'row', class: 'sticky-col', text: 'All cohorts' }),
      el('td', { class: 'num size', text: fmt.int(total) }),
      averages.map((share, k) => el('td', {
        class: `cell${share > 0.55 ? ' dark' : ''}`,
        testid: `retention-avg-${k}`,
        style: share === null ? undefined : `background-color: ${heatColor(share)}`,
      }, el('span', { class: 'pct', text: fmt.pct(share) })))) : '');
  }

  // ------------------------------------------------------------------ funnels
  function windowSeconds() {
    return Number($('#funnel-window').value);
  }

  function filterRow(filter = { key: '', value: '', type: 'text' }) {
    const type = el('select', { class: 'filter-type', 'aria-label': 'Value type' },
      el('option', { value: 'text', text: 'text' }),
      el('option', { value: 'number', text: 'number' }),
      el('option', { value: 'bool', text: 'true/false' }));
    type.value = filter.type;
    return el('li', { class: 'filter' },
      el('span', { class: 'filter-where', text: 'where' }),
      el('input', { class: 'filter-key', type: 'text', placeholder: 'prop', value: filter.key, spellcheck: 'false', autocomplete: 'off' }),
      el('span', { class: 'filter-eq', 'aria-hidden': 'true', text: '=' }),
      el('input', { class: 'filter-value', type: 'text', placeholder: 'value', value: filter.value, spellcheck: 'false', autocomplete: 'off' }),
      type,
      el('button', { type: 'button', class: 'btn btn-icon filter-remove', text: '×' }));
  }

  function stepRow(step = { event: '', filters: [] }) {
    return el('li', { class: 'funnel-step' },
      el('div', { class: 'step-main' },
        el('span', { class: 'step-num', 'aria-hidden': 'true' }),
        el('label', { class: 'sr-only step-label' }),
        el('input', {
          class: 'step-event', type: 'text', list: 'event-types', value: step.event,
          placeholder: 'event type', required: true, spellcheck: 'false', autocomplete: 'off',
        }),
        el('button', { type: 'button', class: 'btn btn-small step-add-filter', text: '+ filter' }),
        el('button', { type: 'button', class: 'btn btn-icon step-remove', text: '×' })),
      el('ul', { class: 'filters' }, step.filters.map(filterRow)));
  }

  // Ids, labels and test ids follow the step's position (1-based, like the result rows).
  function renumberSteps() {
    const steps = $$('#funnel-steps > li');
    steps.forEach((li, index) => {
      const n = index + 1;
      li.dataset.testid = `funnel-step-${n}`;
      $('.step-num', li).textContent = String(n);
      const input = $('.step-event', li);
      input.id = `funnel-step-event-${n}`;
      input.dataset.testid = `funnel-step-event-${n}`;
      const label = $('.step-label', li);
      label.htmlFor = input.id;
      label.textContent = `Step ${n} event type`;
      const add = $('.step-add-filter', li);
      add.dataset.testid = `funnel-step-add-filter-${n}`;
      add.setAttribute('aria-label', `Add a prop filter to step ${n}`);
      const remove = $('.step-remove', li);
      remove.dataset.testid = `funnel-step-remove-${n}`;
      remove.setAttribute('aria-label', `Remove step ${n}`);
      remove.disabled = steps.length <= 2;
      $$('.filter', li).forEach((filter, j) => {
        const m = j + 1;
        const key = $('.filter-key', filter);
        const value = $('.filter-value', filter);
        const type = $('.filter-type', filter);
        key.dataset.testid = `funnel-filter-key-${n}-${m}`;
        key.setAttribute('aria-label', `Step ${n} filter ${m} prop name`);
        value.dataset.testid = `funnel-filter-value-${n}-${m}`;
        value.setAttribute('aria-label', `Step ${n} filter ${m} value`);
        type.dataset.testid = `funnel-filter-type-${n}-${m}`;
        type.setAttribute('aria-label', `Step ${n} filter ${m} value type`);
        const drop = $('.filter-remove', filter);
        drop.dataset.testid = `funnel-filter-remove-${n}-${m}`;
        drop.setAttribute('aria-label', `Remove filter ${m} of step ${n}`);
      });
    });
    $('#funnel-add-step').disabled = steps.length >= 10;
  }

  function setBuilder(steps, seconds) {
    $('#funnel-steps').replaceChildren(...steps.map(stepRow));
    if (seconds) $('#funnel-window').value = String(seconds);
    updateWindowHint();
    renumberSteps();
  }

  function updateWindowHint() {
    $('#funnel-window-human').textContent = humanSeconds(windowSeconds());
  }

  // The builder's funnel as the API body, or throws an ApiError-like message naming the field.
  function readBuilder() {
    const problems = [];
    $$('#funnel-steps [aria-invalid]').forEach((node) => node.removeAttribute('aria-invalid'));
    const invalid = (node, message) => {
      node.setAttribute('aria-invalid', 'true');
      problems.push(message);
    };
    const steps = $$('#funnel-steps > li').map((li, index) => {
      const n = index + 1;
      const eventInput = $('.step-event', li);
      const event = eventInput.value.trim();
      if (!EVENT_TYPE_RE.test(event)) invalid(eventInput, `step ${n}: "${event}" is not an event type ([a-z][a-z0-9_.]*)`);
      const where = {};
      $$('.filter', li).forEach((filter) => {
        const keyInput = $('.filter-key', filter);
        const valueInput = $('.filter-value', filter);
        const key = keyInput.value.trim();
        const type = $('.filter-type', filter).value;
        const raw = valueInput.value.trim();
        if (!PROP_KEY_RE.test(key)) {
          invalid(keyInput, `step ${n}: "${key}" is not a prop name`);
          return;
        }
        if (type === 'number') {
          const number = Number(raw);
          if (raw === '' || !Number.isFinite(number)) invalid(valueInput, `step ${n}: ${key} must be a number`);
          else where[key] = number;
        } else if (type === 'bool') {
          if (!['true', 'false'].includes(raw.toLowerCase())) invalid(valueInput, `step ${n}: ${key} must be true or false`);
          else where[key] = raw.toLowerCase() === 'true';
        } else {
          where[key] = valueInput.value; // text is matched exactly, spaces included
        }
      });
      return Object.keys(where).length ? { event, where } : { event };
    });
    const seconds = windowSeconds();
    if (!Number.isInteger(seconds) || seconds < 1 || seconds > MAX_WINDOW_SECONDS) {
      // Sent anyway: the API's own 400 explains the limit.
      $('#funnel-window').setAttribute('aria-invalid', 'true');
    } else {
      $('#funnel-window').removeAttribute('aria-invalid');
    }
    if (problems.length) throw new ApiError(400, `check the funnel: ${problems.join('; ')}`);
    const breakdown = $('#funnel-breakdown').value;
    const body = { steps, window_seconds: seconds, from: state.from, to: state.to };
    return breakdown ? { ...body, breakdown: [breakdown] } : body;
  }

  function runBuilderFunnel() {
    return runSection('funnel', async (current) => {
      const body = readBuilder();
      state.funnel = { kind: 'builder' };
      const result = await api(`/v1/funnels/query?${query({ project: state.project })}`, { method: 'POST', body });
      if (!current()) return;
      const by = body.breakdown ? ` · by ${body.breakdown[0]}` : '';
      renderFunnel(result, `Builder: ${body.steps.map((s) => s.event).join(' → ')}${by}`, body.window_seconds);
      markPredefined(null);
    });
  }

  function runPredefinedFunnel(name) {
    return runSection('funnel', async (current) => {
      state.funnel = { kind: 'predefined', name };
      const result = await api(`/v1/funnels/${encodeURIComponent(name)}?${query(rangeParams())}`);
      if (!current()) return;
      const definition = predefinedByName.get(name);
      renderFunnel(result, `Predefined: ${name}`, definition && definition.window_seconds);
      markPredefined(name);
    });
  }

  function rerunFunnel() {
    if (state.funnel && state.funnel.kind === 'predefined') return runPredefinedFunnel(state.funnel.name);
    return runBuilderFunnel();
  }

  const FUNNEL_HEAD = ['#', 'Step', 'Users', 'From start', 'From previous', 'Median time', 'Avg time'];

  // One row of the funnel table; `id` prefixes the cells' test ids.
  function funnelRow(step, n, id, group) {
    const cell = (field, value, text, cls = 'num') => el('td', { class: cls, testid: `${id}-${field}-${n}`, 'data-value': value, text });
    return el('tr', { testid: `${id}-row-${n}` },
      group === undefined ? null : el('th', { scope: 'row', class: n === 1 ? '' : 'muted', text: n === 1 ? group : '' }),
      el('td', { class: 'muted', text: String(n) }),
      el('td', { testid: `${id}-name-${n}`, text: step.event }),
      cell('users', step.users, fmt.int(step.users), 'num strong'),
      cell('conv-start', step.conversion_from_start, fmt.pct(step.conversion_from_start)),
      cell('conv-prev', step.conversion_from_previous, fmt.pct(step.conversion_from_previous)),
      cell('median', step.median_time_to_convert_s, duration(step.median_time_to_convert_s)),
      cell('avg', step.avg_time_to_convert_s, duration(step.avg_time_to_convert_s)));
  }

  function renderFunnel(result, title, seconds) {
    const groups = Array.isArray(result.breakdown) ? result.breakdown : null;
    const steps = groups ? (groups[0] ? groups[0].steps : []) : (Array.isArray(result) ? result : (result.steps || []));
    $('#funnel-result-title').textContent = seconds ? `${title} · window ${humanSeconds(seconds).slice(2)}` : title;
    const table = $('#funnel-table');
    table.dataset.breakdown = groups ? 'yes' : 'no';
    $('thead', table).replaceChildren(el('tr', {},
      groups ? el('th', { scope: 'col', text: 'Group' }) : null,
      FUNNEL_HEAD.map((name, i) => el('th', { scope: 'col', class: i > 1 ? 'num' : '', text: name }))));
    const groupName = (group) => Object.values(group.breakdown).join(' / ');
    $('tbody', table).replaceChildren(...(groups
      ? groups.flatMap((group) => group.steps.map((step, index) => funnelRow(
        step, index + 1, `funnel-group-${groupName(group)}`, breakdownText(groupName(group)))))
      : steps.map((step, index) => funnelRow(step, index + 1, 'funnel-step'))));
    const labels = steps.map((step, index) => `${index + 1}. ${step.event}`);
    if (groups) {
      plot($('#funnel-chart'), groups.map((group, k) => ({
        type: 'bar', name: breakdownText(groupName(group)), x: labels, y: group.steps.map((step) => step.users),
        marker: { color: PALETTE[k % PALETTE.length] },
        hovertemplate: `${breakdownText(groupName(group))}: %{y:,} users<extra></extra>`,
      })), {
        barmode: 'group', hovermode: 'closest', bargap: 0.25, margin: { t: 28 },
        yaxis: { title: { text: 'users' } },
      }, 'Run a funnel to see its steps.');
      return;
    }
    const users = steps.map((step) => step.users);
    const previous = steps.map((step, index) => (index === 0 ? step.users : steps[index - 1].users));
    const top = Math.max(1, ...previous);
    plot($('#funnel-chart'), [
      {
        type: 'bar', name: 'Previous step', x: labels, y: previous,
        marker: { color: 'rgba(148,163,184,0.28)' }, hoverinfo: 'skip',
      },
      {
        type: 'bar', name: 'Reached', x: labels, y: users, marker: { color: PALETTE[0] },
        customdata: steps.map((step) => [fmt.pct(step.conversion_from_start), fmt.pct(step.conversion_from_previous)]),
        hovertemplate: '%{y:,} users<br>%{customdata[0]} of step 1 · %{customdata[1]} of previous<extra></extra>',
      },
    ], {
      barmode: 'overlay', hovermode: 'closest', bargap: 0.35, margin: { t: 28 },
      legend: { traceorder: 'reversed' },
      yaxis: { title: { text: 'users' }, range: [0, top * 1.18] },
      annotations: steps.map((step, index) => ({
        x: labels[index], y: step.users, yanchor: 'bottom', yshift: 3, showarrow: false,
        text: `<b>${fmt.pct(step.conversion_from_start)}</b>`, font: { size: 12, color: '#1e3a8a' },
      })),
    }, 'Run a funnel to see its steps.');
  }

  const predefinedByName = new Map();

  function markPredefined(name) {
    $$('#funnel-predefined button.predefined-run').forEach((button) => {
      button.setAttribute('aria-pressed', String(button.dataset.name === name));
    });
  }

  function loadPredefined() {
    return runSection('predefined', async (current) => {
      const data = await api(`/v1/funnels?${query({ project: state.project })}`);
      if (!current()) return;
      const list = Array.isArray(data) ? data : (data.funnels || []);
      const items = list.map((item) => (typeof item === 'string' ? { name: item } : item));
      predefinedByName.clear();
      items.forEach((item) => predefinedByName.set(item.name, item));
      const ul = $('#funnel-predefined');
      if (!items.length) {
        ul.replaceChildren(el('li', { class: 'muted', text: 'None configured (QUIP_FUNNELS_FILE).' }));
        return;
      }
      ul.replaceChildren(...items.map((item) => {
        const steps = Array.isArray(item.steps) ? item.steps : [];
        const summary = steps.map((step) => (typeof step === 'string' ? step : step.event)).join(' → ');
        const run = el('button', {
          type: 'button', class: 'predefined-run', 'data-name': item.name, 'aria-pressed': 'false',
          testid: `funnel-predefined-${item.name}`,
          onclick: () => runPredefinedFunnel(item.name),
        }, el('span', { class: 'predefined-name', text: item.name }),
        summary ? el('span', { class: 'predefined-steps', text: summary }) : null);
        const copy = steps.length ? el('button', {
          type: 'button', class: 'btn btn-link btn-small', text: 'Edit a copy',
          'aria-label': `Copy ${item.name} into the builder`,
          onclick: () => {
            setBuilder(steps.map((step) => ({
              event: typeof step === 'string' ? step : step.event,
              filters: Object.entries((step && step.where) || {}).map(([key, value]) => ({
                key,
                value: String(value),
                type: typeof value === 'boolean' ? 'bool' : (typeof value === 'number' ? 'number' : 'text'),
              })),
            })), item.window_seconds);
            $('#funnel-step-event-1').focus();
          },
        }) : null;
        return el('li', {}, run, copy);
      }));
      if (state.funnel && state.funnel.kind === 'predefined') markPredefined(state.funnel.name);
    });
  }

  // ------------------------------------------------------------------ playback
  const PLAYBACK_TILES = [
    ['plays', 'playback-plays', fmt.int],
    ['started', 'playback-started', fmt.int],
    ['video_start_failures', 'playback-video-start-failures', fmt.int],
    ['exits_before_start', 'playback-exits-before-start', fmt.int],
    ['playback_failures', 'playback-playback-failures', fmt.int],
    ['startup_ms_p50', 'playback-startup-p50', fmt.ms],
    ['startup_ms_p95', 'playback-startup-p95', fmt.ms],
    ['rebuffer_ratio', 'playback-rebuffer-ratio', (v) => fmt.pct(v, 2)],
    ['avg_bitrate_kbps', 'playback-avg-bitrate', fmt.kbps],
    ['watch_hours', 'playback-watch-hours', (v) => fmt.fixed(v, 2)],
  ];

  // The table shows the groups with the most plays: content_id has thousands of values.
  const PLAYBACK_GROUP_LIMIT = 50;

  // Viewers right now (plays with an event in the last minute, not ended): independent of
  // the date range and never cached by the API, so the tile polls on its own, without a
  // reload, as often as the stores can change it (the freshness target is 5 s).
  const CONCURRENT_REFRESH_MS = 5000;

  async function refreshConcurrentNow() {
    if (!state.key || !state.project || document.hidden) return;
    const value = byTestId('playback-concurrent-now');
    const at = byTestId('playback-concurrent-at');
    try {
      const now = await api(`/v1/metrics/playback/concurrent/now?${query({ project: state.project })}`);
      setValue(value, now.concurrent_viewers, fmt.int(now.concurrent_viewers));
      setValue(at, now.t, `at ${now.t.slice(11, 19)} UTC`);
    } catch (error) {
      setValue(value, null, '—');
      setValue(at, null, error instanceof ApiError ? error.message : `unexpected error: ${error.message}`);
    }
  }

  function loadPlayback() {
    const interval = $('#playback-interval').value;
    const groupBy = $('#playback-group').value;
    return runSection('playback', async (current) => {
      const [summary, series, groups] = await Promise.all([
        api(`/v1/metrics/playback?${query({ ...rangeParams(), group_by: 'none' })}`),
        api(`/v1/metrics/playback/timeseries?${query({ ...rangeParams(), interval })}`),
        api(`/v1/metrics/playback?${query({ ...rangeParams(), group_by: groupBy, limit: PLAYBACK_GROUP_LIMIT })}`),
      ]);
      if (!current()) return;
      const all = summary[0] || {};
      for (const [field, testid, format] of PLAYBACK_TILES) {
        setValue(byTestId(testid), all[field], format(all[field]));
      }
      const rate = all.plays ? all.started / all.plays : null;
      setValue(byTestId('playback-start-rate'), rate, rate === null ? '' : `${fmt.pct(rate)} of plays`);
      renderPlaybackSeries(series, interval);
      renderPlaybackGroups(groups, groupBy);
    });
  }

  // Every bucket of the range (the API lists only buckets with plays), so lines break
  // where there were no plays instead of bridging them.
  function allBuckets(interval) {
    const first = parseDay(state.from);
    const last = parseDay(state.to);
    if (!first || !last || first > last) return [];
    const step = interval === 'hour' ? 3600000 : DAY_MS;
    const out = [];
    for (let t = first.getTime(); t < last.getTime() + DAY_MS && out.length < 20000; t += step) {
      const iso = new Date(t).toISOString();
      out.push(interval === 'hour' ? `${iso.slice(0, 19)}Z` : iso.slice(0, 10));
    }
    return out;
  }

  function renderPlaybackSeries(sparse, interval) {
    const byTime = new Map(sparse.map((p) => [p.t, p]));
    const times = [...new Set([...allBuckets(interval), ...byTime.keys()])].sort();
    const none = { startup_ms_p50: null, startup_ms_p95: null, rebuffer_ratio: null, video_start_failures: 0, playback_failures: 0, exits_before_start: 0 };
    const points = times.map((t) => byTime.get(t) || { ...none, t });
    const x = points.map((p) => plotTime(p.t));
    const common = { x, xaxis: 'x' };
    plot($('#playback-chart'), [
      { ...common, type: 'scatter', mode: 'lines+markers', name: 'Startup p50', y: points.map((p) => p.startup_ms_p50), yaxis: 'y', line: { color: PALETTE[0], width: 2 }, marker: { size: 4 }, hovertemplate: '%{y:,} ms' },
      { ...common, type: 'scatter', mode: 'lines+markers', name: 'Startup p95', y: points.map((p) => p.startup_ms_p95), yaxis: 'y', line: { color: PALETTE[4], width: 2, dash: 'dash' }, marker: { size: 4 }, hovertemplate: '%{y:,} ms' },
      { ...common, type: 'scatter', mode: 'lines+markers', name: 'Rebuffer ratio', y: points.map((p) => p.rebuffer_ratio), yaxis: 'y2', line: { color: PALETTE[2], width: 2 }, marker: { size: 4 }, hovertemplate: '%{y:.2%}' },
      { ...common, type: 'bar', name: 'Start failures', y: points.map((p) => p.video_start_failures), yaxis: 'y3', marker: { color: PALETTE[6] } },
      { ...common, type: 'bar', name: 'Playback failures', y: points.map((p) => p.playback_failures), yaxis: 'y3', marker: { color: PALETTE[3] } },
      { ...common, type: 'bar', name: 'Exits before start', y: points.map((p) => p.exits_before_start), yaxis: 'y3', marker: { color: '#94a3b8' } },
    ], {
      barmode: 'stack',
      margin: { t: 36 },
      xaxis: { type: 'date', anchor: 'y3', tickformat: interval === 'day' ? '%b %d' : '%b %d %H:%M' },
      yaxis: { domain: [0.7, 1], title: { text: 'startup ms' } },
      yaxis2: { domain: [0.38, 0.64], tickformat: '.1%', title: { text: 'rebuffer' } },
      yaxis3: { domain: [0, 0.32], title: { text: 'failed plays' }, rangemode: 'tozero', gridcolor: '#eef2f7', zeroline: false },
      legend: { y: 1.04, traceorder: 'normal' },
    });
  }

  const GROUP_LABELS = { content_id: 'Content', device_model: 'Device model', app_version: 'App version' };

  function renderPlaybackGroups(rows, groupBy) {
    $('#playback-group-col').textContent = GROUP_LABELS[groupBy] || groupBy;
    const table = $('#playback-group-table');
    table.dataset.groupBy = groupBy;
    const label = (group) => (group === '' ? '(not set)' : group);
    const id = (group) => (group === '' ? '_' : group);
    $('tbody', table).replaceChildren(...rows.map((row) => {
      const g = id(row.group);
      const cell = (field, text, extra = '') => el('td', {
        class: `num${extra}`, testid: `playback-group-${g}-${field}`, 'data-value': row[field], text,
      });
      return el('tr', { testid: `playback-group-row-${g}` },
        el('th', { scope: 'row', class: row.group === '' ? 'muted' : '', text: label(row.group) }),
        cell('plays', fmt.int(row.plays), ' strong'),
        cell('started', fmt.int(row.started)),
        cell('video_start_failures', fmt.int(row.video_start_failures)),
        cell('playback_failures', fmt.int(row.playback_failures)),
        cell('startup_ms_p50', fmt.int(row.startup_ms_p50)),
        cell('startup_ms_p95', fmt.int(row.startup_ms_p95)),
        cell('rebuffer_ratio', fmt.pct(row.rebuffer_ratio, 2)),
        cell('watch_hours', fmt.fixed(row.watch_hours, 2)));
    }));
    const top = rows.slice(0, 12).reverse(); // largest at the top of a horizontal bar chart
    const y = top.map((row) => label(row.group));
    const other = top.map((row) => Math.max(0, row.plays - row.started - row.video_start_failures - row.exits_before_start));
    const traces = [
      { type: 'bar', orientation: 'h', name: 'Started', y, x: top.map((r) => r.started), marker: { color: PALETTE[1] } },
      { type: 'bar', orientation: 'h', name: 'Start failure', y, x: top.map((r) => r.video_start_failures), marker: { color: PALETTE[6] } },
      { type: 'bar', orientation: 'h', name: 'Exit before start', y, x: top.map((r) => r.exits_before_start), marker: { color: '#94a3b8' } },
    ];
    if (other.some((n) => n > 0)) {
      traces.push({ type: 'bar', orientation: 'h', name: 'Other', y, x: other, marker: { color: '#e2e8f0' } });
    }
    plot($('#playback-group-chart'), traces, {
      barmode: 'stack', hovermode: 'y unified',
      yaxis: { type: 'category', automargin: true, rangemode: undefined, gridcolor: 'rgba(0,0,0,0)' },
      xaxis: { type: 'linear', title: { text: 'plays' }, rangemode: 'tozero' },
      margin: { l: 16, t: 28 },
      legend: { traceorder: 'normal' },
    });
  }

  // ------------------------------------------------------------------ events by type
  function loadEvents() {
    const interval = $('#events-interval').value;
    return runSection('events', async (current) => {
      const rows = await api(`/v1/metrics/events?${query({ ...rangeParams(), interval })}`);
      if (!current()) return;
      const buckets = [...new Set(rows.map((r) => r.t))].sort();
      const totals = new Map();
      for (const row of rows) totals.set(row.type, (totals.get(row.type) || 0) + row.count);
      const types = [...totals.keys()].sort((a, b) => totals.get(b) - totals.get(a) || a.localeCompare(b));
      const color = new Map(types.map((type, i) => [type, PALETTE[i % PALETTE.length]]));
      const index = new Map(buckets.map((t, i) => [t, i]));
      const traces = types.map((type) => {
        const y = new Array(buckets.length).fill(0);
        for (const row of rows) if (row.type === type) y[index.get(row.t)] += row.count;
        return {
          type: 'bar', name: type, x: buckets.map(plotTime), y,
          marker: { color: color.get(type) }, hovertemplate: `${type}: %{y:,}<extra></extra>`,
        };
      });
      plot($('#events-chart'), traces, {
        barmode: 'stack', bargap: 0.15,
        xaxis: { type: 'date', tickformat: interval === 'day' ? '%b %d' : '%b %d %H:%M' },
        yaxis: { title: { text: 'events' } },
        showlegend: false,
      });
      $('#events-totals').replaceChildren(...types.map((type) => el('li', {},
        el('span', { class: 'swatch', style: `background:${color.get(type)}`, 'aria-hidden': 'true' }),
        el('span', { class: 'legend-name', text: type }),
        el('span', { class: 'legend-value', testid: `events-total-${type}`, 'data-value': totals.get(type), text: fmt.int(totals.get(type)) }))));
      updateEventTypes(types);
    });
  }

  function updateEventTypes(seen) {
    const all = [...new Set([...seen, ...KNOWN_TYPES])].sort();
    $('#event-types').replaceChildren(...all.map((type) => el('option', { value: type })));
  }

  // ------------------------------------------------------------------ services
  function serviceText(field, value) {
    return field.endsWith('_ms_p95') || field.endsWith('_ms') ? fmt.ms(value) : fmt.int(value);
  }

  function loadServices() {
    return runSection('services', async (current) => {
      const data = await api(`/v1/metrics/services?${query(rangeParams())}`);
      if (!current()) return;
      const days = Array.isArray(data.days) ? data.days : [];
      const totals = data.totals || {};
      const fields = Object.keys(totals).length
        ? Object.keys(totals)
        : Object.keys(days[0] || {}).filter((name) => name !== 'day');
      const label = (field) => SERVICE_LABELS[field] || field.replace(/_/g, ' ');
      $('#services-tiles').replaceChildren(...fields.map((field) => el('div', { class: 'tile' },
        el('span', { class: 'tile-label', text: label(field) }),
        el('span', { class: 'tile-value', testid: `services-total-${field}`, 'data-value': totals[field], text: serviceText(field, totals[field]) }))));
      const table = $('#services-table');
      $('thead', table).replaceChildren(el('tr', {},
        el('th', { scope: 'col', text: 'Day' }),
        fields.map((field) => el('th', { scope: 'col', class: 'num', text: label(field) }))));
      $('tbody', table).replaceChildren(...days.slice().reverse().map((day) => el('tr', { testid: `services-row-${day.day}` },
        el('th', { scope: 'row', text: day.day }),
        fields.map((field) => el('td', {
          class: `num${day[field] ? '' : ' zero'}`, testid: `services-${day.day}-${field}`, 'data-value': day[field], text: serviceText(field, day[field]),
        })))));
      $('tfoot', table).replaceChildren(el('tr', {},
        el('th', { scope: 'row', text: 'Total' }),
        fields.map((field) => el('td', { class: 'num', testid: `services-table-total-${field}`, 'data-value': totals[field], text: serviceText(field, totals[field]) }))));
    });
  }

  // ------------------------------------------------------------------ discovery
  // What the builders offer (SPEC §5.1 schema discovery): the range's event types and the
  // properties of its events; numeric properties per event are asked for when a series
  // needs one.
  const discovery = { events: [], properties: [], numeric: new Map() };

  const asText = (value) => (typeof value === 'string' ? value : (value === null || value === undefined ? '' : String(value)));

  // Rebuilds a select's options and keeps its value, listed even when discovery does not
  // offer it (a link may name a property this range lacks).
  function fillSelect(select, options, value = select.value) {
    const all = value && !options.some(([option]) => option === value) ? [...options, [value, value]] : options;
    select.replaceChildren(...all.map(([option, label]) => el('option', { value: option, text: label })));
    select.value = value;
    if (select.value !== value && all.length) select.value = all[0][0];
  }

  const eventOptions = () => [['', 'Any event'], ...discovery.events.map((row) => [row.type, row.type])];
  const propertyOptions = (none) => [['', none], ...discovery.properties.map((row) => [row.property, row.property])];

  function numericProperties(event) {
    const key = JSON.stringify([state.project, state.from, state.to, event]);
    if (!discovery.numeric.has(key)) {
      const request = api(`/v1/schema/properties?${query({ ...rangeParams(), event })}`)
        .then((rows) => rows.filter((row) => row.type === 'number').map((row) => row.property));
      request.catch(() => discovery.numeric.delete(key));
      discovery.numeric.set(key, request);
    }
    return discovery.numeric.get(key);
  }

  function refreshOptions() {
    const events = eventOptions();
    $$('.series-event, .event-select').forEach((select) => fillSelect(select, events));
    $$('.insight-filter-property').forEach((select) => fillSelect(select, propertyOptions('property…')));
    $$('.insight-breakdown, #sessions-breakdown, #funnel-breakdown').forEach((select) => fillSelect(select, propertyOptions('None')));
    $$('#insight-series > li').forEach(refreshSeriesProperty);
  }

  function loadSchema() {
    return runSection('schema', async (current) => {
      const [events, properties] = await Promise.all([
        api(`/v1/schema/events?${query(rangeParams())}`),
        api(`/v1/schema/properties?${query(rangeParams())}`),
      ]);
      if (!current()) return;
      discovery.events = events;
      discovery.properties = properties;
      discovery.numeric.clear();
      refreshOptions();
    });
  }

  // ------------------------------------------------------------------ insight builder
  const MATHS = [
    ['total', 'Total events'], ['unique_users', 'Unique users'], ['per_user_avg', 'Events per user'],
    ['sum', 'Sum of'], ['avg', 'Average of'], ['min', 'Minimum of'], ['max', 'Maximum of'],
    ['median', 'Median of'], ['p90', 'p90 of'], ['p95', 'p95 of'], ['p99', 'p99 of'],
  ];
  const PROPERTY_MATHS = ['sum', 'avg', 'min', 'max', 'median', 'p90', 'p95', 'p99'];
  const OPS = [
    ['eq', '='], ['neq', '≠'], ['in', 'in'], ['not_in', 'not in'], ['contains', 'contains'],
    ['not_contains', 'does not contain'], ['gt', '>'], ['gte', '≥'], ['lt', '<'], ['lte', '≤'],
    ['is_set', 'is set'], ['is_not_set', 'is not set'],
  ];
  const LIST_OPS = ['in', 'not_in'];
  const NUMBER_OPS = ['gt', 'gte', 'lt', 'lte'];
  const VALUELESS_OPS = ['is_set', 'is_not_set'];
  const INSIGHT_INTERVALS = ['hour', 'day', 'week', 'month'];
  const DISPLAYS = ['line', 'bar', 'table'];
  const MAX_SERIES = 10;
  const DEFAULT_INSIGHT = { series: [{ event: null, math: 'total' }], filters: [], breakdown: [], interval: 'day' };
  const seriesLetter = (index) => String.fromCharCode(65 + index);
  const valueFormat = new Intl.NumberFormat('en-US', { maximumFractionDigits: 2 });
  const number = (v) => (v === null || v === undefined ? '—' : valueFormat.format(v));
  const breakdownText = (value) => ({ $none: '(none)', $other: '(other)' }[value] || value);

  function seriesRow(spec = {}) {
    const event = el('select', { class: 'series-event' });
    fillSelect(event, eventOptions(), asText(spec.event));
    const math = el('select', { class: 'series-math' }, MATHS.map(([value, label]) => el('option', { value, text: label })));
    math.value = MATHS.some(([value]) => value === spec.math) ? spec.math : 'total';
    const property = el('select', { class: 'series-property' });
    fillSelect(property, [['', 'numeric property…']], asText(spec.property));
    const li = el('li', { class: 'insight-row' },
      el('span', { class: 'series-letter', 'aria-hidden': 'true' }), event, math, property,
      el('button', { type: 'button', class: 'btn btn-icon series-remove', text: '×' }));
    refreshSeriesProperty(li);
    return li;
  }

  // The property select shows for the property maths only, with the numeric properties of
  // the series' event.
  async function refreshSeriesProperty(li) {
    const event = $('.series-event', li).value;
    const select = $('.series-property', li);
    const needed = PROPERTY_MATHS.includes($('.series-math', li).value);
    select.hidden = !needed;
    if (!needed || !state.key || !state.from) return;
    let names;
    try {
      names = await numericProperties(event);
    } catch (error) {
      sectionError('schema', error.message);
      return;
    }
    if ($('.series-event', li).value !== event) return; // the event changed meanwhile
    fillSelect(select, [['', 'numeric property…'], ...names.map((name) => [name, name])]);
  }

  function insightFilterRow(filter = {}) {
    const property = el('select', { class: 'insight-filter-property' });
    fillSelect(property, propertyOptions('property…'), asText(filter.property));
    const op = el('select', { class: 'insight-filter-op' }, OPS.map(([value, label]) => el('option', { value, text: label })));
    op.value = OPS.some(([value]) => value === filter.op) ? filter.op : 'eq';
    const value = el('input', {
      class: 'insight-filter-value', type: 'text', placeholder: 'value', spellcheck: 'false', autocomplete: 'off',
      value: Array.isArray(filter.value) ? filter.value.map(asText).join(', ') : asText(filter.value),
    });
    value.hidden = VALUELESS_OPS.includes(op.value);
    return el('li', { class: 'insight-row' },
      el('span', { class: 'filter-where', text: 'where' }), property, op, value,
      el('button', { type: 'button', class: 'btn btn-icon insight-filter-remove', text: '×' }));
  }

  function renumberInsight() {
    const series = $$('#insight-series > li');
    series.forEach((li, index) => {
      const letter = seriesLetter(index);
      li.dataset.testid = `insight-series-${index + 1}`;
      $('.series-letter', li).textContent = letter;
      for (const [cls, name, label] of [
        ['series-event', 'event', 'event'], ['series-math', 'math', 'math'],
        ['series-property', 'property', 'numeric property'], ['series-remove', 'remove', 'remove'],
      ]) {
        const node = $(`.${cls}`, li);
        node.dataset.testid = `insight-series-${name}-${index + 1}`;
        node.setAttribute('aria-label', name === 'remove' ? `Remove series ${letter}` : `Series ${letter} ${label}`);
      }
      $('.series-remove', li).disabled = series.length <= 1;
    });
    $('#insight-add-series').disabled = series.length >= MAX_SERIES;
    $$('#insight-filters > li').forEach((li, index) => {
      for (const name of ['property', 'op', 'value', 'remove']) {
        const node = $(`.insight-filter-${name}`, li);
        node.dataset.testid = `insight-filter-${name}-${index + 1}`;
        node.setAttribute('aria-label', name === 'remove' ? `Remove filter ${index + 1}` : `Filter ${index + 1} ${name}`);
      }
    });
  }

  function setInsight(spec) {
    const series = Array.isArray(spec.series) && spec.series.length ? spec.series.slice(0, MAX_SERIES) : DEFAULT_INSIGHT.series;
    $('#insight-series').replaceChildren(...series.map((item) => seriesRow(item || {})));
    const filters = Array.isArray(spec.filters) ? spec.filters : [];
    $('#insight-filters').replaceChildren(...filters.map((item) => insightFilterRow(item || {})));
    const breakdown = Array.isArray(spec.breakdown) ? spec.breakdown : [];
    fillSelect($('#insight-breakdown-1'), propertyOptions('None'), asText(breakdown[0]));
    fillSelect($('#insight-breakdown-2'), propertyOptions('None'), asText(breakdown[1]));
    $('#insight-interval').value = INSIGHT_INTERVALS.includes(spec.interval) ? spec.interval : 'day';
    const display = DISPLAYS.includes(spec.display) ? spec.display : 'line';
    $(`input[name="insight-display"][value="${display}"]`).checked = true;
    renumberInsight();
  }

  // The builder as a trends body (without the range), and what is wrong with it.
  function collectInsight() {
    const problems = [];
    $$('#insight-builder [aria-invalid]').forEach((node) => node.removeAttribute('aria-invalid'));
    const invalid = (node, message) => {
      node.setAttribute('aria-invalid', 'true');
      problems.push(message);
    };
    const series = $$('#insight-series > li').map((li, index) => {
      const spec = { event: $('.series-event', li).value || null, math: $('.series-math', li).value };
      if (PROPERTY_MATHS.includes(spec.math)) {
        spec.property = $('.series-property', li).value;
        if (!spec.property) invalid($('.series-property', li), `series ${seriesLetter(index)}: pick a numeric property for ${spec.math}`);
      }
      return spec;
    });
    const filters = $$('#insight-filters > li').map((li, index) => {
      const filter = { property: $('.insight-filter-property', li).value, op: $('.insight-filter-op', li).value };
      const input = $('.insight-filter-value', li);
      const raw = input.value.trim();
      if (!filter.property) invalid($('.insight-filter-property', li), `filter ${index + 1}: pick a property`);
      if (LIST_OPS.includes(filter.op)) {
        filter.value = raw.split(',').map((part) => part.trim()).filter(Boolean);
      } else if (NUMBER_OPS.includes(filter.op)) {
        filter.value = Number(raw);
        if (raw === '' || !Number.isFinite(filter.value)) invalid(input, `filter ${index + 1}: ${filter.op} needs a number`);
      } else if (!VALUELESS_OPS.includes(filter.op)) {
        filter.value = input.value; // text is compared exactly, spaces included
      }
      return filter;
    });
    const breakdown = [...new Set([$('#insight-breakdown-1').value, $('#insight-breakdown-2').value].filter(Boolean))];
    return { body: { series, filters, breakdown, interval: $('#insight-interval').value }, problems };
  }

  const insightDisplay = () => ($('input[name="insight-display"]:checked') || { value: 'line' }).value;

  function runInsight() {
    return runSection('insight', async (current) => {
      const { body, problems } = collectInsight();
      if (problems.length) throw new ApiError(400, `check the insight: ${problems.join('; ')}`);
      const result = await api(`/v1/insights/trends?${query({ project: state.project })}`, {
        method: 'POST', body: { ...body, from: state.from, to: state.to },
      });
      if (!current()) return;
      state.insight = body;
      state.insightResult = result.series || [];
      renderInsight();
      syncUrl();
    });
  }

  function insightLabel(series, body) {
    const spec = body.series[series.index] || {};
    const math = spec.property ? `${series.math}(${spec.property})` : series.math.replace(/_/g, ' ');
    const parts = [seriesLetter(series.index), series.event || 'any event', math];
    if (series.breakdown) parts.push(Object.values(series.breakdown).map(breakdownText).join(' / '));
    return parts.join(' · ');
  }

  function renderInsight() {
    const series = state.insightResult;
    if (!series) return;
    const display = insightDisplay();
    const names = series.map((item) => insightLabel(item, state.insight));
    const color = (k) => PALETTE[k % PALETTE.length];
    $('#insight').dataset.display = display;
    $('#insight-legend').replaceChildren(...series.map((item, k) => el('li', { testid: `insight-legend-${k}` },
      el('span', { class: 'swatch', style: `background:${color(k)}`, 'aria-hidden': 'true' }),
      el('span', { class: 'legend-name', testid: `insight-name-${k}`, text: names[k] }),
      el('span', { class: 'legend-value', testid: `insight-total-${k}`, 'data-value': item.total, text: number(item.total) }))));
    const times = [...new Set(series.flatMap((item) => item.points.map((point) => point.t)))].sort();
    const table = $('#insight-table');
    $('#insight-chart').hidden = display === 'table';
    $('#insight-table-wrap').hidden = display !== 'table';
    if (display !== 'table') {
      $$('thead, tbody, tfoot', table).forEach((part) => part.replaceChildren());
      const timeFormat = state.insight.interval === 'hour' ? '%b %d %H:%M' : '%b %d';
      plot($('#insight-chart'), series.map((item, k) => ({
        name: names[k],
        x: item.points.map((point) => plotTime(point.t)),
        y: item.points.map((point) => point.value),
        hovertemplate: '%{y:,}',
        ...(display === 'bar'
          ? { type: 'bar', marker: { color: color(k) } }
          : { type: 'scatter', mode: 'lines+markers', marker: { color: color(k), size: 5 }, line: { color: color(k), width: 2 } }),
      })), {
        barmode: 'group', showlegend: false,
        xaxis: { type: 'date', tickformat: state.insight.interval === 'month' ? '%b %Y' : timeFormat },
      }, 'No matching events in this range.');
      return;
    }
    const values = series.map((item) => new Map(item.points.map((point) => [point.t, point.value])));
    $('thead', table).replaceChildren(el('tr', {},
      el('th', { scope: 'col', text: 'Period' }),
      names.map((name, k) => el('th', { scope: 'col', class: 'num', testid: `insight-col-${k}`, text: name }))));
    $('tbody', table).replaceChildren(...times.map((t, j) => el('tr', { testid: `insight-row-${j}` },
      el('th', { scope: 'row', testid: `insight-t-${j}`, text: t }),
      values.map((byTime, k) => el('td', {
        class: `num${byTime.get(t) ? '' : ' zero'}`, testid: `insight-cell-${k}-${j}`, 'data-value': byTime.get(t), text: number(byTime.get(t)),
      })))));
    $('tfoot', table).replaceChildren(el('tr', {},
      el('th', { scope: 'row', text: 'Range' }),
      series.map((item, k) => el('td', { class: 'num', testid: `insight-table-total-${k}`, 'data-value': item.total, text: number(item.total) }))));
  }

  // ------------------------------------------------------------------ lifecycle, stickiness
  const duration = (s) => {
    if (s === null || s === undefined) return '—';
    if (s < 60) return `${s.toFixed(1)} s`;
    return s < 3600 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(1)} h`;
  };
  const LIFECYCLE_FIELDS = [
    ['new', 'New', PALETTE[1], 1], ['returning', 'Returning', PALETTE[0], 1],
    ['resurrecting', 'Resurrecting', PALETTE[2], 1], ['dormant', 'Dormant', PALETTE[6], -1],
  ];

  function loadLifecycle() {
    const interval = $('#lifecycle-interval').value;
    const event = $('#lifecycle-event').value;
    return runSection('lifecycle', async (current) => {
      const rows = await api(`/v1/insights/lifecycle?${query({ ...rangeParams(), interval, event })}`);
      if (!current()) return;
      const table = $('#lifecycle-table');
      table.dataset.interval = interval;
      table.dataset.event = event;
      $('tbody', table).replaceChildren(...rows.map((row) => el('tr', { testid: `lifecycle-row-${row.t}` },
        el('th', { scope: 'row', text: row.t }),
        LIFECYCLE_FIELDS.map(([field]) => el('td', {
          class: `num${row[field] ? '' : ' zero'}`, testid: `lifecycle-${row.t}-${field}`, 'data-value': row[field], text: fmt.int(row[field]),
        })))));
      // Dormant users are drawn below zero: they left in that period.
      plot($('#lifecycle-chart'), LIFECYCLE_FIELDS.map(([field, name, color, sign]) => ({
        type: 'bar', name, x: rows.map((row) => row.t), y: rows.map((row) => sign * row[field]),
        marker: { color }, hovertemplate: `${name}: %{y:,}<extra></extra>`,
      })), {
        barmode: 'relative', margin: { t: 28 },
        xaxis: { type: 'date', tickformat: '%b %d' },
        yaxis: { title: { text: 'users' }, rangemode: 'normal', zeroline: true, zerolinecolor: '#94a3b8' },
        legend: { traceorder: 'normal' },
      });
    });
  }

  function loadStickiness() {
    const event = $('#stickiness-event').value;
    return runSection('stickiness', async (current) => {
      const rows = await api(`/v1/insights/stickiness?${query({ ...rangeParams(), event })}`);
      if (!current()) return;
      const table = $('#stickiness-table');
      table.dataset.event = event;
      $('tbody', table).replaceChildren(...rows.map((row) => el('tr', { testid: `stickiness-row-${row.days}` },
        el('th', { scope: 'row', text: `${row.days} day${row.days === 1 ? '' : 's'}` }),
        el('td', { class: `num${row.users ? '' : ' zero'}`, testid: `stickiness-users-${row.days}`, 'data-value': row.users, text: fmt.int(row.users) }))));
      plot($('#stickiness-chart'), [{
        type: 'bar', name: 'users', x: rows.map((row) => row.days), y: rows.map((row) => row.users),
        marker: { color: PALETTE[4] }, hovertemplate: '%{y:,} users on %{x} days<extra></extra>',
      }], {
        hovermode: 'closest',
        xaxis: { type: 'linear', title: { text: 'days active' }, dtick: 1 },
        yaxis: { title: { text: 'users' } },
      });
    });
  }

  // ------------------------------------------------------------------ sessions
  const SESSION_FIELDS = [
    ['sessions', fmt.int], ['users', fmt.int], ['duration_s_avg', duration], ['duration_s_median', duration],
    ['events_per_session', number], ['bounce_rate', (v) => fmt.pct(v)],
  ];

  function loadSessions() {
    const property = $('#sessions-breakdown').value;
    return runSection('sessions', async (current) => {
      const rows = await api(`/v1/insights/sessions?${query({ project: state.project })}`, {
        method: 'POST', body: { from: state.from, to: state.to, breakdown: property ? [property] : [] },
      });
      if (!current()) return;
      const table = $('#sessions-table');
      table.dataset.breakdown = property;
      $('#sessions-group-col').textContent = property || 'Group';
      const group = (row) => (row.breakdown ? Object.values(row.breakdown).join(' / ') : 'all');
      $('tbody', table).replaceChildren(...rows.map((row) => {
        const id = `${row.day}-${group(row)}`;
        return el('tr', { testid: `sessions-row-${id}` },
          el('th', { scope: 'row', text: row.day }),
          el('td', { class: row.breakdown ? '' : 'muted', text: row.breakdown ? breakdownText(group(row)) : 'all' }),
          SESSION_FIELDS.map(([field, format]) => el('td', {
            class: 'num', testid: `sessions-${id}-${field}`, 'data-value': row[field], text: format(row[field]),
          })));
      }));
      const totals = new Map();
      for (const row of rows) totals.set(group(row), (totals.get(group(row)) || 0) + row.sessions);
      const groups = [...totals.keys()].sort((a, b) => totals.get(b) - totals.get(a) || a.localeCompare(b));
      plot($('#sessions-chart'), groups.map((name, k) => {
        const own = rows.filter((row) => group(row) === name);
        return {
          type: 'scatter', mode: 'lines+markers', name: breakdownText(name), x: own.map((row) => row.day), y: own.map((row) => row.sessions),
          line: { color: PALETTE[k % PALETTE.length], width: 2 }, marker: { size: 4 }, hovertemplate: '%{y:,} sessions',
        };
      }), {
        xaxis: { type: 'date', tickformat: '%b %d' },
        yaxis: { title: { text: 'sessions' } },
        showlegend: groups.length > 1,
      });
    });
  }

  // ------------------------------------------------------------------ the view in the URL
  // What a copied link reproduces besides project and range: the insight shown and the
  // panels' own controls, as JSON in the fragment. A page in its default view keeps a
  // plain URL.
  function viewState() {
    return {
      insight: { ...state.insight, display: insightDisplay() },
      lifecycle: { interval: $('#lifecycle-interval').value, event: $('#lifecycle-event').value },
      stickiness: { event: $('#stickiness-event').value },
      sessions: { breakdown: $('#sessions-breakdown').value },
    };
  }

  function readView() {
    const match = /(?:^|&)view=([^&]*)/.exec(window.location.hash.slice(1));
    if (!match) return null;
    try {
      const view = JSON.parse(decodeURIComponent(match[1]));
      return view && typeof view === 'object' ? view : null;
    } catch {
      return null;
    }
  }

  function applyView(view) {
    const part = (name) => (view[name] && typeof view[name] === 'object' ? view[name] : {});
    state.insight = { ...DEFAULT_INSIGHT, ...part('insight') };
    setInsight(state.insight);
    state.insight = collectInsight().body;
    if (['day', 'week'].includes(part('lifecycle').interval)) $('#lifecycle-interval').value = part('lifecycle').interval;
    fillSelect($('#lifecycle-event'), eventOptions(), asText(part('lifecycle').event));
    fillSelect($('#stickiness-event'), eventOptions(), asText(part('stickiness').event));
    fillSelect($('#sessions-breakdown'), propertyOptions('None'), asText(part('sessions').breakdown));
  }

  // ------------------------------------------------------------------ controls
  function showKeyEntry(show) {
    $('#key-entry').hidden = !show;
    $('#key-saved').hidden = show || !state.key;
    if (show) {
      const input = $('#read-key');
      input.value = '';
      input.focus();
    }
  }

  function saveKey() {
    const value = $('#read-key').value.trim();
    if (!value) {
      $('#read-key').focus();
      return false;
    }
    state.key = value;
    storageSet(KEY_STORAGE, value);
    $('#read-key').value = '';
    showKeyEntry(false);
    return true;
  }

  function setRange(days) {
    const to = todayUtc();
    $('#date-to').value = isoDay(to);
    $('#date-from').value = isoDay(addDays(to, -(days - 1)));
  }

  function readControls() {
    const project = $('#project').value.trim();
    const from = $('#date-from').value;
    const to = $('#date-to').value;
    const problems = [];
    if (!project) problems.push('enter a project');
    if (!parseDay(from) || !parseDay(to)) problems.push('pick both dates');
    else if (from > to) problems.push(`"From" (${from}) is after "To" (${to})`);
    $('#project').toggleAttribute('aria-invalid', !project);
    $('#date-from').toggleAttribute('aria-invalid', Boolean(from && to && from > to));
    if (problems.length) {
      state.errors.set('controls', `Fix the selection: ${problems.join('; ')}.`);
      renderBanner();
      return false;
    }
    state.errors.delete('controls');
    state.project = project;
    state.from = from;
    state.to = to;
    return true;
  }

  let defaultView = '';

  function syncUrl() {
    const url = new URL(window.location.href);
    url.search = query({ project: state.project, from: state.from, to: state.to });
    const view = JSON.stringify(viewState());
    url.hash = view === defaultView ? '' : `view=${encodeURIComponent(view)}`;
    window.history.replaceState(null, '', url);
  }

  async function loadAll({ fresh = false } = {}) {
    if (!state.key) {
      state.errors.set('key', 'Enter the read key (from QUIP_READ_KEYS) and press Save key.');
      renderBanner();
      showKeyEntry(true);
      document.body.dataset.state = 'error';
      return;
    }
    if (!readControls()) {
      document.body.dataset.state = 'error';
      return;
    }
    clearErrors();
    renderBanner();
    storageSet(PROJECT_STORAGE, state.project);
    syncUrl();
    const load = ++state.loads;
    document.body.dataset.state = 'loading';
    setStatus(`Loading ${state.project} · ${state.from} → ${state.to} …`);
    state.noCache = fresh;
    refreshConcurrentNow(); // not a section of the range: it reports in its own tile
    let results;
    try {
      results = await Promise.all([
        loadActive(), loadSchema(), runInsight(), loadRetention(), loadLifecycle(),
        loadStickiness(), loadSessions(), loadPredefined(), rerunFunnel(),
        loadPlayback(), loadEvents(), loadServices(),
      ]);
    } finally {
      if (load === state.loads) state.noCache = false;
    }
    if (load !== state.loads) return;
    const time = new Date().toISOString().slice(11, 19);
    const failed = results.filter((ok) => !ok).length;
    setStatus(failed
      ? `Loaded with ${failed} error${failed === 1 ? '' : 's'} at ${time} UTC · ${state.project} · ${state.from} → ${state.to}`
      : `Updated ${time} UTC · ${state.project} · ${state.from} → ${state.to}`);
    $('#last-updated').textContent = `Last loaded ${time} UTC`;
    document.body.dataset.state = failed ? 'error' : 'ready';
  }

  function init() {
    // Selection: URL first (shareable links), then what this browser used last.
    const params = new URLSearchParams(window.location.search);
    $('#project').value = params.get('project') || storageGet(PROJECT_STORAGE) || 'default';
    setRange(30);
    if (parseDay(params.get('from') || '')) $('#date-from').value = params.get('from');
    if (parseDay(params.get('to') || '')) $('#date-to').value = params.get('to');

    setBuilder([{ event: 'session_start', filters: [] }, { event: 'page_view', filters: [] }], 86400);
    updateEventTypes([]);
    fillSelect($('#funnel-breakdown'), propertyOptions('None'), '');
    applyView({});
    defaultView = JSON.stringify(viewState());
    const view = readView();
    if (view) applyView(view);
    if (!window.Plotly) {
      state.errors.set('charts', 'plotly.min.js did not load (is the plotly package installed?); numbers are still shown.');
      renderBanner();
    }

    $('#controls').addEventListener('submit', (event) => {
      event.preventDefault();
      if ($('#read-key').value.trim()) saveKey();
      loadAll({ fresh: true });
    });
    $('#key-save').addEventListener('click', () => {
      if (saveKey()) loadAll();
    });
    $('#read-key').addEventListener('keydown', (event) => {
      if (event.key === 'Enter') {
        event.preventDefault();
        if (saveKey()) loadAll();
      }
    });
    $('#key-forget').addEventListener('click', () => showKeyEntry(true));
    $$('.segmented [data-days]').forEach((button) => button.addEventListener('click', () => {
      setRange(Number(button.dataset.days));
      loadAll();
    }));
    $('#banner-close').addEventListener('click', () => { $('#banner').hidden = true; });

    $$('input[name="retention-period"]').forEach((input) => input.addEventListener('change', () => {
      if (state.key && state.from) loadRetention();
    }));
    $('#playback-interval').addEventListener('change', () => state.key && state.from && loadPlayback());
    setInterval(refreshConcurrentNow, CONCURRENT_REFRESH_MS);
    $('#playback-group').addEventListener('change', () => state.key && state.from && loadPlayback());
    $('#events-interval').addEventListener('change', () => state.key && state.from && loadEvents());
    const reloadPanel = (load) => () => {
      if (!state.key || !state.from) return;
      load();
      syncUrl();
    };
    $('#lifecycle-interval').addEventListener('change', reloadPanel(loadLifecycle));
    $('#lifecycle-event').addEventListener('change', reloadPanel(loadLifecycle));
    $('#stickiness-event').addEventListener('change', reloadPanel(loadStickiness));
    $('#sessions-breakdown').addEventListener('change', reloadPanel(loadSessions));

    const insight = $('#insight-builder');
    insight.addEventListener('submit', (event) => {
      event.preventDefault();
      if (!state.key) {
        loadAll();
        return;
      }
      if (!state.from && !readControls()) return;
      runInsight();
    });
    insight.addEventListener('change', (event) => {
      const row = event.target.closest('#insight-series > li');
      if (row && (event.target.matches('.series-event') || event.target.matches('.series-math'))) refreshSeriesProperty(row);
      if (event.target.matches('.insight-filter-op')) {
        $('.insight-filter-value', event.target.closest('li')).hidden = VALUELESS_OPS.includes(event.target.value);
      }
    });
    insight.addEventListener('click', (event) => {
      const target = event.target.closest('button');
      if (!target) return;
      if (target.id === 'insight-add-series') {
        $('#insight-series').append(seriesRow());
        renumberInsight();
        $('#insight-series > li:last-child .series-event').focus();
      } else if (target.id === 'insight-add-filter') {
        $('#insight-filters').append(insightFilterRow());
        renumberInsight();
        $('#insight-filters > li:last-child .insight-filter-property').focus();
      } else if (target.classList.contains('series-remove') || target.classList.contains('insight-filter-remove')) {
        target.closest('li').remove();
        renumberInsight();
      }
    });
    $$('input[name="insight-display"]').forEach((input) => input.addEventListener('change', () => {
      renderInsight();
      if (state.insightResult) syncUrl();
    }));

    const builder = $('#funnel-builder');
    builder.addEventListener('submit', (event) => {
      event.preventDefault();
      if (!state.key) {
        loadAll();
        return;
      }
      if (!state.from && !readControls()) return;
      runBuilderFunnel();
    });
    builder.addEventListener('click', (event) => {
      const target = event.target.closest('button');
      if (!target) return;
      const step = target.closest('.funnel-step');
      if (target.classList.contains('step-add-filter')) {
        $('.filters', step).append(filterRow());
        renumberSteps();
        $('.filter:last-child .filter-key', step).focus();
      } else if (target.classList.contains('step-remove')) {
        step.remove();
        renumberSteps();
      } else if (target.classList.contains('filter-remove')) {
        target.closest('.filter').remove();
        renumberSteps();
      }
    });
    $('#funnel-add-step').addEventListener('click', () => {
      $('#funnel-steps').append(stepRow());
      renumberSteps();
      $('#funnel-steps > li:last-child .step-event').focus();
    });
    $('#funnel-window').addEventListener('input', updateWindowHint);

    if (state.key) {
      showKeyEntry(false);
      loadAll();
    } else {
      showKeyEntry(true);
      setStatus('Enter the read key to load the dashboard.');
    }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
