// Drives the chat page in real Chromium (run by tests/tests/browser.rs).
//
//   node chat.mjs <balancer base URL> <output folder> [--admin URL] [--meeting ID]
//
// Two WebSocket pages and one SSE page join one meeting and exchange
// messages. The script then prints `READY <node>` and waits for a line on
// stdin, meaning the test killed that node (kill -9): the pages must
// reconnect by themselves to another node and keep chatting. Then it prints
// `RESTART <node>` and waits again, meaning the node is back: the meeting
// moves back to it with its history, and the pages must follow it with no
// gap and no duplicate. Screenshots go to the output folder. Exits 0 only
// if every check passed.

import { chromium } from "playwright-core";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";

const STEP = 15_000; // patience for any one thing that should happen soon
const TOTAL = 55_000; // the whole script

const [base, outDir, ...rest] = process.argv.slice(2);
if (!base || !outDir) {
  console.error("usage: node chat.mjs <base URL> <output folder> [--admin URL] [--meeting ID]");
  process.exit(2);
}
const opt = (name) => {
  const i = rest.indexOf(name);
  return i >= 0 ? rest[i + 1] : undefined;
};
const admin = opt("--admin");
const meeting = opt("--meeting") || `browser-${Date.now()}`;
mkdirSync(outDir, { recursive: true });

const log = (...a) => console.error("[chat.mjs]", ...a);
const fail = (msg) => {
  throw new Error(msg);
};
const check = (ok, msg) => ok || fail(msg);

const killer = setTimeout(() => {
  console.error(`[chat.mjs] FAIL: the whole run took over ${TOTAL} ms`);
  process.exit(1);
}, TOTAL);

const stdinLines = createInterface({ input: process.stdin });
const nextStdinLine = () =>
  new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("no go-ahead on stdin")), STEP);
    stdinLines.once("line", (l) => {
      clearTimeout(t);
      resolve(l);
    });
    stdinLines.once("close", () => reject(new Error("stdin closed")));
  });

async function routeOf(m) {
  if (!admin) return undefined;
  const r = await fetch(`${admin}/route?meeting_id=${encodeURIComponent(m)}`);
  check(r.ok, `/route answered ${r.status}`);
  return (await r.json()).node;
}

let browser;
const pages = {};
const consoleLines = [];

async function openPage(who, { sse = false } = {}) {
  const page = await browser.newPage({ viewport: { width: 900, height: 640 } });
  page.on("console", (m) => consoleLines.push(`${who}: ${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`${who}: pageerror: ${e.message}`));
  await page.goto(`${base}/?meeting_id=${encodeURIComponent(meeting)}`, { timeout: STEP });
  check((await page.inputValue("#meeting")) === meeting, `${who}: meeting not prefilled from the URL`);
  await page.fill("#name", who);
  if (sse) await page.check("#mode-sse");
  // Record every state the page shows, to check it went through reconnecting.
  await page.evaluate(() => {
    window.__states = [];
    const s = document.getElementById("state");
    new MutationObserver(() => window.__states.push(s.dataset.state)).observe(s, {
      attributes: true,
      attributeFilter: ["data-state"],
    });
  });
  await page.click("#join");
  await connected(page, who);
  pages[who] = page;
  return page;
}

async function connected(page, who, notOn) {
  await page.waitForFunction(
    (notOn) => {
      const state = document.getElementById("state").dataset.state;
      const node = document.getElementById("node").textContent;
      return state === "connected" && node && node !== "–" && node !== notOn;
    },
    notOn,
    { timeout: STEP },
  ).catch(() => fail(`${who}: not connected${notOn ? ` to a node other than ${notOn}` : ""} in time`));
}

const nodeOf = (page) => page.textContent("#node");

async function say(who, text) {
  const page = pages[who];
  await page.fill("#text", text);
  await page.click("#send");
}

// Waits until `who` shows a message line `text` from `from`.
async function sees(who, from, text) {
  await pages[who]
    .waitForFunction(
      ([from, text]) =>
        [...document.querySelectorAll("#messages li[data-type=message]")].some(
          (li) => li.dataset.from === from && li.querySelector(".text")?.textContent === text,
        ),
      [from, text],
      { timeout: STEP },
    )
    .catch(() => fail(`${who} never showed "${text}" from ${from}`));
}

// Every page shows each of these messages exactly once (dedupe by seq), and
// seqs rise, except where the page said history was lost: a room whose
// node died starts numbering afresh on its new node.
async function noDuplicates(who, texts) {
  const rows = await pages[who].$$eval("#messages li", (lis) =>
    lis.map((li) => ({
      seq: li.dataset.seq === undefined ? null : Number(li.dataset.seq),
      type: li.dataset.type,
      text: li.querySelector(".text")?.textContent ?? null,
      lost: li.textContent.includes("could not be recovered"),
    })),
  );
  for (const t of texts) {
    const n = rows.filter((r) => r.type === "message" && r.text === t).length;
    check(n === 1, `${who} shows "${t}" ${n} times`);
  }
  let prev = null;
  let lost = false;
  for (const r of rows) {
    lost ||= r.lost;
    if (r.seq === null) continue;
    if (prev !== null && r.seq <= prev && !lost) {
      fail(`${who} shows seq ${r.seq} after ${prev} without a history-loss notice`);
    }
    prev = r.seq;
    lost = false;
  }
}

const lossNotices = (page) =>
  page.$$eval("#messages li.system", (lis) =>
    lis.filter((li) => li.textContent.includes("could not be recovered")).length);

async function shoot(name) {
  for (const [who, page] of Object.entries(pages)) {
    const path = join(outDir, `${name}-${who}.png`);
    await page.screenshot({ path });
  }
}

async function main() {
  try {
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      timeout: STEP,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
  } catch (e) {
    fail(`Chromium did not start: ${e.message}`);
  }
  log(`Chromium ${browser.version()}, meeting ${meeting}`);

  await openPage("ann");
  await openPage("bob");
  await openPage("cat", { sse: true });
  check((await pages.cat.textContent("#mode")) === "SSE", "cat is not in SSE mode");

  // One meeting, one node, the one /route names.
  const nodes = await Promise.all(Object.values(pages).map(nodeOf));
  check(new Set(nodes).size === 1, `the pages show different nodes: ${nodes}`);
  const node = nodes[0];
  const routed = await routeOf(meeting);
  if (routed !== undefined) check(routed === node, `/route says ${routed}, the pages say ${node}`);
  for (const who of Object.keys(pages)) {
    await pages[who]
      .waitForFunction(() => document.getElementById("members").textContent === "3", null, { timeout: STEP })
      .catch(() => fail(`${who} does not show 3 members`));
  }

  // WebSocket to everyone, SSE (POST) to everyone.
  await say("ann", "hello from ann");
  for (const who of ["ann", "bob", "cat"]) await sees(who, "ann", "hello from ann");
  await say("cat", "hi from cat over SSE");
  for (const who of ["ann", "bob", "cat"]) await sees(who, "cat", "hi from cat over SSE");
  await shoot("before");
  log(`all three pages chat through ${node}`);

  // The test kills the node; the pages find their way to another.
  console.log(`READY ${node}`);
  const go = await nextStdinLine();
  log(`go-ahead: ${go}`);
  for (const who of Object.keys(pages)) await connected(pages[who], who, node);
  const after = await Promise.all(Object.values(pages).map(nodeOf));
  check(new Set(after).size === 1, `after the kill the pages show different nodes: ${after}`);
  const routedAfter = await routeOf(meeting);
  if (routedAfter !== undefined) {
    check(routedAfter === after[0], `/route says ${routedAfter} after the kill, the pages say ${after[0]}`);
  }
  for (const who of Object.keys(pages)) {
    const states = await pages[who].evaluate(() => window.__states);
    check(
      states.includes("reconnecting") || states.includes("moved"),
      `${who} never showed reconnecting/moved: ${states}`,
    );
  }
  log(`reconnected to ${after[0]}`);

  await say("bob", "still here after the crash");
  for (const who of ["ann", "bob", "cat"]) await sees(who, "bob", "still here after the crash");
  await say("cat", "sse too");
  for (const who of ["ann", "bob", "cat"]) await sees(who, "cat", "sse too");
  for (const who of Object.keys(pages)) {
    await noDuplicates(who, ["hello from ann", "hi from cat over SSE", "still here after the crash", "sse too"]);
  }
  await shoot("after");

  // The test restarts the killed node: the ring gives the meeting back to
  // it, the room moves with its history (4001 / `moved`), and the pages
  // follow with no gap and no duplicate.
  const seen = {};
  const losses = {};
  for (const [who, page] of Object.entries(pages)) {
    seen[who] = await page.evaluate(() => {
      window.__states = [];
      return window.roompinChat.lastSeq;
    });
    losses[who] = await lossNotices(page);
  }
  console.log(`RESTART ${node}`);
  log(`go-ahead: ${await nextStdinLine()}`);
  for (const who of Object.keys(pages)) await connected(pages[who], who, after[0]);
  const back = await Promise.all(Object.values(pages).map(nodeOf));
  check(back.every((n) => n === node), `after the restart the pages show ${back}, not ${node}`);
  for (const who of Object.keys(pages)) {
    const states = await pages[who].evaluate(() => window.__states);
    check(states.includes("moved"), `${who} never showed moved: ${states}`);
  }
  await say("ann", "welcome back");
  for (const who of ["ann", "bob", "cat"]) await sees(who, "ann", "welcome back");
  for (const [who, page] of Object.entries(pages)) {
    // A move keeps the history: every seq after the last one seen before it
    // is shown, once, in order.
    const seqs = await page.$$eval("#messages li[data-seq]", (lis, from) =>
      lis.map((li) => Number(li.dataset.seq)).filter((s) => s > from), seen[who]);
    const want = seqs.map((_, i) => seen[who] + 1 + i);
    check(
      seqs.length > 0 && seqs.join() === want.join(),
      `${who}: seqs after the move are ${seqs}, want ${want}`,
    );
    const lost = (await lossNotices(page)) - losses[who];
    check(lost === 0, `${who}: the move lost history (${lost} new history-loss notices)`);
    await noDuplicates(who, ["hello from ann", "still here after the crash", "welcome back"]);
  }
  await shoot("moved");
  console.log(`PASS ${node} -> ${after[0]} -> ${node}`);
}

let code = 0;
try {
  await main();
} catch (e) {
  code = 1;
  console.error(`[chat.mjs] FAIL: ${e.message}`);
  try {
    if (browser) await shoot("failure");
  } catch (_) {}
}
if (consoleLines.length) writeFileSync(join(outDir, "console.log"), consoleLines.join("\n") + "\n");
try {
  if (browser) await browser.close();
} catch (_) {}
clearTimeout(killer);
stdinLines.close();
process.exit(code);
