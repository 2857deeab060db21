"""Calls in a forked child (``os.fork``, ``multiprocessing``'s fork start method, data-loader
worker pools) work and give the parent's results bitwise, even after the parent used its thread
pool and while another parent thread was inside a call.

Each scenario runs in a fresh interpreter with a deadline: before the fix a child's parallel
call waited forever for the parent's pool threads, which do not exist in the child.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

# Shared by the scenarios: grads of >= 2**20 elements (parallel calls), their results as hex.
_COMMON = """
    import hashlib, json, math, os, signal, sys, time
    import numpy as np
    import fastclip as fc
    from fastclip import _fastclip

    def make():
        rng = np.random.default_rng(7)
        return [rng.standard_normal(n).astype(dt) for n, dt in
                ((1 << 20, np.float32), (300_001, np.float64), (70_000, np.float16))]

    def results(grads=None):
        grads = make() if grads is None else [g.copy() for g in grads]
        out = {}
        for p in (2.0, 1.0, math.inf, 3.0):
            per, total = _fastclip.norms(grads, p, True)
            out[str(p)] = [total.hex()] + [v.hex() for v in per]
        out["total"] = fc.get_total_norm(grads).hex()
        out["clip"] = fc.clip_grad_norm_(grads, 1.0).hex()
        fc.clip_grad_value_(grads, 1e-3)
        out["digest"] = hashlib.sha256(b"".join(g.tobytes() for g in grads)).hexdigest()
        return out

    def wait(pid, seconds):
        # the child's exit status, or None (and the child killed) if it hangs
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None
"""


def _run(body: str, threads: int = 2) -> str:
    code = textwrap.dedent(_COMMON) + textwrap.dedent(body)
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_os_fork_child_calls_after_the_parent_used_its_pool():
    out = _run(
        """
        mine = results()          # the parent's pool is built and used
        assert mine == results()  # deterministic
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                data = json.dumps(results()).encode()
            except BaseException as e:
                data = json.dumps({"error": repr(e)}).encode()
            os.write(w, data)
            os._exit(0)
        os.close(w)
        code = wait(pid, 30)
        got = b""
        while chunk := os.read(r, 1 << 16):
            got += chunk
        print("child exit", code)
        print("same", json.loads(got) == mine if got else "nothing")
        # the parent's pool still works after the fork
        print("parent", results() == mine)
        """
    )
    assert out.split("\n")[:3] == ["child exit 0", "same True", "parent True"], out


def test_multiprocessing_fork_pool_matches_the_parent_bitwise():
    out = _run(
        """
        import multiprocessing

        def work(seed):
            return results()

        if __name__ == "__main__":
            mine = results()
            with multiprocessing.get_context("fork").Pool(2) as pool:
                try:
                    got = pool.map_async(work, range(4)).get(timeout=60)
                    print("same", all(g == mine for g in got), len(got))
                except multiprocessing.TimeoutError:
                    print("hung")
                    pool.terminate()
        """
    )
    assert out.split() == ["same", "True", "4"], out


@pytest.mark.parametrize("threads", [1, 2])
def test_fork_while_another_thread_is_inside_a_call(threads):
    # The other thread holds claims on shared arrays (and, with 2 threads, the pool) when the
    # process forks: the child has neither that thread nor its pool threads, and its own calls
    # on the same arrays (copied at the same addresses) must not wait for them.
    out = _run(
        """
        import threading

        shared = make()
        mine = results(shared)
        stop = False

        def busy():
            while not stop:
                fc.get_total_norm(shared)
                _fastclip.scale_(shared, 1.0)
                _fastclip.norms(shared, 3.0, True)

        t = threading.Thread(target=busy)
        t.start()
        codes = []
        try:
            for _ in range(12):
                time.sleep(0.01)
                pid = os.fork()
                if pid == 0:
                    ok = results(shared) == mine
                    _fastclip.scale_(shared, 0.5)  # a write claim on the shared bytes
                    os._exit(0 if ok else 1)
                codes.append(wait(pid, 30))
                if codes[-1] is None:
                    break  # hung (and killed): one is enough
        finally:
            stop = True
            t.join()
        print(codes)
        """,
        threads=threads,
    )
    assert out.strip() == str([0] * 12), out
