"""The search page in a real browser: headless Chromium from the system (Debian's `chromium`), driven by Playwright
pointed at that executable (no browser download). A query typed and run, thumbnails really decoded, an item opened,
"more like this", paging, a filter, an image uploaded, the keyboard, a refusal shown, a screenshot saved.

Outside CI the test skips when no Chromium or no Playwright is installed, and says so; in CI (CI=true) it fails
instead: .ci/run installs chromium."""

from __future__ import annotations

import os
import shutil
from urllib.parse import parse_qs, urlsplit

import pytest

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ALL_LOADED = """sel => { const ims = [...document.querySelectorAll(sel)];
    return ims.length > 0 && ims.every(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0); }"""


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        exe = None
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the browser test: install Debian's chromium (.ci/run does) and playwright")
        pytest.skip("no Chromium (apt-get install chromium) or no playwright (pip install playwright): the search "
                    "page's browser test is skipped outside CI")
    return exe


def shown(page, selector: str) -> None:
    """Wait for the search under way to finish and every image of `selector` to be decoded."""
    page.wait_for_function("() => !document.body.hasAttribute('aria-busy')", timeout=15000)
    page.wait_for_function(ALL_LOADED, arg=selector, timeout=15000)


def query(page) -> dict:
    return parse_qs(urlsplit(page.url).query)


def test_the_search_page_in_chromium(search_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    base = f"http://127.0.0.1:{search_server.port}"
    images = "section[data-index=images]"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            problems = []
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))

            page.goto(base + "/")  # type a query and run it: the query lands in the URL, thumbnails decode
            page.wait_for_selector("body[data-ready]")
            assert page.evaluate("document.activeElement.id") == "q"  # the query box has the focus
            page.evaluate("document.activeElement.blur()")
            page.keyboard.press("/")  # and '/' brings it back
            page.keyboard.type("bilateral ground glass opacities")
            page.keyboard.press("Enter")
            shown(page, f"{images} .card img")
            assert query(page)["q"] == ["bilateral ground glass opacities"]
            assert page.locator(f"{images} .card").count() == 24
            assert page.locator("section[data-index=reports] .card").count() > 0  # reports side by side

            page.locator(f"{images} .card").first.focus()  # open an item from the keyboard
            first = page.locator(f"{images} .card").first.get_attribute("aria-label")
            page.keyboard.press("Enter")
            expect(page.locator("#item")).to_be_visible()
            shown(page, "#item-media img")
            assert page.locator("#item-meta").inner_text().count("\n") >= 3  # index, score, rank, columns
            page.click("#more")  # more like this: the item is its query, and not among its own hits
            item = first.split(",")[0].split()[-1]
            page.wait_for_function(f"() => location.search.includes('like={item}')")
            shown(page, f"{images} .card img")
            assert query(page)["from"] == ["images"]
            assert f"item {item}," not in " ".join(page.locator(f"{images} .card").evaluate_all(
                "cs => cs.map(c => c.getAttribute('aria-label'))"))

            page.click("#next")  # page 2, then back
            page.wait_for_function("() => location.search.includes('page=2')")
            expect(page.locator("#pageno")).to_have_text("page 2")
            shown(page, f"{images} .card img")
            assert page.locator(f"{images} .card").count() < 24 and not page.locator("#prev").is_disabled()

            page.goto(base + "/?q=effusion")  # a shared link runs its search; a filter narrows it
            shown(page, f"{images} .card img")
            page.select_option("select[data-col=view]", "view=pa")
            page.wait_for_function("() => location.search.includes('where=view%3Dpa')")
            shown(page, f"{images} .card img")
            views = page.locator(f"{images} .card .cap").all_inner_texts()
            assert views and all("PA" in v for v in views)

            # search by an uploaded image (the filter still on): an indexed PA image finds itself first
            from convirt_cli.torchfree.serve.index import open_index

            path = next(it["path"] for it in open_index(search_server.images).items if it["columns"]["view"] == "PA")
            page.set_input_files("#file", path)
            expect(page.locator("#query")).to_contain_text("Cases like this image")
            shown(page, f"{images} .card img")
            assert page.locator(f"{images} .card .cap b").first.inner_text() == "1.000"
            page.screenshot(path=str(tmp_path / "search-page.png"))
            assert (tmp_path / "search-page.png").stat().st_size > 10_000

            assert not problems, problems  # no script error, no CSP violation, no failed load so far
            page.goto(base + "/?like=999999")  # a refusal is said plainly
            expect(page.locator("#alert")).to_contain_text("has no item 999999")
            page.goto(base + "/?q=effusion&where=view%3Dnone-such")
            expect(page.locator(f"{images} .empty")).to_have_text("Nothing matches with these filters.")

            phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
            phone.goto(base + "/?q=effusion")  # a phone: no sideways scrolling, thumbnails at a usable size
            shown(phone, f"{images} .card img")
            assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
            box = phone.locator(f"{images} .card img").first.bounding_box()
            assert box and 80 <= box["width"] <= 390, box
            assert phone.locator("#q").bounding_box()["width"] >= 150
            phone.screenshot(path=str(tmp_path / "phone.png"))
        finally:
            browser.close()
