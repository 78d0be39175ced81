// Drives a node's dashboard in headless Chromium (run by host/tests/dashboard.rs, which
// starts the cluster and passes it in through the environment):
//   KEEL_DASH_URL    the page's node (a follower: its page must show the whole cluster)
//   KEEL_NODE_PIDS   id:pid,… of the nodes; the script kills -9 a follower other than the
//                    page's node, chosen from the page (the test reaps it)
//   KEEL_ARTIFACTS   where the screenshots go
//   KEEL_CHROMIUM    the browser (default /usr/bin/chromium)
// Prints one line per step and exits non-zero at the first failed check.
import { chromium } from 'playwright-core';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const DASH = env('KEEL_DASH_URL');
const PIDS = Object.fromEntries(env('KEEL_NODE_PIDS').split(',').map((p) => p.split(':')));
const ARTIFACTS = env('KEEL_ARTIFACTS');
const BROWSER = process.env.KEEL_CHROMIUM || '/usr/bin/chromium';
const BURST = 300;

const started = Date.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// One put through the page's node (a follower: fetch follows its 307 to the leader),
// retried while the cluster answers 503 (an election) or a connection drops, for 10 s.
async function put(key, value) {
  const until = Date.now() + 10_000;
  for (;;) {
    let why;
    try {
      const r = await fetch(`${DASH}/v1/plugins/kv/commands`, {
        method: 'POST',
        body: JSON.stringify({ op: 'put', key, value }),
      });
      if (r.status === 200) return;
      why = `HTTP ${r.status} ${await r.text()}`;
      if (r.status !== 503) fail(`put ${key}: ${why}`);
    } catch (e) {
      why = e.message;
    }
    if (Date.now() > until) fail(`put ${key}: ${why}`);
    await sleep(100);
  }
}
const log = (msg) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);
const fail = (msg) => {
  throw new Error(msg);
};

mkdirSync(ARTIFACTS, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), 'keel-dashboard-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: BROWSER,
  headless: true,
  viewport: { width: 1200, height: 900 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const problems = [];
let code = 0;
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`uncaught: ${e.message}`));
  const shot = async (name) => {
    const path = join(ARTIFACTS, `${name}.png`);
    await page.screenshot({ path, fullPage: true });
    log(`screenshot ${path}`);
  };
  const rows = () => page.$$eval('#members tr.member', (trs) => trs.map((tr) => ({
    id: tr.dataset.node,
    health: tr.dataset.health,
    role: tr.children[2].textContent,
  })));

  // 1. Three members, all healthy, and the leader, through a follower's page.
  await page.goto(`${DASH}/`);
  await page.waitForFunction(() => {
    const trs = document.querySelectorAll('#members tr.member[data-health="healthy"]');
    return trs.length === 3 && /^node \d+$/.test(document.getElementById('leader').textContent);
  }, null, { timeout: 20_000 }).catch(() => fail('the page did not list 3 healthy members and a leader within 20 s'));
  const first = await rows();
  const leaderText = await page.textContent('#leader');
  const leaders = first.filter((r) => r.role.startsWith('Leader'));
  if (leaders.length !== 1 || leaderText !== `node ${leaders[0].id}`) {
    fail(`leader shown as ${leaderText}, rows ${JSON.stringify(first)}`);
  }
  const servedBy = await page.textContent('#served-by');
  if (leaders[0].id === servedBy) fail(`the page's node ${servedBy} leads: it should be a follower's page`);
  const victim = first.find((r) => r.id !== servedBy && r.id !== leaders[0].id);
  if (!victim || !PIDS[victim.id]) fail(`no follower to kill among ${JSON.stringify(first)} (pids ${JSON.stringify(PIDS)})`);
  const VICTIM_ID = victim.id;
  log(`3 members listed, ${leaderText} leads: ${JSON.stringify(first)}`);
  if ((await page.$$('#plugins tr[data-plugin="kv"]')).length !== 1) fail('the kv plugin is not listed');
  // Each member's blob state (design §6): nothing to fetch on a healthy new cluster.
  const blobCells = await page.$$eval('#members tr.member td.blobs', (tds) => tds.map((td) => td.textContent));
  if (blobCells.length !== 3 || blobCells.some((t) => t !== 'all held')) fail(`blob column: ${JSON.stringify(blobCells)}`);
  await page.waitForSelector('#events li', { timeout: 5_000 }).catch(() => fail('no event from /v1/events'));
  await shot('1-cluster');

  // 2. kill -9 of a follower: its row turns unhealthy within a few seconds.
  process.kill(Number(PIDS[VICTIM_ID]), 'SIGKILL');
  const killedAt = Date.now();
  await page.waitForSelector(`#members tr.member[data-node="${VICTIM_ID}"][data-health="unhealthy"]`, { timeout: 6_000 })
    .catch(() => fail(`node ${VICTIM_ID}'s row was not unhealthy 6 s after kill -9`));
  log(`node ${VICTIM_ID} unhealthy ${Date.now() - killedAt} ms after kill -9`);
  const after = await rows();
  const others = after.filter((r) => r.id !== VICTIM_ID);
  if (after.length !== 3 || others.some((r) => r.health !== 'healthy')) {
    fail(`after the kill: ${JSON.stringify(after)}`);
  }
  await shot('2-follower-killed');

  // 3. A burst of puts moves the commit chart (and the plugin's command count).
  const chart = () => page.$eval('#chart-commits', (svg) => ({
    sum: Number(svg.dataset.sum || 0),
    peak: Number(svg.dataset.peak || 0),
    lines: svg.querySelectorAll('polyline').length,
  }));
  const before = await chart();
  const commandsBefore = Number(await page.textContent('#plugins tr[data-plugin="kv"] td:last-child'));
  for (let i = 0; i < BURST; i++) {
    await put(`dash-${i}`, `v${i}`);
  }
  log(`${BURST} puts done; chart before: ${JSON.stringify(before)}`);
  await page.waitForFunction(
    ([sum, want]) => Number(document.getElementById('chart-commits').dataset.sum || 0) >= sum + want,
    [before.sum, BURST / 2],
    { timeout: 8_000 },
  ).catch(async () => fail(`the commit chart did not move: before ${JSON.stringify(before)}, now ${JSON.stringify(await chart())}`));
  const moved = await chart();
  if (moved.lines < 1 || moved.peak <= 0) fail(`no line drawn: ${JSON.stringify(moved)}`);
  await page.waitForFunction(
    ([n]) => Number(document.querySelector('#plugins tr[data-plugin="kv"] td:last-child').textContent) >= n,
    [commandsBefore + BURST],
    { timeout: 5_000 },
  ).catch(() => fail('the kv plugin\'s command count did not move'));
  log(`commit chart moved: ${JSON.stringify(moved)}`);
  await shot('3-after-burst');

  // 4. No console errors along the way.
  if (problems.length) fail(problems.join('\n'));
  log('no console errors');
  console.log('dashboard check passed');
} catch (e) {
  console.error(`FAILED: ${e.message}`);
  if (problems.length) console.error(problems.join('\n'));
  try {
    const page = context.pages()[0];
    if (page) await page.screenshot({ path: join(ARTIFACTS, 'failure.png'), fullPage: true });
  } catch {
    // The failure itself is what matters.
  }
  code = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
