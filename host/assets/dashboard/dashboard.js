// Keel's dashboard: polls this node's /v1/cluster (every member's status, gathered by the
// node) and /metrics each second, and follows its /v1/events. Plain JS, no build step.
'use strict';

const POLL_MS = 1000;
const WINDOW_S = 300; // the charts show the last five minutes
const MAX_EVENTS = 100;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

const dash = (v) => (v === null || v === undefined ? '–' : v);

function banner(text) {
  const b = $('banner');
  b.hidden = !text;
  b.textContent = text || '';
}

// ---------------------------------------------------------------- cluster and plugins

let lastPlugins = null; // {t, counts: {name: commands_total}}

// What a member's blobs are doing (design §6): the blob apply waits for, the resend sweep's
// fetches, or nothing.
function blobsText(m) {
  if (m.waiting_for_blob) {
    const w = m.waiting_for_blob;
    return `apply waits for ${String(w.blob).slice(0, 12)} (index ${w.index}, ${w.waiting_ms} ms)`;
  }
  if (m.blobs_sweeping) return `sweep fetching ${m.blobs_sweeping}`;
  return m.healthy ? 'all held' : '-';
}

function renderMembers(view) {
  const body = $('members').tBodies[0];
  const rows = view.members.map((m) => {
    const health = m.healthy ? 'healthy' : 'unhealthy';
    const tr = el('tr', {
      'data-node': m.id,
      'data-health': health,
      class: `member ${health}${view.leader === m.id ? ' leader' : ''}`,
      title: m.error || '',
    },
    el('td', {}, m.id),
    el('td', {}, el('a', { href: m.url + '/' }, m.url)),
    el('td', {}, dash(m.role)),
    el('td', { class: 'num' }, dash(m.term)),
    el('td', { class: 'num' }, dash(m.commit_index)),
    el('td', { class: 'num' }, dash(m.applied_index)),
    el('td', { class: 'num' }, dash(m.lag)),
    el('td', { class: 'blobs' }, blobsText(m)),
    el('td', { class: 'health' }, m.healthy ? (m.removed ? 'removed' : 'healthy') : 'unreachable'));
    return tr;
  });
  body.replaceChildren(...rows);
  const leader = view.members.find((m) => m.id === view.leader);
  $('leader').textContent = view.leader ? `node ${view.leader}` : 'none';
  $('term').textContent = dash(leader && leader.term);
  $('commit').textContent = view.commit_index;
  $('served-by').textContent = view.served_by;
  $('cluster-id').textContent = `cluster ${view.cluster_id}`;
}

function renderPlugins(view, now) {
  const rates = {};
  if (lastPlugins) {
    const dt = (now - lastPlugins.t) / 1000;
    for (const p of view.plugins) {
      const before = lastPlugins.counts[p.name];
      // A member that stops answering takes its count with it: never show a negative rate.
      if (before !== undefined && dt > 0) rates[p.name] = Math.max(0, (p.commands_total - before) / dt);
    }
  }
  lastPlugins = { t: now, counts: Object.fromEntries(view.plugins.map((p) => [p.name, p.commands_total])) };
  const rows = view.plugins.map((p) =>
    el('tr', { 'data-plugin': p.name },
      el('td', {}, p.name),
      el('td', {}, p.version),
      el('td', { title: p.sha256 }, el('code', {}, p.sha256.slice(0, 12))),
      el('td', { class: 'num' }, rates[p.name] === undefined ? '–' : rates[p.name].toFixed(1)),
      el('td', { class: 'num' }, p.commands_total)));
  $('plugins').tBodies[0].replaceChildren(...rows);
}

async function pollCluster() {
  try {
    const r = await fetch('/v1/cluster', { cache: 'no-store' });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const view = await r.json();
    renderMembers(view);
    renderPlugins(view, Date.now());
    banner('');
  } catch (e) {
    banner(`This node does not answer (${e.message}); retrying.`);
  } finally {
    setTimeout(pollCluster, POLL_MS);
  }
}

// ---------------------------------------------------------------- charts from /metrics

const series = { commits: [], apply: [] }; // [{t, v}], v null when there is nothing to show
let lastMetrics = null;

// The OpenMetrics text as {name{labels}: number}.
function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    if (at > 0) out[line.slice(0, at)] = Number(line.slice(at + 1));
  }
  return out;
}

function push(name, t, v) {
  const s = series[name];
  s.push({ t, v });
  while (s.length && s[0].t < t - WINDOW_S * 1000) s.shift();
}

function drawChart(svg, points, now) {
  const values = points.map((p) => p.v).filter((v) => v !== null);
  const peak = values.length ? Math.max(...values) : 0;
  const scale = peak > 0 ? peak : 1;
  const segments = [];
  let current = [];
  for (const p of points) {
    if (p.v === null) {
      if (current.length) segments.push(current);
      current = [];
      continue;
    }
    const x = 300 - ((now - p.t) / 1000) * (300 / WINDOW_S);
    const y = 78 - (p.v / scale) * 74;
    current.push(`${x.toFixed(1)},${y.toFixed(1)}`);
  }
  if (current.length) segments.push(current);
  const ns = 'http://www.w3.org/2000/svg';
  svg.replaceChildren(...segments.map((seg) => {
    const line = document.createElementNS(ns, 'polyline');
    // A lone point still shows as a short flat line.
    line.setAttribute('points', seg.length === 1 ? `${seg[0]} ${seg[0]}` : seg.join(' '));
    return line;
  }));
  const last = points.length ? points[points.length - 1].v : null;
  svg.dataset.peak = peak;
  svg.dataset.last = last === null ? '' : last;
  svg.dataset.sum = values.reduce((a, b) => a + b, 0);
  return last;
}

async function pollMetrics() {
  try {
    const r = await fetch('/metrics', { cache: 'no-store' });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const m = parseMetrics(await r.text());
    const now = Date.now();
    const sample = {
      t: now,
      commit: m.keel_commit_index,
      applySum: m.keel_apply_duration_seconds_sum,
      applyCount: m.keel_apply_duration_seconds_count,
    };
    if (lastMetrics) {
      const dt = (now - lastMetrics.t) / 1000;
      push('commits', now, Math.max(0, (sample.commit - lastMetrics.commit) / dt));
      const batches = sample.applyCount - lastMetrics.applyCount;
      // No batch applied in that second: a gap, not a latency of zero.
      push('apply', now, batches > 0 ? ((sample.applySum - lastMetrics.applySum) / batches) * 1000 : null);
    }
    lastMetrics = sample;
    const commits = drawChart($('chart-commits'), series.commits, now);
    const apply = drawChart($('chart-apply'), series.apply, now);
    $('commits-peak').textContent = Number($('chart-commits').dataset.peak).toFixed(1);
    $('apply-peak').textContent = Number($('chart-apply').dataset.peak).toFixed(2);
    $('commits-now').textContent = commits === null ? '–' : commits.toFixed(1);
    $('apply-now').textContent = apply === null ? '–' : `${apply.toFixed(2)} ms`;
  } catch (e) {
    // pollCluster's banner already says when this node is gone.
  } finally {
    setTimeout(pollMetrics, POLL_MS);
  }
}

// ---------------------------------------------------------------- events

function describe(e) {
  switch (e.type) {
    case 'state':
      return `${e.role}, term ${e.term}, leader ${dash(e.leader)}`;
    case 'config':
      return `configuration at index ${e.index}: voters [${e.voters}] learners [${e.learners}]`;
    case undefined:
      // The stream starts with the node's whole status.
      return `connected to node ${e.node_id}: ${e.role}, term ${e.term}, leader ${dash(e.leader_id)}`;
    default:
      return JSON.stringify(e);
  }
}

function followEvents() {
  const list = $('events');
  const source = new EventSource('/v1/events');
  source.onmessage = (msg) => {
    let e;
    try {
      e = JSON.parse(msg.data);
    } catch {
      e = { type: 'raw', data: msg.data };
    }
    const item = el('li', { 'data-type': e.type || 'status' },
      el('time', {}, new Date().toLocaleTimeString()), describe(e));
    list.prepend(item);
    while (list.children.length > MAX_EVENTS) list.lastChild.remove();
  };
  // EventSource reconnects by itself when the stream drops.
}

pollCluster();
pollMetrics();
followEvents();
