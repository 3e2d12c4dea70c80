// The workbench: a browser client of the key API (POST api/v1/colorize), served by the service
// itself. No framework and no build step; it talks only to this page's own origin (plus the
// result links the service hands out, and image URLs the user pastes).
//
// Every URL is relative to the page, so the workbench works under any route prefix.

const MAX_IN_FLIGHT = 3;          // photos sent at once (the key's rate limit may allow fewer)
const IN_PROGRESS_RETRY_S = 2;    // 409 "still in progress": ask again after this long
const IMAGE_NAME = /\.(jpe?g|png|webp|tiff?|bmp|gif)$/i;
const KEY_STORAGE = "colorize.apiKey";

const $ = (selector, root = document) => root.querySelector(selector);
const api = (path) => new URL(path, document.baseURI).href;

const state = {
  key: "",
  pricing: null,        // GET api/v1/pricing
  account: null,        // GET api/v1/account
  items: [],            // one per photo, in the order added
  nextId: 1,
  inFlight: 0,
  pausedUntil: 0,       // a 429 or 503 with Retry-After pauses sending until then (ms since epoch)
  bucket: null,         // the key's token bucket, mirrored client-side
};

// ---- price and balance -------------------------------------------------------------------

function options() {
  const model = $('input[name="model"]:checked')?.value ?? "large";  // none checked: no colorizer is loaded
  const large = model === "large";
  const seed = $("#seed").value.trim();
  return {
    model,
    clean_scratches: $('input[name="clean_scratches"]').checked,
    face_remaster: $('input[name="face_remaster"]').checked,
    prompt: large ? $("#prompt").value.trim() : "",
    seed: large ? seed : "",
  };
}

function priceOf(opts) {
  const p = state.pricing;
  if (!p) return null;
  let price = p.models[opts.model] ?? 0;
  for (const [name, credits] of Object.entries(p.addOns)) if (opts[name]) price += credits;
  return price;
}

const credits = (n) => `${n} credit${n === 1 ? "" : "s"}`;

function renderPrice() {
  const opts = options();
  $("#guidance").disabled = opts.model !== "large";
  for (const tag of document.querySelectorAll("[data-price]")) {
    const [kind, name] = tag.dataset.price.split(":");
    const value = state.pricing?.[kind === "model" ? "models" : "addOns"]?.[name];
    tag.textContent = value === undefined ? "" : kind === "model" ? `(${credits(value)})` : `(+${credits(value)})`;
  }
  const ready = state.items.filter((item) => item.state === "ready").length;
  const price = priceOf(opts);
  const start = $("#start");
  if (price === null) {
    $("#price").textContent = "Price unknown: the price list could not be read.";
  } else if (ready === 0) {
    $("#price").textContent = `${credits(price)} per photo with these options. Add photos to start.`;
  } else {
    $("#price").textContent = `${credits(price)} per photo × ${ready} photo${ready === 1 ? "" : "s"} = ` +
      `${credits(price * ready)}. Charged only for photos that succeed.`;
  }
  start.disabled = ready === 0;
  start.textContent = ready === 0 ? "Colorize"
    : `Colorize ${ready} photo${ready === 1 ? "" : "s"}` + (price === null ? "" : ` (${credits(price * ready)})`);
  const done = state.items.filter((item) => item.state === "done").length;
  $("#download-all").disabled = done === 0;
  $("#clear-done").disabled = done === 0;
  $("#photo-count").textContent = state.items.length ? `(${done} of ${state.items.length} done)` : "";
  $("#empty").hidden = state.items.length > 0;
}

async function loadPricing() {
  try {
    const response = await fetch(api("api/v1/pricing"));
    if (response.ok) state.pricing = await response.json();
  } catch { /* shown as "price unknown" */ }
  renderPrice();
}

function showBalance(text, bad = false) {
  const balance = $("#balance");
  balance.textContent = text;
  balance.classList.toggle("bad", bad);
}

function setCredits(remaining) {
  if (!state.account || !Number.isFinite(remaining)) return;
  state.account.credits = remaining;
  renderAccount();
}

function renderAccount() {
  const a = state.account;
  const who = a.name ? `${a.name} (${a.keyId})` : `key ${a.keyId}`;
  const rate = a.rateLimit;
  showBalance(`Balance: ${credits(a.credits)} · ${who} · up to ${rate.burst} requests at once, ` +
    `then ${rate.perSecond} per second`, a.credits === 0);
}

// Answers to concurrent jobs can arrive out of order, so once nothing is in flight the balance
// is read again: the last word is the ledger's.
async function refreshBalance() {
  if (!state.account || !state.key) return;
  try {
    const response = await fetch(api("api/v1/account"), { headers: { "X-Api-Key": state.key } });
    if (response.ok) setCredits((await response.json()).credits);
  } catch { /* keep what the last answer said */ }
}

async function loadAccount() {
  state.account = null;
  state.bucket = null;
  if (!state.key) {
    showBalance("Enter your key to see your balance.");
    return;
  }
  showBalance("Checking the key…");
  try {
    const response = await fetch(api("api/v1/account"), { headers: { "X-Api-Key": state.key } });
    const body = await readJson(response);
    if (!response.ok) {
      showBalance(explain(response.status, body.detail, retryAfter(response)).text, true);
      return;
    }
    state.account = body;
    state.bucket = { tokens: body.rateLimit.burst, at: performance.now() };
    renderAccount();
    pump();
  } catch {
    showBalance("Could not reach the service to check the key.", true);
  }
}

function setKey(value) {
  state.key = value.trim();
  if ($("#remember-key").checked && state.key) localStorage.setItem(KEY_STORAGE, state.key);
  loadAccount();
}

// ---- adding photos -----------------------------------------------------------------------

function addFiles(files) {
  let skipped = 0;
  for (const file of files) {
    if (!(file.type.startsWith("image/") || IMAGE_NAME.test(file.name))) {
      skipped += 1;
      continue;
    }
    addItem({ name: file.webkitRelativePath || file.name, file, preview: URL.createObjectURL(file) });
  }
  if (skipped) notify(`Skipped ${skipped} file${skipped === 1 ? "" : "s"} that ${skipped === 1 ? "is" : "are"} not an image.`, "info");
}

function addUrl(text) {
  let url;
  try {
    url = new URL(text.trim());
  } catch {
    notify("That is not a URL. Paste an address starting with http:// or https://.", "info");
    return false;
  }
  if (!["http:", "https:"].includes(url.protocol)) {
    notify("Only http:// and https:// image URLs can be colorized.", "info");
    return false;
  }
  addItem({ name: decodeURIComponent(url.pathname.split("/").pop() || url.host), url: url.href, preview: url.href });
  return true;
}

function addItem(source) {
  const item = { id: state.nextId++, state: "ready", ...source };
  state.items.push(item);
  $("#photos").append(renderCard(item));
  setStatus(item, "ready", "Ready: press Colorize.");
  renderPrice();
}

async function filesFromDrop(dataTransfer) {
  const entries = [...(dataTransfer.items || [])]
    .filter((entry) => entry.kind === "file")
    .map((entry) => entry.webkitGetAsEntry?.())
    .filter(Boolean);
  if (!entries.length) return [...dataTransfer.files];
  const files = [];
  for (const entry of entries) await walk(entry, "", files);
  return files;
}

async function walk(entry, folder, files) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    // Keep the folder in the name, as a folder picker would.
    files.push(folder ? new File([file], `${folder}${file.name}`, { type: file.type }) : file);
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {  // readEntries answers in batches until it returns none
      const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
      if (!batch.length) break;
      for (const child of batch) await walk(child, `${folder}${entry.name}/`, files);
    }
  }
}

// ---- the queue ---------------------------------------------------------------------------

function start() {
  const opts = options();
  for (const item of state.items) {
    if (item.state !== "ready") continue;
    item.options = opts;
    // One per photo and submission: a resend after a lost answer is not charged twice.
    item.idempotencyKey = crypto.randomUUID();
    setStatus(item, "queued", "Waiting to be sent…");
  }
  hideNotice();
  renderPrice();
  pump();
}

// Sends queued photos while fewer than MAX_IN_FLIGHT are out and the key's bucket has a token.
// The bucket mirrors the server's (burst, then perSecond): the server stays the judge, and a
// 429 (another client spending the same key) pauses everything until its Retry-After.
function pump() {
  clearTimeout(state.pumpTimer);
  const wait = state.pausedUntil - Date.now();
  if (wait > 0) {
    state.pumpTimer = setTimeout(pump, wait);
    return;
  }
  while (state.inFlight < MAX_IN_FLIGHT) {
    const item = state.items.find((candidate) => candidate.state === "queued");
    if (!item) return;
    const tokenWait = takeToken();
    if (tokenWait > 0) {
      state.pumpTimer = setTimeout(pump, tokenWait);
      return;
    }
    send(item);
  }
}

function takeToken() {
  const bucket = state.bucket;
  if (!bucket || !state.account) return 0;   // no key read: nothing to mirror
  const { perSecond, burst } = state.account.rateLimit;
  const now = performance.now();
  bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.at) / 1000) * perSecond);
  bucket.at = now;
  if (bucket.tokens >= 1) {
    bucket.tokens -= 1;
    return 0;
  }
  return Math.ceil(((1 - bucket.tokens) / perSecond) * 1000) + 20;
}

function send(item) {
  state.inFlight += 1;
  setStatus(item, "sending", "Uploading…", 0);
  const form = new FormData();
  if (item.file) form.append("image", item.file, item.file.name);
  else form.append("image", item.url);
  const opts = item.options;
  form.append("model", opts.model);
  form.append("clean_scratches", String(opts.clean_scratches));
  form.append("face_remaster", String(opts.face_remaster));
  if (opts.prompt) form.append("prompt", opts.prompt);
  if (opts.seed !== "") form.append("seed", opts.seed);

  // XMLHttpRequest rather than fetch: only it reports upload progress.
  const xhr = new XMLHttpRequest();
  xhr.open("POST", api("api/v1/colorize"));
  if (state.key) xhr.setRequestHeader("X-Api-Key", state.key);
  xhr.setRequestHeader("Idempotency-Key", item.idempotencyKey);
  xhr.upload.onprogress = (event) => {
    if (event.lengthComputable) setProgress(item, event.loaded / event.total);
  };
  xhr.upload.onload = () => setStatus(item, "sending", "Colorizing…", null);
  xhr.onload = () => finished(item, xhr.status, xhr.responseText, (name) => xhr.getResponseHeader(name));
  xhr.onerror = xhr.ontimeout = () => finished(item, 0, "", () => null);
  xhr.send(form);
}

async function finished(item, status, text, header) {
  state.inFlight -= 1;
  setCredits(Number.parseInt(header("X-Credits-Remaining"), 10));
  let body = {};
  try { body = JSON.parse(text || "{}"); } catch { body = { detail: text.slice(0, 200) }; }
  if (status === 200 && body.outputUrl) {
    await showResult(item, body.outputUrl);
  } else {
    failed(item, status, body.detail, Number.parseInt(header("Retry-After"), 10));
  }
  renderPrice();
  pump();
  if (state.inFlight === 0 && !state.items.some((other) => other.state === "queued")) refreshBalance();
}

function failed(item, status, detail, retryAfterS) {
  const { text, retryS, stopAll } = explain(status, detail, retryAfterS);
  if (status === 429 && state.bucket) state.bucket.tokens = 0;
  if (retryS) {  // sent again by itself once the delay has passed
    state.pausedUntil = Math.max(state.pausedUntil, Date.now() + retryS * 1000);
    setStatus(item, "waiting", text, null, state.pausedUntil);
    item.state = "queued";
    if (status !== 409) notify(text, "info", state.pausedUntil);
    return;
  }
  setStatus(item, "failed", text);
  if (stopAll) {  // 401 / 403: every other photo would be refused too
    for (const other of state.items) {
      if (other.state === "queued") setStatus(other, "ready", "Not sent: " + text);
    }
    notify(text);
    if (status === 401) $("#api-key").focus();
  }
}

// One readable sentence per documented error of the key API.
function explain(status, detail, retryAfterS) {
  const why = detail ? ` (${detail})` : "";
  const retry = Number.isFinite(retryAfterS) && retryAfterS > 0 ? retryAfterS : null;
  switch (status) {
    case 0:
      return { text: "Could not reach the service. Check the connection, then press Retry." };
    case 400:
      return { text: `The service could not use this photo${why}.` };
    case 401:
      return { text: `Your API key was not accepted${why}. Check the key above.`, stopAll: true };
    case 403:
      return { text: `Not enough credits for this photo${why}. Add credits to the key, then press Retry.`, stopAll: true };
    case 409:
      return { text: "Still being colorized from an earlier attempt; checking again shortly…", retryS: IN_PROGRESS_RETRY_S };
    case 413:
      return { text: `This photo is too large for the service${why}. Try a smaller file.` };
    case 429:
      return { text: "Too many requests for this key right now: sending again in {s} s.", retryS: retry ?? 2 };
    case 502:
      return { text: `The service failed while colorizing this photo${why}. Nothing was charged; press Retry.` };
    case 503:
      return retry
        ? { text: `The service is busy or not ready${why}: trying again in {s} s.`, retryS: retry }
        : { text: `The service cannot do this right now${why}. Nothing was charged; try again later.` };
    default:
      return { text: `Unexpected answer from the service: HTTP ${status}${why}.` };
  }
}

function retryAfter(response) {
  return Number.parseInt(response.headers.get("Retry-After"), 10);
}

async function readJson(response) {
  try { return await response.json(); } catch { return {}; }
}

// ---- results -----------------------------------------------------------------------------

async function showResult(item, outputUrl) {
  item.outputUrl = outputUrl;
  $(`#photo-${item.id}`).dataset.outputUrl = outputUrl;
  setStatus(item, "sending", "Fetching the result…", null);
  try {
    const response = await fetch(outputUrl);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    item.result = await response.blob();
    item.resultUrl = URL.createObjectURL(item.result);
  } catch {
    item.resultUrl = outputUrl;  // e.g. a bucket on another origin without CORS: link to it instead
  }
  const size = await imageSize(item.resultUrl);
  const card = $(`#photo-${item.id}`);
  const compare = renderCompare(item, size);
  card.querySelector(".thumb")?.remove();
  card.querySelector(".media").replaceChildren(compare);
  const link = card.querySelector(".download");
  link.href = item.resultUrl;
  link.download = resultName(item);
  link.hidden = false;
  setStatus(item, "done", size ? `Done: ${size.width} × ${size.height} px.` : "Done.", 1);
}

function imageSize(src) {
  return new Promise((resolve) => {
    const image = new Image();
    image.onload = () => resolve({ width: image.naturalWidth, height: image.naturalHeight });
    image.onerror = () => resolve(null);
    image.src = src;
  });
}

function renderCompare(item, size) {
  const figure = document.createElement("figure");
  figure.className = "compare";
  if (size) figure.style.aspectRatio = `${size.width} / ${size.height}`;
  const before = document.createElement("img");
  before.className = "before";
  before.alt = `Original: ${item.name}`;
  before.src = item.preview || "";
  before.onerror = () => { before.hidden = true; };  // e.g. TIFF, which browsers do not show
  const after = document.createElement("img");
  after.className = "after";
  after.alt = `Colorized: ${item.name}`;
  after.src = item.resultUrl;
  const divider = document.createElement("span");
  divider.className = "divider";
  const beforeTag = Object.assign(document.createElement("span"), { className: "tag tag-before", textContent: "Before" });
  const afterTag = Object.assign(document.createElement("span"), { className: "tag tag-after", textContent: "After" });
  const slider = document.createElement("input");
  slider.type = "range";
  slider.min = "0";
  slider.max = "100";
  slider.value = "50";
  slider.setAttribute("aria-label", `Before and after divider for ${item.name}`);
  const update = () => {
    figure.style.setProperty("--pos", `${slider.value}%`);
    slider.setAttribute("aria-valuetext", `${slider.value}% original, ${100 - slider.value}% colorized`);
  };
  slider.addEventListener("input", update);
  update();
  figure.append(before, after, divider, beforeTag, afterTag, slider);
  return figure;
}

function resultName(item) {
  const base = item.name.split("/").pop().replace(/\.[^.]+$/, "") || `photo-${item.id}`;
  return `${base}-colorized.png`;
}

async function downloadAll() {
  const done = state.items.filter((item) => item.state === "done");
  const files = [];
  const used = new Set();
  for (const item of done) {
    let blob = item.result;
    if (!blob) {
      try { blob = await (await fetch(item.outputUrl)).blob(); } catch { continue; }
    }
    let name = resultName(item);
    for (let n = 2; used.has(name); n += 1) name = resultName(item).replace(/\.png$/, `-${n}.png`);
    used.add(name);
    files.push({ name, data: new Uint8Array(await blob.arrayBuffer()) });
  }
  if (!files.length) {
    notify("None of the results could be read back for the archive; use each photo's Download link.", "info");
    return;
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(zip(files));
  link.download = "colorized-photos.zip";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

// A ZIP archive of already-compressed PNGs: entries stored as they are (method 0).
function zip(files) {
  const encoder = new TextEncoder();
  const chunks = [];
  const central = [];
  let offset = 0;
  const now = new Date();
  const time = (now.getHours() << 11) | (now.getMinutes() << 5) | (now.getSeconds() >> 1);
  const date = ((now.getFullYear() - 1980) << 9) | ((now.getMonth() + 1) << 5) | now.getDate();
  for (const file of files) {
    const name = encoder.encode(file.name);
    const crc = crc32(file.data);
    const local = new DataView(new ArrayBuffer(30));
    [[0, 0x04034b50, 4], [4, 20, 2], [6, 0x0800, 2], [8, 0, 2], [10, time, 2], [12, date, 2], [14, crc, 4],
      [18, file.data.length, 4], [22, file.data.length, 4], [26, name.length, 2], [28, 0, 2]]
      .forEach(([at, value, width]) => (width === 4 ? local.setUint32(at, value, true) : local.setUint16(at, value, true)));
    const entry = new DataView(new ArrayBuffer(46));
    [[0, 0x02014b50, 4], [4, 20, 2], [6, 20, 2], [8, 0x0800, 2], [10, 0, 2], [12, time, 2], [14, date, 2],
      [16, crc, 4], [20, file.data.length, 4], [24, file.data.length, 4], [28, name.length, 2], [30, 0, 2],
      [32, 0, 2], [34, 0, 2], [36, 0, 2], [38, 0, 4], [42, offset, 4]]
      .forEach(([at, value, width]) => (width === 4 ? entry.setUint32(at, value, true) : entry.setUint16(at, value, true)));
    chunks.push(local, name, file.data);
    central.push(entry, name);
    offset += 30 + name.length + file.data.length;
  }
  const centralSize = central.reduce((sum, part) => sum + part.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  [[0, 0x06054b50, 4], [4, 0, 2], [6, 0, 2], [8, files.length, 2], [10, files.length, 2], [12, centralSize, 4],
    [16, offset, 4], [20, 0, 2]]
    .forEach(([at, value, width]) => (width === 4 ? end.setUint32(at, value, true) : end.setUint16(at, value, true)));
  return new Blob([...chunks, ...central, end], { type: "application/zip" });
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let crc = 0xffffffff;
  for (const byte of bytes) crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

// ---- rendering cards and messages --------------------------------------------------------

function renderCard(item) {
  const card = document.createElement("li");
  card.className = "card";
  card.id = `photo-${item.id}`;
  const title = Object.assign(document.createElement("h3"), { textContent: item.name });
  const media = Object.assign(document.createElement("div"), { className: "media" });
  if (item.preview) {
    const thumb = Object.assign(document.createElement("img"), { className: "thumb", src: item.preview, alt: `Original: ${item.name}` });
    thumb.onerror = () => thumb.remove();
    media.append(thumb);
  }
  const status = Object.assign(document.createElement("p"), { className: "status" });
  status.setAttribute("role", "status");
  const progress = document.createElement("progress");
  progress.max = 1;
  progress.value = 0;
  progress.setAttribute("aria-label", `Progress of ${item.name}`);
  const actions = Object.assign(document.createElement("div"), { className: "actions" });
  const download = Object.assign(document.createElement("a"), { className: "button download", textContent: "Download", hidden: true });
  download.setAttribute("aria-label", `Download the colorized ${item.name}`);
  const retry = Object.assign(document.createElement("button"), { type: "button", className: "retry", textContent: "Retry", hidden: true });
  retry.setAttribute("aria-label", `Retry ${item.name}`);
  retry.addEventListener("click", () => {
    setStatus(item, "ready", "Ready: press Colorize.");
    start();
  });
  const remove = Object.assign(document.createElement("button"), { type: "button", className: "remove", textContent: "Remove" });
  remove.setAttribute("aria-label", `Remove ${item.name}`);
  remove.addEventListener("click", () => removeItem(item));
  actions.append(download, retry, remove);
  card.append(title, media, status, progress, actions);
  return card;
}

function removeItem(item) {
  if (item.state === "sending") return;  // its answer is on the way; remove it afterwards
  state.items = state.items.filter((other) => other !== item);
  $(`#photo-${item.id}`)?.remove();
  for (const url of [item.file && item.preview, item.result && item.resultUrl]) if (url) URL.revokeObjectURL(url);
  renderPrice();
}

function setStatus(item, newState, text, progress = undefined, until = 0) {
  item.state = newState;
  const card = $(`#photo-${item.id}`);
  if (!card) return;
  card.dataset.state = newState;
  const status = card.querySelector(".status");
  status.dataset.template = text;
  status.dataset.until = until ? String(until) : "";
  status.textContent = countdownText(text, until);
  if (progress !== undefined) setProgress(item, progress);
  card.querySelector(".retry").hidden = newState !== "failed";
  card.querySelector(".remove").disabled = newState === "sending";
}

function setProgress(item, value) {
  const progress = $(`#photo-${item.id} progress`);
  if (!progress) return;
  if (value === null) progress.removeAttribute("value");  // indeterminate: the server is working
  else progress.value = value;
}

function countdownText(template, until) {
  const seconds = Math.max(0, Math.ceil((until - Date.now()) / 1000));
  return template.replace("{s}", String(seconds));
}

function notify(text, kind = "error", until = 0) {
  const notice = $("#notice");
  notice.dataset.template = text;
  notice.dataset.until = until ? String(until) : "";
  notice.textContent = countdownText(text, until);
  notice.classList.toggle("info", kind === "info");
  notice.hidden = false;
}

function hideNotice() {
  $("#notice").hidden = true;
}

// One clock for every "in N s" on the page.
setInterval(() => {
  for (const element of document.querySelectorAll("[data-until]")) {
    const until = Number(element.dataset.until);
    if (!until) continue;
    element.textContent = countdownText(element.dataset.template, until);
    if (until <= Date.now() && element.id === "notice") {
      element.dataset.until = "";
      hideNotice();
    }
  }
}, 250);

// ---- wiring ------------------------------------------------------------------------------

function wire() {
  const keyInput = $("#api-key");
  const remember = $("#remember-key");
  const stored = localStorage.getItem(KEY_STORAGE);
  if (stored) {
    keyInput.value = stored;
    remember.checked = true;
    setKey(stored);
  }
  keyInput.addEventListener("change", () => setKey(keyInput.value));
  remember.addEventListener("change", () => {
    if (remember.checked && state.key) localStorage.setItem(KEY_STORAGE, state.key);
    if (!remember.checked) localStorage.removeItem(KEY_STORAGE);
  });
  $("#show-key").addEventListener("click", (event) => {
    const shown = keyInput.type === "text";
    keyInput.type = shown ? "password" : "text";
    event.currentTarget.textContent = shown ? "Show" : "Hide";
    event.currentTarget.setAttribute("aria-pressed", String(!shown));
  });

  for (const input of [$("#file-input"), $("#folder-input")]) {
    input.addEventListener("change", () => {
      addFiles([...input.files]);
      input.value = "";
    });
  }
  const zone = $("#drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", async (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const files = await filesFromDrop(event.dataTransfer);
    if (files.length) addFiles(files);
    else {
      const uri = event.dataTransfer.getData("text/uri-list") || event.dataTransfer.getData("text/plain");
      if (uri) addUrl(uri.split("\n")[0]);
    }
  });
  document.addEventListener("paste", (event) => {
    if (event.target.closest("input, textarea")) return;  // a paste into a field stays there
    const files = [...event.clipboardData.files];
    if (files.length) addFiles(files);
    else {
      const text = event.clipboardData.getData("text/plain");
      if (text) addUrl(text);
    }
  });
  $("#url-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const field = $("#image-url");
    if (field.value.trim() && addUrl(field.value)) field.value = "";
  });

  for (const input of document.querySelectorAll('input[name="model"], input[name="clean_scratches"], input[name="face_remaster"]')) {
    input.addEventListener("change", renderPrice);
  }
  $("#start").addEventListener("click", start);
  $("#download-all").addEventListener("click", downloadAll);
  $("#clear-done").addEventListener("click", () => {
    for (const item of state.items.filter((candidate) => candidate.state === "done")) removeItem(item);
  });
  renderPrice();
  loadPricing();
  markUnavailable();
}

// Models and add-ons this server has not loaded are greyed out, with the reason.
async function markUnavailable() {
  let health;
  try {
    health = await (await fetch(api("health"))).json();
  } catch {
    return;
  }
  const stages = { ...(health.models || {}), ...(health.stages || {}) };
  for (const [name, selector] of [["large", 'input[name="model"][value="large"]'], ["tiny", 'input[name="model"][value="tiny"]'],
    ["scratch_repair", 'input[name="clean_scratches"]'], ["face_remaster", 'input[name="face_remaster"]']]) {
    const status = stages[name];
    if (!status || status.loaded) continue;
    const input = $(selector);
    input.disabled = true;
    input.checked = false;
    const note = Object.assign(document.createElement("span"), { className: "hint", textContent: " (not loaded on this server)" });
    input.closest("label").append(note);
  }
  const model = $('input[name="model"]:checked');
  if (!model) $('input[name="model"]:not(:disabled)')?.click();
  renderPrice();
}

wire();
