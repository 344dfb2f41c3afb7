"""Writing a checkpoint directory without ever losing one: what may be replaced, and how.

``atomic_directory(target)`` yields an empty folder to fill; only when the block succeeds
does the result take ``target``'s place. The folder lives in a staging directory beside the
target, ``.NAME.tmp-XXXXXXXX``, which carries a marker file (``STAGING_MARKER``) naming the
target and the writing process. Replacing an existing target is one atomic exchange
(``renameat2(RENAME_EXCHANGE)``) where the file system has it, so a kill at any instant leaves
either the old or the new checkpoint at the target. Elsewhere it is two renames with the old
one parked in the staging directory, and the next save to (or load of) that target puts a
parked checkpoint back if the target is missing. Staging directories of dead processes are
removed by the next save to the same target: only directories whose names match the pattern
AND that carry the marker naming that target, never anything else.

What may be replaced is the caller's ``check(target)`` (``checkpoint_io.check_output``), run
before anything is written and again just before the replace.

Everything written follows the process umask (``tempfile.mkdtemp`` would make 0700, and the
safetensors writer makes its file 0600).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable

log = logging.getLogger("quant_core")
STAGING_MARKER = ".quantllm-staging.json"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _after_step(step: str) -> None:
    """Called between the steps of a save; tests replace it to kill the process there."""


def staging_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


@contextlib.contextmanager
def atomic_directory(target: Path, check: Callable[[Path], None]):
    """Yield an empty directory; when the block succeeds it replaces ``target`` (see the module doc).
    ``check(target)`` raises if the target must not be replaced."""
    target = Path(target)
    recover_interrupted(target)  # first: a checkpoint parked by a killed save is the target again
    check(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _make_staging(target)
    _after_step("staging")
    try:
        new = staging / "new"
        new.mkdir()
        yield new
        _after_step("written")
        follow_umask(new)
        check(target)  # again: the target may have changed meanwhile
        _install(new, target, staging)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    _after_step("done")


def _make_staging(target: Path) -> Path:
    for _ in range(100):
        staging = target.with_name(staging_prefix(target) + secrets.token_hex(4))
        try:
            staging.mkdir(0o777)  # the umask applies, unlike tempfile.mkdtemp's 0700
        except FileExistsError:
            continue
        (staging / STAGING_MARKER).write_text(json.dumps({"target": target.name, "pid": os.getpid()}))
        return staging
    raise OSError(f"could not create a staging directory beside {target}")


def _install(new: Path, target: Path, staging: Path) -> None:
    if not target.exists():
        os.rename(new, target)
        _after_step("installed")
        return
    if exchange(new, target):  # one atomic step: the target is always a whole checkpoint
        _after_step("installed")
        return
    parked = staging / "old"
    os.rename(target, parked)
    _after_step("parked")
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(parked, target)
        raise
    _after_step("installed")


def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not glibc >= 2.28
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_RENAMEAT2 = _renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system or file system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def process_umask() -> int:
    try:  # Linux states it without changing it (os.umask can only be read by setting it)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(root: Path) -> None:
    """Give ``root`` and everything in it the modes a plain ``open``/``mkdir`` would have."""
    mask = process_umask()
    os.chmod(root, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


# ---------------------------------------------------------------- stale staging
def _marker(path: Path) -> dict | None:
    try:
        marker = json.loads((path / STAGING_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def stale_staging(target: Path) -> list[Path]:
    """Staging directories of ``target`` left by processes that died: name pattern, marker naming
    this target, and a writer that is no longer running (a live one is still writing)."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    found = []
    for path in target.parent.glob(staging_prefix(target) + "*"):
        marker = _marker(path) if path.is_dir() and not path.is_symlink() else None
        if marker is not None and marker.get("target") == target.name and not _alive(marker.get("pid")):
            found.append(path)
    return found


def recover_interrupted(target: Path) -> None:
    """Put back a checkpoint parked by an interrupted replace (if the target is missing) and
    remove the staging directories of dead writers."""
    target = Path(target)
    for staging in stale_staging(target):
        parked = staging / "old"
        if parked.is_dir() and not target.exists():
            os.rename(parked, target)
            log.warning("restored %s, which an interrupted save had moved aside", target)
        shutil.rmtree(staging, ignore_errors=True)
        log.info("removed %s, left by an interrupted save", staging)
