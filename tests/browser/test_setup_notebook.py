"""The setup notebook in a real browser, the way a learner meets it first.

`./lab --headless` prints the lab's address; it opens on notebooks/00-check-your-setup.ipynb.
The learner clears the stored outputs, picks Run → Run All Cells, and reads the ✅ lines.
"""

from __future__ import annotations

from lab_browser import PROJECT, LabPage, digest, run_and_check
from playwright.sync_api import expect

SETUP = "notebooks/00-check-your-setup.ipynb"


def test_the_lab_opens_on_the_setup_notebook_and_it_runs(lab_page: LabPage) -> None:
    before = digest(PROJECT / SETUP)
    lab_page.goto()  # the address `labkit lab` prints: it should land on the setup notebook
    lab_page.wait_notebook(SETUP)
    assert lab_page.page.url.split("?")[0].endswith("/lab/tree/" + SETUP)
    expect(lab_page.page.locator(".lm-DockPanel-tabBar .lm-mod-current")).to_contain_text(
        "00-check-your-setup"
    )
    run_and_check(lab_page, SETUP)
    # Running in the lab changes the open document only; the course's file stays as shipped.
    assert digest(PROJECT / SETUP) == before, f"{SETUP} was changed on disk"
