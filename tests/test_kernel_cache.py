"""Compiled kernels are dropped when any source of the kernel package changes, not only the kernel's own file."""

from tinytrain.kernels.cache import DIGEST_FILE, drop_stale_kernels


def test_compiled_kernels_go_when_any_source_changes(tmp_path):
    (tmp_path / "kernel.py").write_text("from helper import f\n")
    (tmp_path / "helper.py").write_text("def f(): return 1\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    (cache / "kernel.f-1.py311.nbi").write_bytes(b"index")
    (cache / "kernel.f-1.py311.1.nbc").write_bytes(b"code")
    (cache / "kernel.cpython-311.pyc").write_bytes(b"bytecode")

    drop_stale_kernels(tmp_path)  # no digest yet: nothing cached can be trusted
    assert sorted(path.name for path in cache.iterdir()) == sorted([DIGEST_FILE, "kernel.cpython-311.pyc"])

    (cache / "kernel.f-1.py311.nbi").write_bytes(b"index")
    drop_stale_kernels(tmp_path)  # the same sources: kept
    assert (cache / "kernel.f-1.py311.nbi").exists()

    (tmp_path / "helper.py").write_text("def f(): return 2\n")
    drop_stale_kernels(tmp_path)  # only the inlined helper changed
    assert not (cache / "kernel.f-1.py311.nbi").exists()
    assert (cache / "kernel.cpython-311.pyc").exists()


def test_a_cache_directory_that_cannot_be_written_is_left_alone(tmp_path):
    (tmp_path / "kernel.py").write_text("")
    (tmp_path / "__pycache__").write_text("a file where the directory would be")
    drop_stale_kernels(tmp_path)
    assert (tmp_path / "__pycache__").read_text() == "a file where the directory would be"
