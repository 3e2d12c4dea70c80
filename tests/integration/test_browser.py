"""In a real headless Chromium: both seeds' browser snippets from a page on ANOTHER origin
(CORS, preflights, exposed headers), and the workbench at ``/`` colorizing photos end to end.

One app (route prefix ``/browser``) with App Check on and CORS allowing exactly the page
server's origin; the seeds' JavaScript runs in that page with ``fetch`` + ``FormData``.
"""
from __future__ import annotations

import base64
import io
import os
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from auth.app_check import APP_CHECK_DENIED
from tests.browser import chromium, console_errors
from tests.helpers import FileServer, encode
from tests.integration.conftest import balance, create_key, demo_args

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PAGE = "<!doctype html><meta charset='utf-8'><title>A client on another origin</title><p>client"
SCREENSHOT = os.environ.get("WORKBENCH_SCREENSHOT")  # scripts/workbench_screenshot.sh sets it


def grey_photos() -> dict[str, bytes]:
    """Three real photos (skimage's bundled samples), grey, at three aspect ratios."""
    from skimage import data

    def grey_jpeg(rgb: np.ndarray, size: tuple[int, int]) -> bytes:
        image = Image.fromarray(rgb).convert("L").resize(size, Image.LANCZOS).convert("RGB")
        return encode(np.asarray(image), "JPEG", quality=90)

    return {"coffee.jpg": grey_jpeg(data.coffee(), (300, 200)),                    # 3:2
            "astronaut.jpg": grey_jpeg(data.astronaut()[:, 110:400], (170, 300)),  # portrait
            "camera.jpg": grey_jpeg(np.dstack([data.camera()] * 3), (220, 220))}   # square


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """Two page servers on other loopback ports: one allowed by the app's CORS list, one not."""
    root = tmp_path_factory.mktemp("pages")
    (root / "index.html").write_text(PAGE)
    for name, data in grey_photos().items():
        (root / name).write_bytes(data)
    with FileServer(root) as allowed, FileServer(root) as stranger:
        yield {"allowed": allowed, "stranger": stranger, "root": root}


@pytest.fixture(scope="module")
def app(serve_cluster, models_dir, signing_keys, tmp_path_factory, pages):
    from ray import serve

    from deployments.app import build_app

    root = tmp_path_factory.mktemp("browser-app")
    args = demo_args(root, models_dir, jwks_url=signing_keys.jwks_url,
                     cors={"allow_origins": [pages["allowed"]], "max_age_s": 600})
    serve.run(build_app(args), name="browser", route_prefix="/browser")
    yield {"url": f"{serve_cluster}/browser", "args": args, "storage": root / "storage",
           "app_check": signing_keys.token()}
    serve.delete("browser")


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture()
def context(browser):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
    context.set_default_timeout(60_000)
    yield context
    context.close()


def stored_result(app, url: str) -> bytes:
    return (app["storage"] / "results" / url.rsplit("/", 1)[1]).read_bytes()


def page_errors(errors: list[str]) -> list[str]:
    # Chromium logs every non-2xx answer as "Failed to load resource"; the tests expect some.
    return [e for e in errors if not e.startswith("Failed to load resource")]


# ---- seed 003: the documented fetch + FormData code, from another origin ---------------------

SEED_003 = """async ({base, appCheckToken}) => {
  const imageFile = new File([await (await fetch('camera.jpg')).blob()], 'grayscale_image.jpg', {type: 'image/jpeg'});
  const bytes = async (blob) => Array.from(new Uint8Array(await blob.arrayBuffer()));

  // "2. Upload Image", Example using JavaScript
  let formData = new FormData();
  formData.append('file', imageFile);
  let response = await fetch(`${base}/upload`, {
    method: 'POST',
    headers: {'X-Firebase-AppCheck': appCheckToken},
    body: formData
  });
  const uploaded = await response.json();

  // "Using the Token": colorizeImage(imageFile)
  async function colorizeImage(imageFile) {
    const token = appCheckToken;
    const formData = new FormData();
    formData.append('file', imageFile);
    const response = await fetch(`${base}/colorize`, {
      method: 'POST',
      headers: {'X-Firebase-AppCheck': token},
      body: formData
    });
    if (!response.ok) {
      const error = await response.json();
      throw new Error(error.detail || 'Colorization failed');
    }
    return await response.json();
  }
  const result = await colorizeImage(imageFile);

  // "Step 3: Display Result", option 2: download via the API, then show the blob
  const downloadResponse = await fetch(`${base}/download/${result.result_id}`, {
    headers: {'X-Firebase-AppCheck': appCheckToken}
  });
  const blob = await downloadResponse.blob();
  const url = URL.createObjectURL(blob);
  const img = document.createElement('img');
  document.body.append(img);
  await new Promise((resolve, reject) => { img.onload = resolve; img.onerror = reject; img.src = url; });

  // Option 1: the public URL, also read by script (not only shown in an <img>)
  const publicBlob = await (await fetch(result.download_url)).blob();

  // A refused token: the error body is readable from this origin too
  let refused;
  try {
    await (async () => {
      const r = await fetch(`${base}/colorize`, {method: 'POST', headers: {'X-Firebase-AppCheck': 'not-a-token'},
                                                 body: formData});
      if (!r.ok) { const error = await r.json(); throw new Error(error.detail || 'Colorization failed'); }
    })();
  } catch (e) { refused = String(e); }

  return {uploaded, result, downloadType: downloadResponse.headers.get('Content-Type'),
          downloaded: await bytes(blob), publicBytes: await bytes(publicBlob),
          shown: [img.naturalWidth, img.naturalHeight], refused,
          requestId: downloadResponse.headers.get('X-Request-Id')};
}"""


def test_seed_003_javascript_from_another_origin(app, pages, context):
    page = context.new_page()
    errors = console_errors(page)
    page.goto(f"{pages['allowed']}/index.html")
    out = page.evaluate(SEED_003, {"base": app["url"], "appCheckToken": app["app_check"]})

    assert out["uploaded"]["success"] is True
    assert (pages["root"] / "camera.jpg").read_bytes() == \
        (app["storage"] / "uploads" / out["uploaded"]["filename"]).read_bytes()
    assert out["result"]["success"] is True and out["result"]["api_download_url"].startswith(app["url"])
    stored = stored_result(app, out["result"]["download_url"])
    assert bytes(out["downloaded"]) == stored == bytes(out["publicBytes"])
    assert out["downloadType"] == "image/jpeg" and out["shown"] == [220, 220]
    assert out["refused"] == f"Error: {APP_CHECK_DENIED}"  # the service's own detail, not "Failed to fetch"
    assert out["requestId"]  # an exposed header, readable cross-origin
    assert page_errors(errors) == []


# ---- seed 000: the key API from another origin -----------------------------------------------

SEED_000 = """async ({base, apiKey}) => {
  const file = new File([await (await fetch('coffee.jpg')).blob()], 'file.jpg', {type: 'image/jpeg'});
  const send = async (headers) => {
    const formData = new FormData();
    formData.append('image', file);
    formData.append('model', 'tiny');
    formData.append('clean_scratches', 'true');
    const response = await fetch(`${base}/api/v1/colorize`, {method: 'POST', headers, body: formData});
    return {status: response.status, body: await response.json(),
            credits: response.headers.get('X-Credits-Remaining'),
            retryAfter: response.headers.get('Retry-After'),
            requestId: response.headers.get('X-Request-Id')};
  };
  const first = await send({'X-Api-Key': apiKey, 'Idempotency-Key': 'order-1'});
  const replay = await send({'X-Api-Key': apiKey, 'Idempotency-Key': 'order-1'});
  const output = first.status === 200 ? Array.from(new Uint8Array(await (await fetch(first.body.outputUrl)).arrayBuffer())) : null;
  const limited = await send({'X-Api-Key': apiKey});    // the key's burst is 2: the third is refused
  const unknown = await send({'X-Api-Key': 'ck_live_nope'});
  const account = await fetch(`${base}/api/v1/account`, {headers: {'X-Api-Key': apiKey}});
  const pricing = await fetch(`${base}/api/v1/pricing`);
  return {first, replay, output, limited, unknown, account: await account.json(),
          accountCredits: account.headers.get('X-Credits-Remaining'), pricing: await pricing.json()};
}"""


def test_seed_000_javascript_from_another_origin(app, pages, context):
    key = create_key(app["args"], credits=10, rate_per_s=0.01, burst=2)
    page = context.new_page()
    errors = console_errors(page)
    page.goto(f"{pages['allowed']}/index.html")
    out = page.evaluate(SEED_000, {"base": app["url"], "apiKey": key})

    assert out["first"]["status"] == 200, out["first"]
    assert bytes(out["output"]) == stored_result(app, out["first"]["body"]["outputUrl"])
    assert out["replay"]["body"] == out["first"]["body"]  # the same result, not charged again
    assert out["first"]["credits"] == out["replay"]["credits"] == "8"  # 1 + 1 for clean_scratches
    assert out["limited"]["status"] == 429 and int(out["limited"]["retryAfter"]) >= 1
    assert out["limited"]["credits"] == "8" and "rate limit" in out["limited"]["body"]["detail"]
    assert out["unknown"]["status"] == 401 and out["unknown"]["credits"] is None
    assert out["account"]["credits"] == 8 == balance(app["args"], key) and out["accountCredits"] == "8"
    assert out["account"]["rateLimit"] == {"perSecond": 0.01, "burst": 2}
    assert out["pricing"]["addOns"]["clean_scratches"] == 1
    assert all(r["requestId"] for r in (out["first"], out["limited"], out["unknown"]))
    assert page_errors(errors) == []


def test_an_origin_not_listed_is_refused_by_the_browser(app, pages, context):
    page = context.new_page()
    page.goto(f"{pages['stranger']}/index.html")
    outcome = page.evaluate("""async (base) => {
      try { await fetch(`${base}/api/v1/pricing`); return 'read'; } catch (e) { return String(e); }
    }""", app["url"])
    assert outcome == "TypeError: Failed to fetch"  # no Access-Control-Allow-Origin for this origin
    preflight = httpx.options(f"{app['url']}/api/v1/colorize", headers={
        "Origin": pages["stranger"], "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


# ---- the workbench ---------------------------------------------------------------------------

def open_workbench(context, app, key: str):
    page = context.new_page()
    errors = console_errors(page)
    page.goto(f"{app['url']}/")
    page.get_by_role("textbox", name="API key").fill(key)
    page.get_by_role("textbox", name="API key").press("Tab")  # the key is read when the field is left
    return page, errors


def add_photos(page, pages, names: list[str]) -> None:
    page.locator("#file-input").set_input_files([str(pages["root"] / name) for name in names])


def test_workbench_colorizes_three_photos(app, pages, context, tmp_path):
    key = create_key(app["args"], credits=50, rate_per_s=2, burst=2)  # a burst of 2: the page must pace itself
    page, errors = open_workbench(context, app, key)
    page.get_by_text("Balance: 50 credits").wait_for()
    names = ["coffee.jpg", "astronaut.jpg", "camera.jpg"]
    add_photos(page, pages, names)
    page.get_by_label("Scratch and dust repair").check()
    assert page.locator("#price").inner_text() == \
        "2 credits per photo × 3 photos = 6 credits. Charged only for photos that succeed."
    page.get_by_label("Scratch and dust repair").uncheck()
    assert page.locator("#start").inner_text() == "Colorize 3 photos (3 credits)"
    page.get_by_label("Prompt").fill("a red cup, a blue sky, a green lawn")  # the text-guided model's options
    page.get_by_label("Seed").fill("7")
    page.locator("#start").click()

    cards = page.locator(".card")
    for index in range(3):
        page.locator(f".card:nth-child({index + 1})[data-state='done']").wait_for()
    page.get_by_text("Balance: 47 credits").wait_for()
    assert balance(app["args"], key) == 47

    sizes = {"coffee.jpg": (300, 200), "astronaut.jpg": (170, 300), "camera.jpg": (220, 220)}
    for index, name in enumerate(names):
        card = cards.nth(index)
        assert card.locator("h3").inner_text() == name
        box = card.locator(".compare").bounding_box()
        width, height = sizes[name]
        assert box["width"] / box["height"] == pytest.approx(width / height, rel=0.02)  # the photo's own shape
        assert card.get_by_role("img", name=f"Colorized: {name}").evaluate("i => [i.naturalWidth, i.naturalHeight]") \
            == [width, height]

    # The prompt and seed were sent: the same photo, prompt and seed give the same colours.
    output_urls = cards.evaluate_all("cards => cards.map(c => c.dataset.outputUrl)")
    for _ in range(3):  # the key's burst is 2 and the page may have just spent it: wait as told, like any client
        again = httpx.post(f"{app['url']}/api/v1/colorize", headers={"X-Api-Key": key}, timeout=60,
                           files={"image": ("coffee.jpg", (pages["root"] / "coffee.jpg").read_bytes())},
                           data={"model": "large", "prompt": "a red cup, a blue sky, a green lawn", "seed": "7"})
        if again.status_code != 429:
            break
        time.sleep(int(again.headers["Retry-After"]))
    assert again.status_code == 200 and again.headers["x-credits-remaining"] == "46"
    same = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
            for data in (stored_result(app, output_urls[0]), stored_result(app, again.json()["outputUrl"]))]
    difference = np.abs(same[0] - same[1])
    assert difference.max() <= 2 and (difference > 0).mean() < 0.02  # batched vs alone: kernels round apart

    # The slider, by keyboard: focus it and move the divider.
    slider = cards.nth(0).get_by_role("slider")
    slider.focus()
    for _ in range(3):
        page.keyboard.press("ArrowLeft")
    assert cards.nth(0).locator(".compare").evaluate("f => f.style.getPropertyValue('--pos')") == "47%"

    # Download one: the very bytes the service stored.
    with page.expect_download() as caught:
        cards.nth(1).get_by_role("link", name="Download the colorized astronaut.jpg").click()
    download = caught.value
    assert download.suggested_filename == "astronaut-colorized.png"
    assert Path(download.path()).read_bytes() == stored_result(app, output_urls[1])

    # Download all: a ZIP of the three results.
    with page.expect_download() as caught:
        page.get_by_role("button", name="Download all (.zip)").click()
    with zipfile.ZipFile(caught.value.path()) as archive:
        assert archive.namelist() == ["coffee-colorized.png", "astronaut-colorized.png", "camera-colorized.png"]
        for name, url in zip(archive.namelist(), output_urls):
            assert archive.read(name) == stored_result(app, url)

    shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "workbench.png"
    take_screenshot(page, shot)
    assert 20_000 < shot.stat().st_size < 300_000
    assert page_errors(errors) == []


def take_screenshot(page, path: Path) -> None:
    """The page as a user sees it, palette-reduced to keep the README light."""
    for slider_position, card in zip(("35", "50", "65"), page.locator(".compare input").all()):
        card.fill(slider_position)
    page.locator("main").evaluate("m => window.scrollTo(0, 0)")
    raw = page.screenshot(full_page=True)
    image = Image.open(io.BytesIO(raw)).convert("RGB")
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def test_workbench_explains_refusals(app, pages, context):
    # 403: a key without credits.
    broke = create_key(app["args"], credits=0)
    page, errors = open_workbench(context, app, broke)
    page.get_by_text("Balance: 0 credits").wait_for()
    add_photos(page, pages, ["camera.jpg"])
    page.get_by_label("tiny").check()
    page.locator("#start").click()
    card = page.locator(".card").first
    page.locator(".card[data-state='failed']").wait_for()
    message = card.get_by_role("status").inner_text()
    assert message.startswith("Not enough credits for this photo (not enough credits: this job costs 1")
    assert page.get_by_role("alert").inner_text() == message
    assert card.get_by_role("button", name="Retry camera.jpg").is_visible()

    # 429: another client of the same key spent its only token; the page says when it resends.
    slow = create_key(app["args"], credits=10, rate_per_s=0.01, burst=1)  # one request per 100 s
    spent = httpx.post(f"{app['url']}/api/v1/colorize", headers={"X-Api-Key": slow}, data={"model": "tiny"},
                       files={"image": ("a.jpg", (pages["root"] / "camera.jpg").read_bytes())}, timeout=60)
    assert spent.status_code == 200
    page, errors = open_workbench(context, app, slow)
    page.get_by_text("Balance: 9 credits").wait_for()
    add_photos(page, pages, ["coffee.jpg"])
    page.get_by_label("tiny").check()
    page.locator("#start").click()
    waiting = page.locator(".card[data-state='waiting'] .status")
    waiting.wait_for()
    first = waiting.inner_text()
    assert first.startswith("Too many requests for this key right now: sending again in ")
    time.sleep(1.3)
    seconds = [int(text.rsplit(" in ", 1)[1].split(" ")[0]) for text in (first, waiting.inner_text())]
    assert 5 <= seconds[0] <= 100 and seconds[1] < seconds[0]  # counting down
    assert page.get_by_role("alert").inner_text().startswith("Too many requests for this key")

    # 401: a key the service does not know.
    page, errors = open_workbench(context, app, "ck_live_000000000000_" + "A" * 43)
    page.get_by_text("Your API key was not accepted").wait_for()


def test_workbench_at_phone_width_and_by_keyboard(app, pages, browser):
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        errors = console_errors(page)
        page.goto(f"{app['url']}/")
        add_photos(page, pages, ["coffee.jpg", "astronaut.jpg"])
        page.locator(".card").nth(1).wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing scrolls sideways
        unnamed = page.evaluate("""() => [...document.querySelectorAll('input, button, textarea, select, a[href]')]
          .filter(el => !el.closest('[hidden]') && !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                        && !el.textContent.trim() && !el.classList.contains('visually-hidden'))
          .map(el => el.outerHTML)""")
        assert unnamed == []  # every control is labelled for screen readers
        # The file pickers are reachable by keyboard, and the large model's options follow the choice.
        page.keyboard.press("Tab")  # skip link
        assert page.evaluate("document.activeElement.textContent") == "Skip to the photos"
        page.get_by_label("large").check()
        assert page.get_by_label("Prompt").is_enabled() and page.get_by_label("Seed").is_enabled()
        page.get_by_label("tiny").check()
        assert page.get_by_label("Prompt").is_disabled() and page.get_by_label("Seed").is_disabled()
        assert page_errors(errors) == []
    finally:
        context.close()
