"""Download the MNIST-format data sets into a folder, each file verified against a known digest.

Behind ``distillab data fetch NAME --to DIR``. Every file is streamed to a temporary file beside
its target, verified, then moved into place with ``os.replace``: a failed or corrupt download
never leaves a partial or wrong file, and never removes a file that was already there.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

from distillab.errors import DataError, close_matches

log = logging.getLogger("distillab")

# file name -> (hashlib algorithm, hex digest)
Checksums = dict[str, tuple[str, str]]

# name -> (base URL, checksums of its files). A literal allow-list (design rule 2).
# Fashion-MNIST: the MD5s published in its README (zalandoresearch/fashion-mnist). They identify
# the upstream .gz files; the Debian package (dataset-fashion-mnist) ships re-gzipped copies with
# the same contents but other bytes, so those copies do not match this table.
# MNIST: the MD5s of the original yann.lecun.com files, which the ossci mirror serves unchanged.
DATASET_SOURCES: dict[str, tuple[str, Checksums]] = {
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": ("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            "train-labels-idx1-ubyte.gz": ("md5", "25c81989df183df01b3e8a0aad5dffbe"),
            "t10k-images-idx3-ubyte.gz": ("md5", "bef4ecab320f06d8554ea6380940ec79"),
            "t10k-labels-idx1-ubyte.gz": ("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
        },
    ),
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            "train-labels-idx1-ubyte.gz": ("md5", "d53e105ee54ea40749a09fcbcd1e9432"),
            "t10k-images-idx3-ubyte.gz": ("md5", "9fb629c4189551a2d022fa330f9573f3"),
            "t10k-labels-idx1-ubyte.gz": ("md5", "ec29112dd5afa0611ce80d1b7f02629c"),
        },
    ),
}

CHUNK_BYTES = 1 << 20


def fetch_dataset(
    name: str,
    to: Path,
    base_url: str | None = None,
    timeout: float = 60.0,
    checksums: Checksums | None = None,
) -> list[Path]:
    """Download data set ``name`` into folder ``to``; return the paths of its files.

    ``base_url`` replaces the data set's official address (a mirror, a local server, a
    ``file://`` folder). ``checksums`` replaces its table of files and digests. Files already
    present with the right digest are not downloaded again. ``timeout`` is in seconds, per
    connection attempt and per read.
    """
    if name not in DATASET_SOURCES:
        raise DataError(f"data fetch: unknown dataset {name!r}{close_matches(name, DATASET_SOURCES)}")
    official_url, known_checksums = DATASET_SOURCES[name]
    table = known_checksums if checksums is None else checksums
    _check_table(table)
    base = (base_url or official_url).rstrip("/") + "/"
    to = Path(to)
    try:
        to.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataError(f"{to}: exists and is not a folder") from None

    paths = []
    for filename, (algorithm, expected) in table.items():
        target = to / filename
        if target.is_file() and file_digest(target, algorithm) == expected.lower():
            log.info("%s: %s already present, %s verified; skipped", name, target, algorithm)
        else:
            if target.exists():
                log.warning("%s: %s does not match its %s; downloading it again", name, target, algorithm)
            _download_verified(base + quote(filename), target, algorithm, expected.lower(), timeout)
            log.info("%s: %s downloaded, %s verified", name, target, algorithm)
        paths.append(target)
    return paths


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file's bytes, read in chunks."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def _check_table(table: Checksums) -> None:
    if not table:
        raise DataError("data fetch: the checksum table is empty")
    for filename, (algorithm, _) in table.items():
        # The names become paths inside the target folder: plain file names only.
        if not filename or filename in (".", "..") or Path(filename).name != filename or "\\" in filename:
            raise DataError(f"data fetch: {filename!r} is not a plain file name")
        if algorithm not in hashlib.algorithms_available:
            raise DataError(f"data fetch: {filename}: unknown hash algorithm {algorithm!r}")


def _download_verified(url: str, target: Path, algorithm: str, expected: str, timeout: float) -> None:
    """Stream ``url`` to a temporary file beside ``target``; move it into place only if it verifies."""
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False)
    part = Path(handle.name)
    try:
        hasher = hashlib.new(algorithm)
        size = 0
        with handle, _open(url, timeout) as response:
            log.info("downloading %s", url)
            while chunk := _read(response, url, timeout):
                hasher.update(chunk)
                handle.write(chunk)
                size += len(chunk)
                log.debug("%s: %d bytes", url, size)
            handle.flush()
            os.fsync(handle.fileno())
        actual = hasher.hexdigest()
        if actual != expected:
            raise DataError(
                f"{target.name}: checksum mismatch for {url} ({algorithm} expected {expected}, got {actual}); "
                f"the download was discarded"
            )
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)  # a no-op once the file has been moved into place


def _open(url: str, timeout: float):
    try:
        return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - the user picks the base URL
    except urllib.error.HTTPError as error:
        raise DataError(f"{url}: download failed (HTTP {error.code} {error.reason})") from None
    except urllib.error.URLError as error:
        reason = f"timed out after {timeout:g} s" if isinstance(error.reason, TimeoutError) else error.reason
        raise DataError(f"{url}: download failed ({reason})") from None
    except TimeoutError:
        raise DataError(f"{url}: download failed (timed out after {timeout:g} s)") from None
    except (http.client.HTTPException, ConnectionError) as error:
        raise DataError(f"{url}: download failed ({type(error).__name__}: {error})") from None
    except ValueError as error:  # e.g. a base URL with no scheme
        raise DataError(f"{url}: not a valid URL ({error})") from None


def _read(response, url: str, timeout: float) -> bytes:
    try:
        return response.read(CHUNK_BYTES)
    except TimeoutError:
        raise DataError(f"{url}: download failed (timed out after {timeout:g} s)") from None
    except (http.client.HTTPException, ConnectionError) as error:
        raise DataError(f"{url}: download failed ({type(error).__name__}: {error})") from None
