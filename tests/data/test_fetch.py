"""fetch_dataset against a real HTTP server on 127.0.0.1 serving a folder."""

from __future__ import annotations

import functools
import hashlib
import http.server
import logging
import socket
import threading
from pathlib import Path

import pytest

from distillab.data.fetch import DATASET_SOURCES, fetch_dataset
from distillab.data.readers import read_mnist_folder
from distillab.errors import DataError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# The Debian package dataset-fashion-mnist (0.0~git20200523.55506a9-1) ships re-gzipped copies of
# the upstream files: same IDX contents, other .gz bytes (no file name in the gzip header, a 2020
# timestamp), so they fail the upstream MD5s in DATASET_SOURCES. These are their own digests.
DEBIAN_FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": ("sha256", "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
    "train-labels-idx1-ubyte.gz": ("sha256", "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
    "t10k-images-idx3-ubyte.gz": ("sha256", "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
    "t10k-labels-idx1-ubyte.gz": ("sha256", "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
}

needs_debian_files = pytest.mark.skipif(
    not all((DEBIAN_FASHION_MNIST / name).is_file() for name in DEBIAN_FASHION_MNIST_SHA256),
    reason=f"the Fashion-MNIST files of the Debian package dataset-fashion-mnist are not in {DEBIAN_FASHION_MNIST}",
)


class Server:
    """A folder served over HTTP on 127.0.0.1; ``requests`` lists the paths asked for."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:  # keep the test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def served(tmp_path: Path):
    folder = tmp_path / "served"
    folder.mkdir()
    with Server(folder) as server:
        yield server


def sha256_table(folder: Path, names: list[str]) -> dict[str, tuple[str, str]]:
    return {name: ("sha256", hashlib.sha256((folder / name).read_bytes()).hexdigest()) for name in names}


def write_files(folder: Path, contents: dict[str, bytes]) -> None:
    for name, data in contents.items():
        (folder / name).write_bytes(data)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@needs_debian_files
def test_fashion_mnist_files_download_verify_and_read(tmp_path: Path) -> None:
    with Server(DEBIAN_FASHION_MNIST) as server:
        target = tmp_path / "fashion"
        paths = fetch_dataset("fashion_mnist", target, base_url=server.url, checksums=DEBIAN_FASHION_MNIST_SHA256)
    assert paths == [target / name for name in DEBIAN_FASHION_MNIST_SHA256]
    assert listing(target) == sorted(DEBIAN_FASHION_MNIST_SHA256)
    for name, (_, digest) in DEBIAN_FASHION_MNIST_SHA256.items():
        assert hashlib.sha256((target / name).read_bytes()).hexdigest() == digest
    train, test = read_mnist_folder(target)
    assert len(train) == 60000 and len(test) == 10000
    assert tuple(train.images.shape[1:]) == (1, 28, 28)


@needs_debian_files
def test_default_table_holds_the_upstream_md5s_which_the_debian_repack_fails(tmp_path: Path) -> None:
    _, table = DATASET_SOURCES["fashion_mnist"]
    assert table["train-labels-idx1-ubyte.gz"] == ("md5", "25c81989df183df01b3e8a0aad5dffbe")
    # The smallest file only, to keep the test quick.
    only_labels = {"t10k-labels-idx1-ubyte.gz": table["t10k-labels-idx1-ubyte.gz"]}
    with Server(DEBIAN_FASHION_MNIST) as server, pytest.raises(DataError) as raised:
        fetch_dataset("fashion_mnist", tmp_path, base_url=server.url, checksums=only_labels)
    assert "t10k-labels-idx1-ubyte.gz" in str(raised.value)
    assert "bb300cfdad3c16e7a12a480ee83cd310" in str(raised.value)
    assert listing(tmp_path) == []


def test_tampered_file_raises_and_leaves_nothing(served: Server, tmp_path: Path) -> None:
    write_files(served.folder, {"a.gz": b"genuine"})
    table = sha256_table(served.folder, ["a.gz"])
    (served.folder / "a.gz").write_bytes(b"tampered")
    target = tmp_path / "out"
    with pytest.raises(DataError) as raised:
        fetch_dataset("mnist", target, base_url=served.url, checksums=table)
    message = str(raised.value)
    assert "a.gz" in message
    assert table["a.gz"][1] in message
    assert hashlib.sha256(b"tampered").hexdigest() in message
    assert listing(target) == []  # no file and no temporary file


def test_valid_files_survive_a_later_failed_fetch(served: Server, tmp_path: Path) -> None:
    write_files(served.folder, {"a.gz": b"first file", "b.gz": b"second file"})
    table = sha256_table(served.folder, ["a.gz", "b.gz"])
    target = tmp_path / "out"
    (served.folder / "b.gz").write_bytes(b"corrupted second file")
    with pytest.raises(DataError, match="b.gz"):
        fetch_dataset("mnist", target, base_url=served.url, checksums=table)
    assert listing(target) == ["a.gz"]  # the file that verified stays; nothing of b.gz
    assert (target / "a.gz").read_bytes() == b"first file"

    # A file already there stays when its replacement fails to verify, even when the new table
    # says the old one is out of date.
    (served.folder / "a.gz").write_bytes(b"new first file, corrupted in transit")
    newer_table = {"a.gz": ("sha256", hashlib.sha256(b"new first file").hexdigest())}
    with pytest.raises(DataError, match="a.gz"):
        fetch_dataset("mnist", target, base_url=served.url, checksums=newer_table)
    assert listing(target) == ["a.gz"]
    assert (target / "a.gz").read_bytes() == b"first file"


def test_wrong_file_already_present_is_replaced(served: Server, tmp_path: Path) -> None:
    write_files(served.folder, {"a.gz": b"right bytes"})
    table = sha256_table(served.folder, ["a.gz"])
    target = tmp_path / "out"
    target.mkdir()
    write_files(target, {"a.gz": b"wrong bytes"})
    fetch_dataset("mnist", target, base_url=served.url, checksums=table)
    assert (target / "a.gz").read_bytes() == b"right bytes"
    assert listing(target) == ["a.gz"]


def test_missing_file_gives_an_error_naming_the_url(served: Server, tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    write_files(target, {"absent.gz": b"kept"})
    table = {"absent.gz": ("sha256", hashlib.sha256(b"something else").hexdigest())}
    with pytest.raises(DataError) as raised:
        fetch_dataset("mnist", target, base_url=served.url, checksums=table)
    assert f"{served.url}absent.gz" in str(raised.value)
    assert "404" in str(raised.value)
    assert listing(target) == ["absent.gz"]  # the file already there is kept
    assert (target / "absent.gz").read_bytes() == b"kept"


def test_second_fetch_skips_files_already_present(served: Server, tmp_path: Path, caplog) -> None:
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"]
    write_files(served.folder, {name: name.encode() * 100 for name in names})
    table = sha256_table(served.folder, names)
    target = tmp_path / "out"
    first = fetch_dataset("fashion_mnist", target, base_url=served.url, checksums=table)
    assert len(served.requests) == 3
    with caplog.at_level(logging.INFO, logger="distillab"):
        second = fetch_dataset("fashion_mnist", target, base_url=served.url, checksums=table)
    assert second == first == [target / name for name in names]
    assert len(served.requests) == 3
    assert "skipped" in caplog.text

    (target / names[1]).unlink()
    fetch_dataset("fashion_mnist", target, base_url=served.url, checksums=table)
    assert served.requests[3:] == [f"/{names[1]}"]


def test_unreachable_server_gives_an_error_naming_the_url(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    table = {"a.gz": ("sha256", "0" * 64)}
    with pytest.raises(DataError, match=f"{url}a.gz: download failed"):
        fetch_dataset("mnist", tmp_path, base_url=url, checksums=table)
    assert listing(tmp_path) == []


def test_silent_server_times_out_with_an_error_naming_the_url(tmp_path: Path) -> None:
    # Listens (the kernel completes the connection) but never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        with pytest.raises(DataError, match=r"a\.gz: download failed \(timed out after 0.2 s\)"):
            fetch_dataset("mnist", tmp_path, base_url=url, timeout=0.2, checksums={"a.gz": ("sha256", "0" * 64)})
    assert listing(tmp_path) == []


def test_unknown_dataset_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'cifar'.*fashion_mnist, mnist"):
        fetch_dataset("cifar", tmp_path)
    with pytest.raises(DataError, match="did you mean: fashion_mnist"):
        fetch_dataset("fashion-mnist", tmp_path)
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    "table, problem",
    [
        ({"../escape.gz": ("sha256", "0" * 64)}, "not a plain file name"),
        ({"a.gz": ("crc64", "0" * 16)}, "unknown hash algorithm 'crc64'"),
        ({}, "checksum table is empty"),
    ],
)
def test_bad_checksum_tables_are_refused(table, problem: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=problem):
        fetch_dataset("mnist", tmp_path / "out", base_url="http://127.0.0.1:9/", checksums=table)
    assert not (tmp_path / "out").exists()


def test_target_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_bytes(b"")
    with pytest.raises(DataError, match="not a folder"):
        fetch_dataset("mnist", tmp_path / "taken", checksums={"a.gz": ("md5", "0" * 32)})
