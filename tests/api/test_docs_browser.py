"""The interactive docs (/schema/swagger) in a real browser: headless Chromium, driven
over its DevTools protocol (a websocket; the `websockets` package the project has), with
every host but the server's unresolvable, as on a machine without internet.

Needs Debian's `chromium` (`.ci/run` installs it): skipped without it, failed under CI=true.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import websockets
from conftest import TEST_PASSWORD, register_and_login

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WAIT_SECONDS = 10.0
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Offline: only the test server's address resolves, so a page that needs a CDN stays blank.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1280,2000",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        reason = "needs Debian's chromium (apt-get install -y chromium; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


class DevTools:
    """One page of the browser over the DevTools protocol: commands, and every event kept."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            data = msgspec.json.decode(message)
            if "id" not in data:
                self.events.append(data)
            elif "error" in data:
                self._pending.pop(data["id"]).set_exception(RuntimeError(str(data["error"])))
            else:
                self._pending.pop(data["id"]).set_result(data["result"])

    def close(self) -> None:
        self._reader.cancel()

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        answer = self._pending[call_id] = asyncio.get_running_loop().create_future()
        await self._ws.send(msgspec.json.encode({"id": call_id, "method": method, "params": params}).decode())
        return await asyncio.wait_for(answer, WAIT_SECONDS)

    async def evaluate(self, expression: str) -> Any:
        answer = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in answer, answer["exceptionDetails"]
        return answer["result"].get("value")

    async def wait_for(self, expression: str) -> Any:
        """Polls until the expression is truthy; fails after WAIT_SECONDS."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not (value := await self.evaluate(expression)):
            assert time.monotonic() < deadline, f"still false after {WAIT_SECONDS} s: {expression}"
            await asyncio.sleep(0.05)
        return value

    async def click(self, selector: str) -> None:
        await self.wait_for(f"!!document.querySelector({selector!r})")
        await self.evaluate(f"document.querySelector({selector!r}).click()")

    async def type_into(self, selector: str, text: str) -> None:
        """Sets an input's value the way React notices (its own setter, then an input event)."""
        await self.wait_for(f"!!document.querySelector({selector!r})")
        await self.evaluate(
            f"(() => {{ const input = document.querySelector({selector!r});"
            " Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value')"
            f".set.call(input, {msgspec.json.encode(text).decode()});"
            " input.dispatchEvent(new Event('input', {bubbles: true})); })()"
        )

    def requested_urls(self) -> list[str]:
        sent = [e for e in self.events if e["method"] == "Network.requestWillBeSent"]
        return [event["params"]["request"]["url"] for event in sent]


@asynccontextmanager
async def browser_page(chromium: str, profile: Path) -> AsyncIterator[DevTools]:
    browser = await asyncio.create_subprocess_exec(
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert browser.stderr is not None
        async with asyncio.timeout(WAIT_SECONDS):
            while not (line := (await browser.stderr.readline()).decode()).startswith("DevTools listening"):
                assert line, "chromium exited before listening"
        devtools_http = "http://" + line.split("ws://", 1)[1].split("/", 1)[0]
        async with httpx.AsyncClient(timeout=WAIT_SECONDS) as http:
            targets = (await http.get(f"{devtools_http}/json/list")).raise_for_status().json()
        [page] = [target for target in targets if target["type"] == "page"]
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=2**26) as ws:
            devtools = DevTools(ws)
            await devtools.call("Network.enable")
            await devtools.call("Page.enable")
            try:
                yield devtools
            finally:
                devtools.close()
    finally:
        if browser.returncode is None:
            browser.kill()
        await browser.wait()


async def test_swagger_page_renders_offline_authorizes_and_tries_a_request(
    chromium: str, base_url: str, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    account = await register_and_login(client)
    async with browser_page(chromium, tmp_path / "profile") as page:
        await page.call("Page.navigate", url=f"{base_url}/schema/swagger")

        # The operations are rendered, not only the page's shell.
        await page.wait_for("document.querySelectorAll('.opblock').length > 0")
        paths = await page.evaluate(
            "[...document.querySelectorAll('.opblock-summary-path')].map(e => e.dataset.path)"
        )
        assert {"/api/v1/orders", "/api/v1/wallets", "/api/v1/wallets/{asset}/deposit"} <= set(paths)

        # Authorize: the OAuth2 password flow against /api/v1/auth/token.
        await page.click(".auth-wrapper .btn.authorize")
        await page.type_into("#oauth_username", account.email)
        await page.type_into("#oauth_password", TEST_PASSWORD)
        await page.click(".auth-btn-wrapper .btn.modal-btn.authorize")
        logged_in = "document.querySelector('.auth-btn-wrapper .btn.modal-btn')?.textContent === 'Logout'"
        await page.wait_for(logged_in)
        await page.click(".auth-btn-wrapper .btn-done")

        # Try it out: GET /wallets, from the page, with the token.
        wallets = (
            "[...document.querySelectorAll('.opblock-get')]"
            ".find(o => o.querySelector('.opblock-summary-path').dataset.path === '/api/v1/wallets')"
        )
        await page.wait_for(f"!!{wallets}")
        await page.evaluate(f"{wallets}.querySelector('.opblock-summary-control').click()")
        await page.wait_for(f"!!{wallets}.querySelector('.try-out__btn')")
        await page.evaluate(f"{wallets}.querySelector('.try-out__btn').click()")
        await page.wait_for(f"!!{wallets}.querySelector('.btn.execute')")
        await page.evaluate(f"{wallets}.querySelector('.btn.execute').click()")
        status = await page.wait_for(
            f"{wallets}.querySelector('.live-responses-table tbody .response-col_status')?.textContent.trim()"
        )
        assert status == "200", status
        body = await page.evaluate(f"{wallets}.querySelector('.live-responses-table .microlight').innerText")
        assert '"asset": "USDT"' in body, body

        screenshot = await page.call("Page.captureScreenshot", format="png")
        (tmp_path / "swagger.png").write_bytes(base64.b64decode(screenshot["data"]))

        urls = page.requested_urls()
        assert f"{base_url}/api/v1/auth/token" in urls and f"{base_url}/api/v1/wallets" in urls, urls
        # Every request the page made went to the server (data: URLs are not requests).
        outside = [url for url in urls if not url.startswith((f"{base_url}/", "data:"))]
        assert outside == [], outside
