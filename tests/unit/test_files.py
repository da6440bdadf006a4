"""sgdtune/files.py: a file is replaced whole or not at all, through a kill -9 mid-write, a
file-size limit (the stand-in for a full disk) and a target that is not a file."""

import os
import resource
import stat
import subprocess
import sys
import textwrap

import pytest

from sgdtune.errors import InputError
from sgdtune.files import atomic_write, atomic_write_all

OLD = b"the previous, good content\n" * 1000


def leftovers(folder) -> list[str]:
    """Temporary files a write left behind."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_a_file_is_replaced_whole_and_keeps_its_permissions(tmp_path):
    target = tmp_path / "report.json"
    target.write_bytes(OLD)
    target.chmod(0o640)
    assert atomic_write(target, "new") == target
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    atomic_write(tmp_path / "model.pt", lambda f: f.write(b"\x00\x01"))  # a function that writes, as torch.save
    assert (tmp_path / "model.pt").read_bytes() == b"\x00\x01"
    assert leftovers(tmp_path) == []


def test_a_link_keeps_pointing_at_the_file_it_named(tmp_path):
    (tmp_path / "real.html").write_bytes(OLD)
    (tmp_path / "link.html").symlink_to("real.html")
    atomic_write(tmp_path / "link.html", "new")
    assert (tmp_path / "link.html").is_symlink() and (tmp_path / "real.html").read_text() == "new"


def test_a_kill_9_in_the_middle_of_a_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "report.html"
    target.write_bytes(OLD)
    # The writer sends half the new content, says so, then waits: the kill lands mid-write.
    script = textwrap.dedent(f"""
        import sys
        from sgdtune.files import atomic_write

        def half_then_wait(f):
            f.write(b"x" * 100_000)
            f.flush()
            print("half written", flush=True)
            sys.stdin.readline()

        atomic_write({str(target)!r}, half_then_wait)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "half written\n"
    proc.kill()
    proc.wait(30)
    assert target.read_bytes() == OLD


def write_limited(script: str, limit_bytes: int) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter that may write files of at most `limit_bytes`."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          preexec_fn=limit, timeout=60)


def test_a_write_over_the_file_size_limit_fails_in_one_line_and_leaves_the_previous_file(tmp_path):
    target = tmp_path / "report.html"
    target.write_bytes(OLD)
    proc = write_limited(f"""
        from sgdtune.files import atomic_write
        from sgdtune.errors import InputError
        try:
            atomic_write({str(target)!r}, "y" * 200_000, field="--out")
        except InputError as e:
            print(e)
    """, limit_bytes=100_000)
    assert proc.stdout.startswith("--out: must be a file that can be written; writing it failed (File too large)")
    assert target.read_bytes() == OLD
    assert leftovers(tmp_path) == []


def test_files_written_together_all_stay_as_they_were_when_one_fails(tmp_path):
    small, big = tmp_path / "report.json", tmp_path / "report.html"
    small.write_bytes(b"old json")
    big.write_bytes(b"old html")
    proc = write_limited(f"""
        from sgdtune.files import atomic_write_all
        atomic_write_all({{{str(small)!r}: "new json", {str(big)!r}: "h" * 200_000}})
    """, limit_bytes=100_000)
    assert proc.returncode == 1 and "File too large" in proc.stderr  # without a field: the OSError itself
    assert small.read_bytes() == b"old json" and big.read_bytes() == b"old html"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("target,rule", [
    ("FOLDER", "must be a file name, not a folder"),
    ("/dev/null", "must be a regular file (or a new name), not a device, pipe or socket"),
    ("FOLDER/missing/x.pt", "must be a file in an existing folder"),
])
def test_a_target_that_is_not_a_file_is_refused_naming_the_flag(tmp_path, target, rule):
    target = target.replace("FOLDER", str(tmp_path))
    with pytest.raises(InputError, match=f"^--out: {rule.replace('(', '[(]').replace(')', '[)]')}; got "):
        atomic_write(target, "x", field="--out")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # the device is still there
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(InputError):
        atomic_write_all({tmp_path / "ok.json": "x", target: "y"}, field="--out")
    assert not (tmp_path / "ok.json").exists()  # refused before anything was written
