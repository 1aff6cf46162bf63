"""Archive extraction never writes outside its folder and refuses archives that try: with Python's
"data" filter, and without it (as on Python 3.11.0-3.11.3, which lack it)."""
import io
import os
import tarfile

import pytest

from ranem.data.imagenette import extract_safely


def _archive(path, members):
    """A .tgz with ``members``: (name, content) for files, (name, '->', target) for symlinks."""
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            info = tarfile.TarInfo(member[0])
            if len(member) == 3:
                info.type, info.linkname = tarfile.SYMTYPE, member[2]
                tar.addfile(info)
            else:
                data = member[1].encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(params=["data filter", "no filter"])
def mode(request, monkeypatch):
    if request.param == "data filter":
        if not hasattr(tarfile, "data_filter"):
            pytest.skip("this interpreter has no tarfile data filter")
    else:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)  # as on Python < 3.11.4
    return request.param


def _outside(tmp_path, target):
    """Every file under tmp_path that is neither inside ``target`` nor an archive."""
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                  if p.is_file() and target not in p.parents and p.suffix != ".tgz")


def test_a_plain_archive_is_extracted(tmp_path, mode):
    archive = _archive(tmp_path / "ok.tgz", [("v/train/a.txt", "a"), ("v/val/b.txt", "b"), ("v/link", "->", "train")])
    target = tmp_path / "target"
    extract_safely(archive, target)
    assert (target / "v" / "train" / "a.txt").read_text() == "a"
    assert (target / "v" / "link" / "a.txt").read_text() == "a"


@pytest.mark.parametrize("members", [
    [("v/ok.txt", "fine"), ("../escape.txt", "escaped")],                       # parent folder
    [("v/ok.txt", "fine"), ("/tmp/ranem_absolute_escape.txt", "escaped")],      # absolute path
    [("v/out", "->", "../.."), ("v/out/escape.txt", "escaped")],                # link out of the folder
    [("x", "->", "."), ("y", "->", "x/.."), ("y/escape.txt", "escaped")],       # chained links
    [("abs", "->", "/tmp"), ("abs/ranem_link_escape.txt", "escaped")],          # absolute link
], ids=["dotdot", "absolute", "link", "chained-links", "absolute-link"])
def test_escaping_members_are_refused(tmp_path, mode, members):
    target = tmp_path / "deep" / "target"
    archive = _archive(tmp_path / "evil.tgz", members)
    with pytest.raises(tarfile.TarError):
        extract_safely(archive, target)
    assert _outside(tmp_path, target) == []
    for name in ("/tmp/ranem_absolute_escape.txt", "/tmp/ranem_link_escape.txt"):
        assert not os.path.exists(name)
