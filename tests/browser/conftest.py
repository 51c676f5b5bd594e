"""Fixtures for the browser tests: one JupyterLab and one headless Chromium per test process.

Under pytest-xdist each worker that runs browser tests starts its own JupyterLab (on a free
port) and its own Chromium; both are stopped at the end of the worker's session, with every
kernel they started. Every test here is marked ``browser`` (and ``slow``) by the project's
conftest.py.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

# The helpers' asserts explain themselves in pytest's detailed style, like a test's own.
pytest.register_assert_rewrite("lab_browser")

from lab_browser import (  # noqa: E402  (imported after the line above, on purpose)
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    UI_TIMEOUT,
    JupyterLab,
    LabPage,
    PageMaker,
)

# Scratch notebooks are written under artifacts/ while the tests run: they are not tests.
collect_ignore = ["artifacts"]

# expect(...) waits 5 s by default: too little for a kernel round trip on a busy machine.
expect.set_options(timeout=UI_TIMEOUT)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """When a test fails, save what each open tab shows (artifacts/.../NN-failed-<test>.png)."""
    report = yield
    # Right after the test body, before its fixtures close the tabs.
    if report.when == "call" and report.failed:
        for page in LabPage.open_pages:
            with contextlib.suppress(Exception):  # the page itself may be what broke
                page.shot(f"failed-{item.name}")
    return report


@pytest.fixture(scope="session")
def jupyterlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    """JupyterLab as `./lab --headless` starts it, answering on a free port."""
    lab = JupyterLab(tmp_path_factory.mktemp("jupyterlab"))
    try:
        lab.start()
        failure = ""
    except RuntimeError as exc:
        failure = str(exc)
    if failure:
        lab.stop()
        pytest.fail(failure, pytrace=False)
    yield lab
    leftovers = lab.stop()
    assert not leftovers, "processes outlived JupyterLab's shutdown and were killed:\n" + (
        "\n".join(leftovers)
    )


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (no browser is ever downloaded).

    Without Chromium the project's conftest.py skips these tests before this runs (and fails
    them under CI), naming `sudo bash .ci/browser-deps.sh`.
    """
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def make_page(
    request: pytest.FixtureRequest, browser: Browser, jupyterlab: JupyterLab
) -> Iterator[PageMaker]:
    """Open browser tabs on the lab; a module's tabs share one profile (and its cache)."""
    module = Path(request.node.name).stem
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pages: list[LabPage] = []

    def make(name: str) -> LabPage:
        shots = ARTIFACTS / module / name
        shutil.rmtree(shots, ignore_errors=True)  # only this run's screenshots
        page = LabPage(context.new_page(), jupyterlab, shots)
        pages.append(page)
        return page

    yield make
    for page in pages:
        page.close()
    context.close()


@pytest.fixture
def lab_page(request: pytest.FixtureRequest, make_page: PageMaker) -> Iterator[LabPage]:
    """A fresh browser tab for one test; its screenshots go to artifacts/<module>/<test>/."""
    page = make_page(request.node.name)
    yield page
    page.close()
