"""Grade a class's notebooks: each runs in a fresh, locked-down kernel, then the tests run.

``labkit grade SUBMISSIONS/ --exercise 01`` does, for every notebook in SUBMISSIONS/:

1. start a fresh IPython kernel as an unprivileged user, in an empty scratch folder, with
   the runtime's address in ``LABKIT_BASE_URL``. Kernels are forked from a "zygote", a
   process that imported ipykernel and labkit once: a new Python would spend seconds on
   those imports for every notebook, a fork takes milliseconds. nbclient drives the kernel;
2. run the learner's code cells in order, each with a time limit (a cell that errors does
   not stop the others; a cell that hangs is interrupted, and if that fails the kernel is
   replaced and the notebook re-run without that cell);
3. send every test — public and hidden — over the kernel's channel and run it in the same
   kernel, after the learner's code (hidden test code is never written to a file the
   learner's code can read);
4. score each test (partial credit), write ``gradebook.csv``, one Markdown feedback file
   per learner, per-test pass rates (CSV and a bar plot) and the executed notebooks.

The pieces: ``sandbox`` (what a kernel sees), ``network`` (its own loopback, forwarded to
the runtime), ``cache`` (replies shared by the class), ``users`` (grading users, slots),
``kernels`` (zygote, forked kernels), ``channel`` (talking to a kernel), ``notebook`` (one
notebook), ``run`` (the class), ``report`` (gradebook, feedback, plots), ``cli``.

What the sandbox enforces (Linux, run as root): the kernel runs as a grading user of its
own, in private mount and network namespaces. Every folder outside the operating system's
(and the course checkout itself) is replaced by an empty one that holds only Python and the
labkit package; /tmp, /var/tmp, /dev/shm and /run/lock are private, throw-away folders
holding only its scratch folder; /proc shows only its own processes. Its network is a
loopback of its own where the runtime's port leads, through the grader, to the runtime.
Limits: address space, file size, process count and CPU time. All processes of the grading
user are killed after each notebook. Each worker has two grading users and alternates them,
so the kernel started in advance for the next notebook never shares a user with the
notebook running now. The full list, and what it does not enforce, is ``ISOLATION``.
"""

from __future__ import annotations

from labkit.grader.cli import add_arguments, cli
from labkit.grader.report import feedback, pass_rates
from labkit.grader.run import GradeReport, find_key, find_submissions, grade, to_grade
from labkit.grader.sandbox import ISOLATION, enter_sandbox
from labkit.grader.settings import SCRATCH_BASE, GradingError, Settings, Submission
from labkit.grader.users import Slots, kill_user_processes

__all__ = [
    "ISOLATION",
    "SCRATCH_BASE",
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
