"""CPU threads chosen for the machine before torch is imported (trm_fast.threads): the count from the cores free now,
a short spin before waiting threads sleep, never over what the user's environment sets; in place before torch loads
under `trm-fast` and `python -m trm_fast`."""
import json
import os
import subprocess
import sys

import pytest

from trm_fast.threads import SPIN_COUNT, apply_thread_settings, thread_settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("cores, busy, expected", [
    (2, 0, {"OMP_NUM_THREADS": "2", "GOMP_SPINCOUNT": str(SPIN_COUNT)}),  # idle: every core, a short spin
    (2, 1, {"OMP_NUM_THREADS": "1"}),  # one core busy elsewhere: one thread, which never waits for another
    (2, 5, {"OMP_NUM_THREADS": "1"}),
    (16, 3, {"OMP_NUM_THREADS": "13", "GOMP_SPINCOUNT": str(SPIN_COUNT)}),
    (1, 0, {"OMP_NUM_THREADS": "1"}),
])
def test_threads_follow_the_free_cores(cores, busy, expected):
    assert thread_settings({}, cores, busy) == expected


@pytest.mark.parametrize("environ, expected", [
    ({"OMP_NUM_THREADS": "4"}, {"GOMP_SPINCOUNT": str(SPIN_COUNT)}),  # the user's count, still a short spin
    ({"OMP_NUM_THREADS": "1"}, {}),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_NUM_THREADS": "2"}),  # the user's wait policy decides the spinning
    ({"GOMP_SPINCOUNT": "300000"}, {"OMP_NUM_THREADS": "2"}),
    ({"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}, {}),
])
def test_what_the_environment_sets_is_kept(environ, expected):
    assert thread_settings(environ, 2, 0) == expected


def test_nothing_is_set_once_torch_is_imported():
    import torch  # noqa: F401  (imported by this test process anyway)

    environ = {}
    assert apply_thread_settings(environ) == {} and environ == {}


# Records the thread variables at the moment torch starts importing (a meta-path hook that finds nothing itself).
_SITECUSTOMIZE = """
import json, os, sys

class _RecordAtTorchImport:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not os.path.exists(os.environ["RECORD_PATH"]):
            with open(os.environ["RECORD_PATH"], "w") as f:
                json.dump({k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}, f)
        return None

sys.meta_path.insert(0, _RecordAtTorchImport())
"""


def _environment_at_torch_import(tmp_path, command, **user_environment) -> dict:
    (tmp_path / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    record = tmp_path / "at_import.json"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(user_environment, RECORD_PATH=str(record),
               PYTHONPATH=os.pathsep.join([str(tmp_path), REPO, os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, *command, "train", "--preset", "sudoku4-tiny", "--print-config"], env=env, cwd=REPO,
                   check=True, capture_output=True, text=True)
    return json.loads(record.read_text())


@pytest.mark.parametrize("command", [["-m", "trm_fast"],  # and what the trm-fast entry point runs:
                                     ["-c", "import sys; from trm_fast.cli import main; sys.exit(main())"]])
def test_the_settings_are_in_place_before_torch_is_imported(tmp_path, command):
    seen = _environment_at_torch_import(tmp_path, command)
    threads = int(seen["OMP_NUM_THREADS"])
    assert 1 <= threads <= len(os.sched_getaffinity(0))
    assert seen["GOMP_SPINCOUNT"] == (str(SPIN_COUNT) if threads > 1 else None)
    assert seen["OMP_WAIT_POLICY"] is None


def test_the_users_settings_reach_torch_unchanged(tmp_path):
    seen = _environment_at_torch_import(tmp_path, ["-m", "trm_fast"], OMP_NUM_THREADS="1", OMP_WAIT_POLICY="ACTIVE")
    assert seen == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": None}
