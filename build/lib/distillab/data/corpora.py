"""Text corpora: real English text that installs offline, and a user's own folder.

A corpus is a list of documents ``(name, text)``. Jane Austen's six novels and Moby-Dick
ship as R data in Debian's ``r-cran-janeaustenr`` and ``r-cran-tokenizers``; R keeps a
package's data in a lazy-load database (``Rdata.rdx``, an RDS index of offsets, and
``Rdata.rdb``, zlib-compressed serialised R objects), which ``rdata`` parses. ``fortunes``
is plain text, one file per topic, ``%`` between quotations. A user's folder holds ``.txt``
files (one document each) and ``.jsonl`` files (one document per line, its ``text`` field).
"""

from __future__ import annotations

import json
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

from distillab.errors import DataError

R_LIBRARY = Path("/usr/lib/R/site-library")
FORTUNES = Path("/usr/share/games/fortunes")
MAX_CORPUS_BYTES = 2_000_000_000


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def read_r_lazyload(folder: Path, where: str) -> dict[str, list[str]]:
    """The character vectors of an R package's ``data/Rdata.{rdx,rdb}``: name -> lines."""
    import rdata

    index_path, database = folder / "Rdata.rdx", folder / "Rdata.rdb"
    if not index_path.is_file() or not database.is_file():
        raise DataError(f"{where}: no R data in {folder} (Rdata.rdx / Rdata.rdb)")
    raw = database.read_bytes()
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata: "Unknown file type: assumed RDS" (headerless serialisations)
        index = rdata.read_rds(index_path)
        for name, (offset, length) in index["variables"].items():
            blob = raw[int(offset) : int(offset) + int(length)]  # 4-byte length, then zlib
            value = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))
            out[str(name)] = [str(line) for line in value]
    return out


def _r_package(package: str, where: str, install: str) -> dict[str, list[str]]:
    folder = R_LIBRARY / package / "data"
    if not folder.is_dir():
        raise DataError(f"{where}: {package} is not installed ({install})")
    return read_r_lazyload(folder, where)


AUSTEN_TITLES = {"sensesensibility": "Sense and Sensibility", "prideprejudice": "Pride and Prejudice",
                 "mansfieldpark": "Mansfield Park", "emma": "Emma", "northangerabbey": "Northanger Abbey",
                 "persuasion": "Persuasion"}


def read_austen(path: Path | None, where: str = "data") -> list[Document]:
    """Jane Austen's six completed novels (about 4.0M characters), lines joined with newlines."""
    if path is not None:
        return read_text_folder(path, where)
    books = _r_package("janeaustenr", where, "apt-get install r-cran-janeaustenr")
    return [Document(AUSTEN_TITLES.get(key, key), "\n".join(lines)) for key, lines in sorted(books.items())]


def read_moby_dick(path: Path | None, where: str = "data") -> list[Document]:
    if path is not None:
        return read_text_folder(path, where)
    books = _r_package("tokenizers", where, "apt-get install r-cran-tokenizers")
    return [Document("Moby-Dick", "\n".join(books["mobydick"]))]


def read_fortunes(path: Path | None, where: str = "data") -> list[Document]:
    """Each fortunes file (topic) as one document, its quotations separated by blank lines."""
    folder = path or FORTUNES
    if not folder.is_dir():
        raise DataError(f"{where}: no fortunes in {folder} (apt-get install fortunes)")
    documents = []
    for file in sorted(folder.iterdir()):
        if file.suffix or not file.is_file():  # the .dat index files and links
            continue
        text = _decode(file.read_bytes(), file, where)
        quotes = [q.strip() for q in text.split("\n%\n") if q.strip()]
        documents.append(Document(file.name, "\n\n".join(quotes)))
    return _non_empty(documents, folder, where)


def files_stamp(path: Path | str | None) -> tuple:
    """Each file's name, size and modification time under ``path``: what tells an edited corpus
    from the one this process already read and tokenised."""
    if path is None or not Path(path).exists():
        return ()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def read_text_folder(path: Path, where: str = "data") -> list[Document]:
    """``.txt`` files (a document each) and ``.jsonl`` files (a document per line's ``text``), sorted by name."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl"))
    if not files:
        raise DataError(f"{where}.path: {path} has no .txt or .jsonl files")
    total, documents = 0, []
    for file in files:
        total += file.stat().st_size
        if total > MAX_CORPUS_BYTES:
            raise DataError(f"{where}.path: the corpus is over {MAX_CORPUS_BYTES:,} bytes")
        text = _decode(file.read_bytes(), file, where)
        if file.suffix == ".jsonl":
            documents += _jsonl_documents(text, file, where)
        else:
            documents.append(Document(file.name, text))
    return _non_empty(documents, path, where)


def _jsonl_documents(text: str, file: Path, where: str) -> list[Document]:
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}.path: {file} line {number}: not JSON ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{where}.path: {file} line {number}: expected an object with a string 'text' field")
        documents.append(Document(f"{file.name}:{number}", record["text"]))
    return documents


def _decode(raw: bytes, file: Path, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{where}.path: {file} is not UTF-8 text (byte {error.start}: {error.reason})") from None


def _non_empty(documents: list[Document], path: Path, where: str) -> list[Document]:
    documents = [d for d in documents if d.text.strip()]
    if not documents:
        raise DataError(f"{where}.path: {path} holds no text (every document is empty)")
    return documents


# name -> reader(path, where). A literal allow-list (design rule 2).
CORPORA = {
    "austen": (read_austen, "Jane Austen's six novels (Debian r-cran-janeaustenr), 4.0M characters"),
    "moby_dick": (read_moby_dick, "Melville's Moby-Dick (Debian r-cran-tokenizers), 1.2M characters"),
    "fortunes": (read_fortunes, "the fortune cookie files (Debian fortunes), one document per topic"),
    "text_folder": (read_text_folder, "your .txt files (a document each) and .jsonl files ('text' per line)"),
}
