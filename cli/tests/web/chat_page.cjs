// The web chat page end to end in headless Chromium (Debian's `chromium`,
// driven by npm's `playwright-core`):
//
//   node chat_page.cjs BASE_URL PLAYWRIGHT_CORE_DIR
//
// Loads the page from a running `spinel serve --ignore-eos` (answers go on
// until stopped), checks the model info, types a question, sees the answer
// stream in (its text grows over several observations, tokens/s shown),
// presses Stop (the text stops growing, the buttons flip back, the server
// frees the session), asks again, and checks the page never requested
// anything but this server. Exits non-zero on any failure.
"use strict";

const [base, pwDir] = process.argv.slice(2);
const { chromium } = require(pwDir);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function health() {
  const r = await fetch(base + "/health");
  return r.json();
}

async function askAndStop(page, question, n) {
  await page.fill("#input", question);
  await page.press("#input", "Enter");
  const answer = page.locator(".msg.assistant span").nth(n);
  // Streaming: the answer's text is seen growing several times.
  const seen = new Set();
  const deadline = Date.now() + 60000;
  while (seen.size < 4) {
    check(Date.now() < deadline, `the answer to ${JSON.stringify(question)} did not stream`);
    const t = await answer.textContent();
    if (t) seen.add(t.length);
    await sleep(50);
  }
  check(await page.isDisabled("#send"), "Send is disabled while answering");
  check(!(await page.isDisabled("#stop")), "Stop is enabled while answering");
  check(/tokens\/s/.test(await page.textContent("#speed")), "tokens/s shown");
  check((await health()).busy === 1, "the server is generating");

  await page.click("#stop");
  await page.waitForFunction(() => !document.getElementById("send").disabled, null, { timeout: 10000 });
  check(await page.isDisabled("#stop"), "Stop is disabled after stopping");
  const stopped = await answer.textContent();
  await sleep(700);
  check((await answer.textContent()) === stopped, "the answer stopped growing");
  // The aborted request cancels the generation on the server.
  const until = Date.now() + 10000;
  while ((await health()).busy !== 0) {
    check(Date.now() < until, "the server went on generating after Stop");
    await sleep(100);
  }
  return stopped;
}

(async () => {
  const browser = await chromium.launch({ executablePath, headless: true, args: ["--no-sandbox"] });
  try {
    const page = await browser.newPage();
    const foreign = [];
    page.on("request", (r) => {
      if (!r.url().startsWith(base)) foreign.push(r.url());
    });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(base + "/");
    const models = await (await fetch(base + "/v1/models")).json();
    const id = models.data[0].id;
    await page.waitForFunction((id) => document.getElementById("info").textContent.includes(id), id, {
      timeout: 10000,
    });

    const first = await askAndStop(page, "Tell me a long story about a dragon.", 0);
    check(first.length > 0, "some answer before Stop");
    // The page keeps working: a second question, answered and stopped too.
    const second = await askAndStop(page, "Now tell me about the sea.", 1);
    check(second.length > 0, "a second answer");
    check((await page.locator(".msg.user").count()) === 2, "two user messages shown");

    check(foreign.length === 0, "requests beyond the server: " + foreign.join(", "));
    check(errors.length === 0, "page errors: " + errors.join("; "));
    console.log("ok web chat page:", JSON.stringify({ first: first.slice(0, 60), second: second.slice(0, 60) }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
