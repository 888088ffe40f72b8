"""The CLI silences transformers / datasets once, for every command, at the moment a command imports them: bad input
is answered before they load, and what a command loads stays silent."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT


def run_python(code: str, *args: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_broken_recipe_is_answered_before_the_libraries_load(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  name: x\n task:\n  type: classification\n")  # bad indentation
    code = (
        "import sys\nfrom llmtune import cli\ntry:\n    cli.app(['validate', sys.argv[1]])\n"
        "except SystemExit as stop:\n    print(stop.code, 'transformers' in sys.modules, 'datasets' in sys.modules)"
    )
    assert run_python(code, str(broken)) == ["2", "False", "False"]


def test_libraries_a_command_loads_stay_silent():
    code = (
        "from llmtune.common.silence import silence_libraries_when_loaded\nsilence_libraries_when_loaded()\n"
        "import transformers, datasets\n"
        "print(transformers.logging.get_verbosity(), datasets.logging.get_verbosity(),"
        " transformers.utils.logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled())"
    )
    assert run_python(code) == ["40", "50", "False", "False"]  # ERROR, CRITICAL, no progress bars
