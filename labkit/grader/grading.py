"""Grade a class's notebooks: each runs in a fresh, locked-down kernel, then the tests run.

``labkit grade SUBMISSIONS/ --exercise 01`` does, for every notebook in SUBMISSIONS/:

1. start a fresh IPython kernel as an unprivileged user, in an empty scratch folder, with
   the runtime's address in ``LABKIT_BASE_URL``. Kernels are forked from a "zygote", a
   process that imported ipykernel and labkit once: a new Python would spend seconds on
   those imports for every notebook, a fork takes milliseconds. nbclient drives the kernel;
2. run the learner's code cells in order, each with a time limit (a cell that errors does
   not stop the others; a cell that hangs is interrupted, and if that fails the kernel is
   replaced and the notebook re-run without that cell);
3. run every test — public and hidden — in a tester process of its own beside the kernel
   (``tester``): it calls the learner's names across a narrow boundary (``remote``,
   ``bridge``), so hidden test code never enters the kernel;
4. score each test (partial credit), and write the result at once: its row of
   ``gradebook.csv`` (the whole file replaced in one step), ``state.json`` (what the next
   run reuses), the learner's Markdown feedback, the executed notebook and, for the
   instructor only, ``instructor/NAME.md`` (why each test failed, hidden ones included).
   Per-test pass rates (CSV and a bar plot) come last.

A run survives what a notebook does to it. A worker that dies (killed, out of memory) costs
only the notebook it held: that notebook is tried once more in a fresh worker, and if that
fails too its row says ``grader-error``, every other row is written, and the next run grades
it again without ``--regrade``. A run that is itself killed keeps every row it wrote; the
next run grades only what is missing, changed or failed in the grader, and first kills what
the killed run left running. A notebook file over ``--max-notebook-mb`` is not run (status
``too-large``); one whose code cells are still the released notebook's is ``untouched``.

What it writes is safe to open. Every folder entry has a row of its own: a learner's
notebook is named by the learner, a stray entry by its file name (``alice`` beside
``alice.ipynb`` is ``alice (not-a-notebook)``). A CSV cell that would start a formula
(``=``, ``+``, ``-``, ``@``, tab, line break) starts with ``'``; names and messages are plain
text in the Markdown (no heading, link, image, HTML or code span of their own); notes are
single lines, capped, and withheld where they quote hidden test code.

The pieces: ``options`` (how a class is graded: one ``GradeOptions``, made once and handed
down), ``sandbox`` (what a kernel sees), ``network`` (its own loopback, forwarded to the
runtime), ``cache`` (replies shared by the class), ``users`` (grading users, slots),
``kernels`` (zygote, forked kernels), ``channel`` (talking to a kernel and its tester),
``notebook`` (one notebook), ``run`` (the class and its workers), ``report`` (gradebook,
feedback, instructor notes, plots), ``cli``.

What the sandbox enforces (Linux, run as root): each kernel lives in a box of its own, as a
grading user of its own, in private PID, IPC, mount and network namespaces. Every folder
outside the operating system's (and the course checkout itself) is replaced by an empty one
that holds only Python and the labkit package; scratch and temp folders are a tmpfs of
``--disk-mb``; /proc shows only the box's processes. Its network is a loopback of its own
where the runtime's port leads, through the grader, to the runtime. One cgroup caps the
memory and tasks of the whole tree, and the whole box is killed after each notebook, zombies
included. Each worker has two grading users and alternates them, so the kernel started in
advance for the next notebook never shares a user with the notebook running now. The full
list, and what a machine cannot enforce, is ``ISOLATION``.
"""

from __future__ import annotations

from labkit.grader.cli import add_arguments, cli
from labkit.grader.options import GradeOptions
from labkit.grader.report import feedback, pass_rates
from labkit.grader.run import GradeReport, find_key, find_submissions, grade, to_grade
from labkit.grader.sandbox import ISOLATION, enter_sandbox
from labkit.grader.settings import SCRATCH_BASE, GradingError, Settings, Submission
from labkit.grader.users import Slots, kill_user_processes

__all__ = [
    "ISOLATION",
    "SCRATCH_BASE",
    "GradeOptions",
    "GradeReport",
    "GradingError",
    "Settings",
    "Slots",
    "Submission",
    "add_arguments",
    "cli",
    "enter_sandbox",
    "feedback",
    "find_key",
    "find_submissions",
    "grade",
    "kill_user_processes",
    "pass_rates",
    "to_grade",
]
