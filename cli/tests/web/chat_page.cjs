// The web chat page end to end in headless Chromium (Debian's `chromium`,
// driven by npm's `playwright-core`):
//
//   node chat_page.cjs BASE_URL PLAYWRIGHT_CORE_DIR [IMAGE]
//
// Loads the page from a running `spinel serve --ignore-eos` (answers go on
// until stopped), checks the model info, types a question, sees the answer
// stream in (its text grows over several observations, tokens/s shown),
// presses Stop (the text stops growing, the buttons flip back, the server
// frees the session), asks again, and checks the page never requested
// anything but this server. Exits non-zero on any failure.
//
// With IMAGE, the server serves a vision model (`--mmproj`): the page offers
// to attach an image, shows it, sends it with the question, and shows the
// encode time the server reports for it; a new chat then sends none.
"use strict";

const [base, pwDir, image] = process.argv.slice(2);
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

async function askWithImage(page) {
  await page.waitForFunction(() => document.getElementById("info").textContent.includes("images"), null, {
    timeout: 10000,
  });
  check(await page.isVisible("#attach"), "the Image button is shown for a vision model");
  await page.setInputFiles("#file", image);
  await page.waitForSelector("#preview img", { timeout: 10000 });
  await page.fill("#input", "What is in this image?");
  await page.press("#input", "Enter");
  await page.waitForFunction(() => !document.getElementById("send").disabled, null, { timeout: 60000 });
  check(await page.isHidden("#preview"), "the attachment is cleared once sent");
  const shown = await page.locator(".msg.user img").count();
  check(shown === 1, "the user message shows its image");
  const answer = await page.locator(".msg.assistant span").nth(0).textContent();
  check(answer.length > 0, "an answer about the image");
  const speed = await page.textContent("#speed");
  check(/image encoded in \d+ ms/.test(speed), "the image's encode time shown: " + speed);
  const errs = await page.locator(".msg.error").allTextContents();
  check(errs.length === 0, "no errors: " + errs.join("; "));
  // The random dev model runs to the end of the context, so a follow-up
  // would not fit: a new chat instead, whose text question has no image.
  await page.click("#reset");
  await page.fill("#input", "Say something.");
  await page.press("#input", "Enter");
  await page.waitForFunction(() => !document.getElementById("send").disabled, null, { timeout: 60000 });
  check(!/image encoded/.test(await page.textContent("#speed")), "a new chat sends no image");
  check((await page.locator(".msg.error").count()) === 0, "no errors after a new chat");
  return answer;
}

(async () => {
  const browser = await chromium.launch({ executablePath, headless: true, args: ["--no-sandbox"] });
  try {
    const page = await browser.newPage();
    const foreign = [];
    page.on("request", (r) => {
      const url = r.url();
      if (!url.startsWith(base) && !url.startsWith("data:")) foreign.push(url);
    });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(base + "/");
    const models = await (await fetch(base + "/v1/models")).json();
    const id = models.data[0].id;
    await page.waitForFunction((id) => document.getElementById("info").textContent.includes(id), id, {
      timeout: 10000,
    });

    if (image) {
      const answer = await askWithImage(page);
      check(foreign.length === 0, "requests beyond the server: " + foreign.join(", "));
      check(errors.length === 0, "page errors: " + errors.join("; "));
      console.log("ok web chat page with an image:", JSON.stringify(answer.slice(0, 60)));
      return;
    }
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
