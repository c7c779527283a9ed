"""Attacks on the template workers are forked from (``_template.py``), through whole
programs (``scripts/attack3_template.py``) run with the forked template (one thread),
with a thread started after import, and with ``PROCPOOL_TEMPLATE=exec``.

Workers and processes must see the program as ``spawn`` shows it: its ``sys.argv`` (the
main module, run again as ``__mp_main__``, often reads it at module level), and its
working directory, environment and ``sys.path`` as of each pool's creation, changed
between pools. The program's exit handlers and finalizers run in it alone, never in a
worker or process that ends (a worker ending by ``sys.exit`` included).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "scripts", "attack3_template.py")


@pytest.mark.procpool_only
@pytest.mark.limit(40)
@pytest.mark.parametrize("mode", ["fork", "thread", "exec"])
def test_workers_see_argv_cwd_environment_and_path_as_each_pool_was_created(mode, tmp_path):
    log = tmp_path / "log"
    env = dict(os.environ)
    env.pop("PROCPOOL_TEMPLATE", None)
    env.pop("ATTACK3", None)
    if mode == "exec":
        env["PROCPOOL_TEMPLATE"] = "exec"
    r = subprocess.run(
        [sys.executable, SCRIPT, str(log), mode, "--flag", "x y"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    try:
        work = out["work"]
        before = [mode, [mode, "--flag", "x y"], str(tmp_path), None, None]
        changed = [mode, [mode, "--flag", "x y"], work, "set", 42]
        assert out["parent"] == before
        assert {k: out[k] for k in ("proc1", "proc2")} == {"proc1": before, "proc2": changed}
        got = {k: out[k] for k in ("pool1", "pool2", "pool3")}
        assert got == {"pool1": before, "pool2": changed, "pool3": before}, got
        # Exit handlers and finalizers: once, in the program.
        lines = log.read_text().split()
        assert sorted(lines[0::2]) == ["atexit", "finalize"], lines
        assert lines[1::2] == [str(out["pid"])] * 2, lines
    finally:
        shutil.rmtree(out.get("work", ""), ignore_errors=True)


_FROM_STDIN = """
import procpool

def sq(x):
    return x * x

if __name__ == "__main__":
    with procpool.Pool(2) as p:
        print(p.map(sq, range(5)))
    pr = procpool.Process(target=sq, args=(3,))
    pr.start()
    pr.join()
    print(pr.exitcode)
"""


@pytest.mark.procpool_only
@pytest.mark.limit(30)
@pytest.mark.parametrize("how", ["stdin", "-c"])
def test_a_program_without_a_script_file_sends_its_functions_by_value(how, tmp_path):
    args = ["-"] if how == "stdin" else ["-c", _FROM_STDIN]
    r = subprocess.run(
        [sys.executable, *args],
        input=_FROM_STDIN if how == "stdin" else "",
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=25,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["[0,", "1,", "4,", "9,", "16]", "0"], r.stdout
