// Drives headless Chromium (Debian's, not a downloaded one) for the test of
// `labspan web` (tests/tests/observability.rs). One JSON command a line on
// stdin, one JSON answer a line on stdout ({"ok": ...} or {"error": "..."}):
//   {"cmd": "open", "url": U}                 loads the page
//   {"cmd": "look"}                           what the page shows now (hosts, nodes, graph, steps)
//   {"cmd": "console", "lab", "node", "type", "expect", "timeout_ms"}
//                                             clicks the node, types a line into its
//                                             console, waits for `expect` in the terminal
//   {"cmd": "screenshot", "path": P}
// The browser closes when stdin ends.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const profile = mkdtempSync(join(tmpdir(), "labspan-web-chromium-"));
let browser = null;
let page = null;

async function open(url) {
  // A persistent context on a fresh folder: Chromium's --user-data-dir,
  // which playwright wants as this parameter.
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 960 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  page = browser.pages()[0] || await browser.newPage();
  // Generous bounds for every wait (the test's own bound is 150 s an
  // answer): on 2 cores beside a lab of TCG guests, Chromium's first load
  // took more than playwright's default 30 s in CI.
  page.setDefaultTimeout(120000);
  page.setDefaultNavigationTimeout(120000);
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  await page.goto(url);
  await page.waitForSelector("section[data-host]");
  if (errors.length) throw new Error("the page failed: " + errors.join("; "));
  // Gone if the page reloads: `look` reports it, so a test can tell a live
  // update from a reload.
  await page.evaluate(() => { window.loadedOnce = true; });
  return true;
}

async function look() {
  return page.evaluate(() => ({
    loadedOnce: window.loadedOnce === true,
    error: document.getElementById("error").textContent,
    role: document.getElementById("role").textContent,
    hosts: [...document.querySelectorAll("section[data-host]")].map(h => ({
      name: h.dataset.host,
      up: h.dataset.up === "true",
      nodes: [...h.querySelectorAll(".node")].map(n => ({ name: n.dataset.lab + "/" + n.dataset.node, state: n.dataset.state })),
    })),
    // The progress list: one line per step.
    steps: [...document.querySelectorAll("#steps li")].map(l => l.textContent),
    // The topology drawing: each node and the host box it is drawn in.
    graph: cy.nodes(".vm").map(n => ({ name: n.data("lab") + "/" + n.data("node"), host: n.parent().id().replace(/^host:/, "") })),
  }));
}

async function typeInConsole({ lab, node, type, expect, timeout_ms }) {
  await page.click(`.node[data-lab="${lab}"][data-node="${node}"]`);
  await page.waitForSelector('#console.open[data-connected="true"]');
  await page.click("#term");
  await page.keyboard.type(type);
  await page.keyboard.press("Enter");
  const screen = () => page.evaluate(() => {
    const b = term.buffer.active;
    const lines = [];
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
    return lines.join("\n");
  });
  const deadline = Date.now() + (timeout_ms || 60000);
  let text = "";
  while (Date.now() < deadline) {
    text = await screen();
    if (text.includes(expect)) return text;
    await new Promise(r => setTimeout(r, 250));
  }
  throw new Error(`the console never showed ${JSON.stringify(expect)}; it shows:\n${text}`);
}

const commands = {
  open: c => open(c.url),
  look: () => look(),
  console: c => typeInConsole(c),
  screenshot: async c => { await page.screenshot({ path: c.path }); return c.path; },
};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer;
  try {
    const c = JSON.parse(line);
    const run = commands[c.cmd];
    if (!run) throw new Error(`unknown command ${c.cmd}`);
    answer = { ok: await run(c) };
  } catch (e) {
    answer = { error: String(e && e.stack || e) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
if (browser) await browser.close();
rmSync(profile, { recursive: true, force: true });
