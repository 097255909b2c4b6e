"""The dashboard in a real browser (Debian's Chromium through Playwright) against a live
`finetune serve`: sign in, upload, train, watch, inspect, predict, export, cancel, and
owner isolation. Every step saves a screenshot under the test's tmp dir; any console
error, page error, failed request or unexpected >= 400 response fails the test."""

import base64
import io
import re
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.conftest import TEST_KEY
from tests.helpers import digit_images, digits_zip, embedded_service, png_bytes

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
CLASSES = 3
PER_CLASS = 12
SIZE = 32


class Watch:
    """Console errors, page errors, failed requests and >= 400 responses, with the ones a
    step expects (a wrong key's 401, a refused upload's 422, a 404 screen) allowed."""

    def __init__(self, page):
        self.allowed: list[tuple[int, str]] = []
        self.problems: list[str] = []
        self.bad_urls: set[str] = set()
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))
        page.on("response", self._response)

    def expect(self, status: int, path: str) -> None:
        self.allowed.append((status, path))

    def _response(self, r) -> None:
        if r.status < 400:
            return
        self.bad_urls.add(r.url)
        path = httpx.URL(r.url).raw_path.decode()
        if (r.status, path) in self.allowed:
            self.allowed.remove((r.status, path))
        else:
            self.problems.append(f"unexpected {r.status}: {r.url}")

    def _console(self, msg) -> None:
        if msg.type != "error":
            return
        # Chromium logs every >= 400 response as a console error; those are judged above.
        if (
            msg.text.startswith("Failed to load resource")
            and msg.location.get("url") in self.bad_urls
        ):
            return
        self.problems.append(f"console {msg.type}: {msg.text} at {msg.location}")

    def check(self) -> None:
        assert not self.problems, self.problems


@pytest.fixture
def browser_page(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/test.sh does)")
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 800},
            accept_downloads=True,
        )
        context.set_default_timeout(20_000)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


def test_dashboard_end_to_end(tmp_path, browser_page):
    page = browser_page
    shots = tmp_path / "screenshots"
    shots.mkdir()
    n = iter(range(1, 100))

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{next(n):02d}-{name}.png"), full_page=True)

    watch = Watch(page)
    with embedded_service(tmp_path, TEST_KEY) as api:
        base = str(api.base_url).rstrip("/")
        archive = digits_zip(
            tmp_path / "digits.zip", per_class=PER_CLASS, size=SIZE, classes=CLASSES
        )

        # 1. Sign in: a wrong key shows the service's message; the right one, by Enter.
        page.goto(base + "/")
        page.wait_for_selector('[data-screen="signin"]')
        shot("signin")
        wrong = httpx.get(
            base + "/v1/datasets?limit=1", headers={"Authorization": "Bearer ft_wrong"}
        ).json()["error"]["message"]
        watch.expect(401, "/v1/datasets?limit=1")
        page.fill("#api-key", "ft_wrong")
        page.press("#api-key", "Enter")
        assert page.locator(".alert-message").inner_text(timeout=10_000) == wrong
        shot("signin-wrong-key")
        page.fill("#api-key", TEST_KEY)
        page.press("#api-key", "Enter")
        page.wait_for_selector("h1:text('Datasets')")
        assert page.evaluate("sessionStorage.getItem('finetune.api_key')") == TEST_KEY
        assert page.evaluate("localStorage.length") == 0
        shot("datasets-empty")

        # 2. A refused upload (chosen with the file picker) shows the service's message as is.
        #    (a tar.gz with one class folder: nothing to tell apart). The page shows a few
        #    of its images first, read in the browser.
        broken = one_class_targz(tmp_path / "broken.tar.gz")
        watch.expect(422, "/v1/datasets")
        page.set_input_files("#dataset-file", str(broken))
        page.wait_for_selector(".preview-box .thumbs img")
        assert page.locator(".preview-box figcaption").all_inner_texts() == ["digit_0"] * 2
        with page.expect_response("**/v1/datasets") as refused:
            page.click("button:text('Upload')")
        error = refused.value.json()["error"]
        assert refused.value.status == 422
        assert page.locator(".upload-result .alert-message").inner_text() == error["message"]
        shot("upload-refused")

        # 3. Drag and drop the digits ZIP: the progress bar reaches 100%, the dataset opens.
        page.evaluate(
            """() => { window.__bar = []; const bar = document.querySelector('#upload-progress');
            new MutationObserver(() => window.__bar.push(bar.value))
              .observe(bar, {attributes: true, attributeFilter: ['value']}); }"""
        )
        drop_file(page, ".drop", archive, "application/zip")
        # (locators, not wait_for_function: the page's CSP forbids the eval that needs)
        expect(page.locator(".preview-box .thumbs img")).to_have_count(8)

        def thumbs_now() -> list:
            return page.eval_on_selector_all(
                ".preview-box .thumbs img",
                "is => is.map(i => [i.complete ? i.naturalWidth : 0, i.alt])",
            )

        # The eight are in the page before each has decoded (a loaded CI machine caught
        # one at naturalWidth 0): wait, a bounded while, for all of them.
        thumbs, deadline = thumbs_now(), time.monotonic() + 10
        while any(w == 0 for w, _ in thumbs) and time.monotonic() < deadline:
            page.wait_for_timeout(100)
            thumbs = thumbs_now()
        assert {w for w, _ in thumbs} == {SIZE}
        assert {alt.split("/")[0] for _, alt in thumbs} == {f"digit_{i}" for i in range(CLASSES)}
        page.fill("#dataset-name", "digits")
        page.click("button:text('Upload')")
        page.wait_for_selector('[data-screen="dataset"]')
        assert max(page.evaluate("window.__bar")) == 100
        dataset = api.get("/v1/datasets").json()["items"][0]
        assert page.locator("h1").inner_text() == "digits"
        assert page.locator('[data-testid="class-count"] .stat-value').inner_text() == str(CLASSES)
        assert page.locator(".thumbs img").count() == 8
        bars = page.evaluate("Chart.getChart(document.querySelector('.chart canvas')).data")
        assert bars["labels"] == dataset["classes"]
        assert bars["datasets"][0]["data"] == [dataset["class_counts"][c] for c in bars["labels"]]
        splits = page.locator("section:has(h2:text('Splits')) tbody tr").all_inner_texts()
        assert [s.split("\t")[:2] for s in splits] == [
            [k, str(v)] for k, v in dataset["splits"].items()
        ]
        shot("dataset")

        # 4. The job form: base models from the API (absent weights greyed out), the
        #    schema's defaults shown, its null defaults (strategy, epochs) as automatic:
        #    not sent, the service chooses. Then an explicit short auto search.
        schema = api.get("/openapi.json").json()["components"]["schemas"]["JobSpec"]["properties"]
        bases = {b["name"]: b for b in api.get("/v1/base-models").json()}
        page.click("a:text('Train a model')")
        page.wait_for_selector('[data-screen="job-form"]')
        options = page.eval_on_selector_all(
            "#job-base-model option", "os => os.map(o => [o.value, o.disabled])"
        )
        images = {k for k, b in bases.items() if b["task"] == "image_classification"}
        assert {v for v, _ in options} == images
        assert all(disabled == (not bases[v]["weights_present"]) for v, disabled in options)
        assert page.input_value("#job-base-model") == "efficientnet_lite0"
        assert schema["epochs"].get("default") is None
        assert schema["strategy"].get("default") is None
        assert page.input_value("#job-epochs") == ""
        hint = page.inner_text("#job-epochs-hint")
        assert "empty: chosen from the dataset size" in hint, hint
        assert "default automatic (chosen by the service)" in hint, hint
        assert page.is_checked("#strategy-automatic")
        assert page.locator('input[name="strategy"]:checked').count() == 1
        assert page.locator("#job-trainable_blocks").count() == 0  # knobs: the service's
        # Left automatic, with a learning rate the service refuses: its message shows on
        # the field, and the request carried neither strategy nor epochs.
        page.fill("#job-learning_rate", "0")
        watch.expect(422, "/v1/jobs")
        with page.expect_response("**/v1/jobs") as refused:
            page.click("button:text('Start training')")
        sent = refused.value.request.post_data_json
        assert refused.value.status == 422
        assert "strategy" not in sent and "epochs" not in sent, sent
        assert sent["learning_rate"] == 0 and sent["dataset_id"] == dataset["id"]
        message = refused.value.json()["error"]["message"]
        assert page.locator(".form-error .alert-message").inner_text() == message
        assert page.get_attribute("#job-learning_rate", "aria-invalid") == "true"
        shot("job-form-refused")
        # An explicit strategy shows its knobs, with the schema's defaults.
        page.check("#strategy-partial")
        assert page.input_value("#job-trainable_blocks") == str(
            schema["trainable_blocks"]["default"]
        )
        # auto: a search over two candidates, one epoch each, then six epochs of the best.
        page.check("#strategy-auto")
        assert page.input_value("#job-auto_budget_epochs") == str(
            schema["auto_budget_epochs"]["default"]
        )
        page.fill("#job-auto_budget_epochs", "2")
        page.fill("#job-epochs", "6")
        page.fill("#job-learning_rate", "0.01")
        page.fill("#job-image_size", str(SIZE))
        page.fill("#job-batch_size", "16")
        page.fill("#job-early_stopping_patience", "")
        shot("job-form")
        with page.expect_request("**/v1/jobs") as started:
            page.click("button:text('Start training')")
        sent = started.value.post_data_json
        assert (sent["strategy"], sent["epochs"], sent["auto_budget_epochs"]) == ("auto", 6, 2)

        # 5. The job view follows the event stream: the search's candidates live, then the
        #    final training's curves and stages, to 100% and the ranked leaderboard.
        page.wait_for_selector('[data-screen="job"]')
        job_id = page.url.rsplit("/", 1)[1]
        page.evaluate(
            """() => { const el = document.querySelector('#job-progress-text');
            window.__texts = [el.textContent];
            // every value set, even several in one task (each record keeps its text node)
            new MutationObserver((records) => { for (const r of records)
                for (const n of r.addedNodes) window.__texts.push(n.textContent); })
              .observe(el, {childList: true}); }"""
        )
        page.wait_for_selector("#job-leaderboard tbody tr", timeout=120_000)
        shot("job-searching")
        page.wait_for_selector("#job-stages li", timeout=120_000)
        shot("job-training")
        page.wait_for_selector('#job-live[data-live="ended"]', timeout=120_000)
        assert page.locator("#open-model").is_visible()
        assert page.locator('.job-status [data-status="succeeded"]').count() == 1
        assert page.inner_text("#job-progress-text").startswith("Done · 100%")
        assert page.evaluate("document.querySelector('#job-progress').value") == 100
        texts = page.evaluate("window.__texts")
        assert any(t.startswith("Stage 1 of 2, search: candidate 1") for t in texts), texts
        assert any(t.startswith("Stage 2 of 2") and "ETA" in t for t in texts), texts
        job = api.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded"
        assert (job["spec"]["strategy"], job["spec"]["epochs"]) == ("auto", 6)
        epochs = [h for h in job["history"] if "val_loss" in h and h.get("phase") != "search"]
        curves = page.evaluate(
            "[...document.querySelectorAll('.chart canvas')].map(c => "
            "Chart.getChart(c).data.datasets.map(d => d.data.map(p => p.y)))"
        )
        assert curves[0] == [
            [h["train_loss"] for h in epochs],
            [h["val_loss"] for h in epochs],
        ]
        assert curves[1] == [[h["val_accuracy"] for h in epochs]]
        # The last report's groups; the exact probe (when it won the search, the final run
        # is the probe alone) has none: one row, its head.
        last = epochs[-1]
        stage = page.locator("#job-stage tbody tr").all_inner_texts()
        assert stage[0].startswith("head\tyes")
        assert len(stage) == (1 if last.get("stage") == "probe" else len(last["schedule"]))
        assert page.locator("#job-stages li").first.inner_text().startswith("epoch")
        board = page.locator("#job-leaderboard tbody tr").all_inner_texts()
        assert [r.split("\t")[1] for r in board] == [e["strategy"] for e in job["leaderboard"]]
        assert board[0].endswith("chosen") and job["leaderboard"][0]["chosen"]
        shot("job-succeeded")

        # 6. The model: metrics, per-class table, confusion matrix, lineage.
        page.click("#open-model")
        page.wait_for_selector('[data-screen="model"]')
        model = api.get(f"/v1/models/{job['model_id']}").json()
        shown = page.inner_text('[data-testid="accuracy"] .stat-value')
        assert shown == f"{model['metrics']['accuracy'] * 100:.1f}%"
        cells = page.eval_on_selector_all(
            ".cm-table tbody tr",
            "rs => rs.map(r => [...r.querySelectorAll('td')].map(td => +td.innerText))",
        )
        assert cells == model["metrics"]["confusion_matrix"]
        assert sum(map(sum, cells)) == dataset["splits"]["test"]
        per_class = page.locator("section:has(h2:text('Per class')) tbody tr").all_inner_texts()
        assert [r.split("\t")[0] for r in per_class] == model["classes"]
        lineage = page.inner_text("dl.kv")
        assert dataset["id"] in lineage and job_id in lineage and "efficientnet_lite0" in lineage
        shot("model")
        # The HTML report links here.
        report = api.get(f"/v1/models/{model['id']}/report").text
        href = re.search(r'href="(/#/models/[^"]+)"', report).group(1)
        page.goto(base + href)
        page.wait_for_selector(f"h1:text('Model {model['id']}')")

        # 7. Try it: one image the model was trained on; the page shows its right label.
        label, img = next(iter(digit_images(per_class=1, size=SIZE, classes=CLASSES, offset=2)))
        digit = tmp_path / "digit.png"
        digit.write_bytes(png_bytes(img))
        page.set_input_files("#predict-file", str(digit))
        top = page.locator("#predict-result .top-label").first
        top.wait_for(timeout=60_000)
        assert top.inner_text() == f"digit_{label}"
        direct = api.post(
            f"/v1/models/{model['id']}/predict",
            files=[("files", ("digit.png", digit.read_bytes(), "image/png"))],
            data={"top_k": "3"},
        ).json()["predictions"][0]
        rows = page.locator("#predict-result .topk li").all_inner_texts()
        assert [r.split("\n")[0] for r in rows] == [t["label"] for t in direct["top_k"]]
        shot("model-predicted")

        # 8. Export: the download is the API's file, byte for byte.
        with page.expect_download() as dl:
            page.click('button[data-format="safetensors"]')
        got = Path(dl.value.path()).read_bytes()
        assert got == api.get(f"/v1/models/{model['id']}/export?format=safetensors").content
        assert dl.value.suggested_filename == f"{model['id']}.safetensors"

        # 9. Phone width: the model view fits without sideways scrolling.
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(300)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        shot("model-phone")
        page.set_viewport_size({"width": 1280, "height": 800})

        # 10. A second, long job is cancelled from its page. It is the small test CNN from
        #     scratch (a quick start, then as many epochs as allowed), which the form does
        #     not offer (GET /v1/base-models leaves test-only models out): sent by the API.
        assert "tiny_cnn" not in bases
        long_job = {
            "dataset_id": dataset["id"],
            "base_model": "tiny_cnn",
            "pretrained": False,
            "strategy": "full",
            "epochs": 1000,
            "image_size": SIZE,
            "early_stopping_patience": None,
        }
        r = api.post("/v1/jobs", json=long_job)
        assert r.status_code == 202, r.text
        second = r.json()["id"]
        assert second != job_id
        page.goto(f"{base}/#/jobs/{second}")
        page.wait_for_selector('[data-screen="job"]')
        page.wait_for_selector('.job-status [data-status="running"]', timeout=60_000)
        shot("second-job-running")
        page.click("#cancel-job")
        page.wait_for_selector('#job-live[data-live="ended"]', timeout=60_000)
        assert page.locator('.job-status [data-status="cancelled"]').count() == 1
        assert page.locator("#cancel-job").is_hidden()
        assert api.get(f"/v1/jobs/{second}").json()["status"] == "cancelled"
        shot("second-job-cancelled")

        # 11. Another owner: the first owner's model is the same 404 screen as an unknown id.
        other = api.post("/v1/admin/keys", json={"name": "someone-else"}).json()["key"]
        page.click("#signout")
        page.wait_for_selector('[data-screen="signin"]')
        assert page.evaluate("sessionStorage.length") == 0
        page.fill("#api-key", other)
        page.press("#api-key", "Enter")
        page.wait_for_selector("h1:text('Datasets')")
        assert page.locator("p.empty").first.inner_text().startswith("No datasets yet")
        for kind, known, unknown in (
            ("datasets", dataset["id"], "ds_doesnotexist"),
            ("jobs", job_id, "job_doesnotexist"),
            ("models", model["id"], "mdl_doesnotexist"),
        ):
            screens = []
            for some_id in (known, unknown):
                watch.expect(404, f"/v1/{kind}/{some_id}")
                page.goto(f"{base}/#/{kind}/{some_id}")
                page.wait_for_selector('[data-screen="not-found"]')
                screens.append(page.inner_text('[data-screen="not-found"]').replace(some_id, "ID"))
                if kind == "models":
                    shot(f"not-found-{some_id}")
            assert screens[0] == screens[1], kind
            assert screens[0].startswith("Not found")

    watch.check()
    assert not watch.allowed, f"expected errors that never came: {watch.allowed}"
    print(f"screenshots in {shots}")


def one_class_targz(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for i, (_, img) in enumerate(digit_images(per_class=4, size=SIZE, classes=1)):
            data = png_bytes(img)
            info = tarfile.TarInfo(f"digit_0/{i}.png")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def drop_file(page, selector: str, path: Path, mime: str) -> None:
    """A real drop event on `selector` carrying the file (what a drag from the desktop sends)."""
    data = base64.b64encode(path.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([data, name, mime]) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: mime}));
            return dt;
        }""",
        [data, path.name, mime],
    )
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})
