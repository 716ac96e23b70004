"""Issue 19, defect 8: `convscope serve` limits glibc's malloc to two arenas (as MALLOC_ARENA_MAX=2),
and that limit really holds threads to two arenas (counted with glibc's own `malloc_info`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from api.helpers import free_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc arenas are glibc's")

THREADS = 12

# Start THREADS threads that all malloc at once (a thread's first malloc takes a new arena while the
# limit allows), then count the arenas in malloc_info's XML (one <heap nr=...> per arena).
_COUNT_ARENAS = textwrap.dedent(
    f"""
    import ctypes, sys, threading
    from convscope.api.server import limit_malloc_arenas
    if sys.argv[1] == "limit":
        assert limit_malloc_arenas(), "mallopt refused M_ARENA_MAX"
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    together = threading.Barrier({THREADS})
    def work():
        together.wait()
        blocks = [libc.malloc(256) for _ in range(1000)]
        together.wait()  # every thread holds its blocks at the same time
        for block in blocks:
            libc.free(block)
    threads = [threading.Thread(target=work) for _ in range({THREADS})]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out = libc.fopen(sys.argv[2].encode(), b"w")
    libc.malloc_info(0, out)
    libc.fclose(out)
    """
)


def _arenas(tmp_path: Path, mode: str) -> int:
    report = tmp_path / f"{mode}.xml"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}  # no MALLOC_ARENA_MAX of ours
    subprocess.run([sys.executable, "-c", _COUNT_ARENAS, mode, str(report)], check=True, env=env, timeout=120)
    return report.read_text().count("<heap nr=")


def test_the_limit_holds_many_threads_to_two_arenas(tmp_path: Path) -> None:
    unlimited = _arenas(tmp_path, "default")
    assert unlimited > 2, f"glibc gave {THREADS} threads only {unlimited} arenas: the count would prove nothing"
    assert _arenas(tmp_path, "limit") <= 2


def test_serve_sets_the_limit_before_it_starts_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run_server` (what `convscope serve` runs) limits the arenas before uvicorn starts. The server loop
    itself is replaced by a recorder here (this checks the order of the start-up, not serving)."""
    import torch
    import uvicorn

    from convscope.api import server

    calls: list[str] = []
    monkeypatch.setattr(server, "limit_malloc_arenas", lambda arenas=2: calls.append(f"arenas={arenas}") or True)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: calls.append("serve"))
    monkeypatch.setenv("CONVSCOPE_TORCH_THREADS", str(torch.get_num_threads()))  # leave this process's threads
    monkeypatch.setenv("CONVSCOPE_SCAN_ON_STARTUP", "false")
    server.run_server(server.build_settings(host="127.0.0.1", port=free_port(), models=["zfnet"], device="cpu"))
    assert calls == ["arenas=2", "serve"]
