"""Reading splits from local files or the hub, column mapping and column checks."""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import os
import uuid
import warnings
from pathlib import Path

from ..common.errors import DataWarning, UserError
from ..common.lazy import datasets
from .schema import DataSource, DataSpec

FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def describe(split: str, source: DataSource) -> str:
    """How messages name a split: `data.train (path/to/file.csv)`."""
    if source.path is not None:
        return f"data.{split} ({source.path})"
    if source.parallel is not None:
        return f"data.{split} ({', '.join(source.parallel.values())})"
    detail = ", ".join(part for part in (source.config, f"split {source.split or split}") if part)
    return f"data.{split} (hub {source.hub}, {detail})"


def load_splits(spec: DataSpec, readers: dict | None = None) -> dict[str, datasets.Dataset]:
    """Read every configured split, rename columns and apply skip and max_samples.

    `readers`: file formats a task reads besides the built-in ones, `{suffix: reader(path, where) -> Dataset}`.

    Raises:
        UserError: missing or unreadable file, unknown format, unreachable hub dataset, empty split,
            or a `data.columns` entry naming a column the split does not have.
    """
    splits = {}
    for split, source in spec.sources().items():
        where = describe(split, source)
        if source.path is not None:
            dataset = read_file(source.path, where, readers)
        elif source.parallel is not None:
            dataset = read_parallel(source.parallel, where)
        else:
            dataset = _read_hub(source, split, where)
        dataset = _renamed(dataset, spec.columns, where)
        if source.skip:
            if source.skip >= len(dataset):
                raise UserError(
                    f"{where}: skip: {source.skip} leaves no rows (the split has {len(dataset)}); "
                    f"expected fewer than {len(dataset)}"
                )
            dataset = dataset.select(range(source.skip, len(dataset)))
        if source.max_samples is not None and source.max_samples < len(dataset):
            dataset = dataset.select(range(source.max_samples))
        if len(dataset) == 0:
            raise UserError(f"{where}: the split is empty (0 rows); expected at least one example")
        splits[split] = dataset
    return splits


def _renamed(dataset: datasets.Dataset, columns: dict[str, str], where: str) -> datasets.Dataset:
    """`data.columns` applied. A mapping whose source column is absent but whose target is there is allowed (the same
    recipe on data renamed beforehand), with a warning, since it may also be a typo.

    Raises:
        UserError: a source column absent and its target too, or a rename onto a column that exists.
    """
    names = dataset.column_names
    for old, new in columns.items():
        if old not in names and new not in names:
            raise UserError(
                f"{where}: data.columns maps column '{old}', which is not in the data; available columns: "
                f"{', '.join(names)}"
            )
        if old in names and new in names and old != new:
            raise UserError(
                f"{where}: data.columns renames '{old}' to '{new}', but the data has a column '{new}' already"
            )
        if old not in names:
            warnings.warn(
                f"{where}: data.columns maps '{old}', which the data does not have (it has '{new}' already)",
                DataWarning,
                stacklevel=4,
            )
    renames = {old: new for old, new in columns.items() if old in names and old != new}
    return dataset.rename_columns(renames) if renames else dataset


def read_file(path: str, where: str, readers: dict | None = None) -> datasets.Dataset:
    """Read one local file into a Dataset (Arrow-backed and cached, so tokenization is cached too).

    `readers`: a task's own readers by suffix (`Task.file_readers`), tried before the built-in formats.
    """
    file = Path(path)
    if not file.exists():
        raise UserError(f"{where}: file not found: {file}")
    if not file.is_file():
        raise UserError(f"{where}: not a file: {file}")
    readers = readers or {}
    if file.suffix.lower() in readers:
        dataset = readers[file.suffix.lower()](file, where)
        if dataset is not None:  # None: not the task's own layout, so one of the formats below
            return dataset
    builder = FORMATS.get(file.suffix.lower())
    if builder is None:
        expected = ", ".join(dict.fromkeys([*FORMATS, *readers]))
        raise UserError(f"{where}: unknown file type '{file.suffix}'; expected one of {expected}")
    options: dict = {}
    if builder == "csv":
        # TSV has no quoting (IANA text/tab-separated-values); empty cells stay "" rather than NaN.
        options = {"keep_default_na": False}
        if file.suffix.lower() == ".tsv":
            options |= {"sep": "\t", "quoting": csv.QUOTE_NONE}
        _check_header(file, where, options.get("sep", ","))
    try:
        return datasets.load_dataset(builder, data_files=str(file), split="train", **options)
    except Exception as exc:  # datasets wraps parser errors in several layers
        if _has_no_rows(file, builder, options):  # datasets cannot build an empty split and fails obscurely
            raise UserError(f"{where}: {file.name} has no rows (0 examples); expected at least one example") from None
        if builder in ("csv", "json"):
            _locate_text_error(file, where, lines=file.suffix.lower() == ".jsonl")
        raise UserError(f"{where}: cannot read {file.name} as {file.suffix.lstrip('.')}: {_root_cause(exc)}") from None


def _check_header(file: Path, where: str, separator: str) -> None:
    """A CSV header that names a column twice (pandas would quietly rename the second to `name.1`).

    Raises:
        UserError: naming the column.
    """
    with open(file, encoding="utf-8", errors="replace", newline="") as handle:
        header = next(csv.reader(handle, delimiter=separator), [])
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise UserError(f"{where} line 1: the header names column '{repeated[0]}' twice; expected distinct names")


def _locate_text_error(file: Path, where: str, lines: bool) -> None:
    """Where the parser failed, said the way a user finds it: text that is not UTF-8 (the byte's line), or a
    JSON Lines line that is not JSON (its line number, not a byte position). Returns when it finds neither.

    Raises:
        UserError: one line with the file's line number.
    """
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise UserError(
            f"{where} line {line}: {file.name} is not UTF-8 text (byte 0x{raw[error.start]:02x}); save it as UTF-8"
        ) from None
    for number, line in enumerate(text.splitlines() if lines else (), 1):
        try:
            if line.strip():
                json.loads(line)
        except ValueError as error:
            raise UserError(f"{where} line {number}: not valid JSON ({error.msg}, column {error.colno})") from None


def read_parallel(files: dict[str, str], where: str) -> datasets.Dataset:
    """Line-aligned plain-text files (a parallel corpus such as Multi30k's train.de / train.en) as one column each.

    Raises:
        UserError: a missing or unreadable file, or files with different numbers of lines.
    """
    columns, counts = {}, {}
    for column, path in files.items():
        file = Path(path)
        if not file.is_file():
            raise UserError(f"{where}: parallel.{column}: file not found: {file}")
        try:
            lines = file.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{where}: parallel.{column}: cannot read {file.name} as UTF-8 text: {exc}") from None
        if lines and lines[-1] == "":  # the newline that ends the last line
            lines.pop()
        columns[column] = [line.removesuffix("\r") for line in lines]
        counts[column] = len(lines)
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{Path(files[column]).name}: {count:,}" for column, count in counts.items())
        raise UserError(
            f"{where}: parallel files must have the same number of lines (line N of each is example N); got {shown}"
        )
    return datasets.Dataset.from_dict(columns)


def _has_no_rows(file: Path, builder: str, options: dict) -> bool:
    """Whether a file that failed to load is merely empty: no bytes, a header only, or blank lines."""
    try:
        if file.stat().st_size == 0:
            return True
        if builder == "csv":
            import pandas

            return len(pandas.read_csv(file, nrows=1, **options)) == 0
        if builder == "parquet":
            import pyarrow.parquet

            return pyarrow.parquet.ParquetFile(file).metadata.num_rows == 0
        return file.read_text(encoding="utf-8").strip() in ("", "[]")
    except Exception:  # unreadable for another reason: report the parser's error instead
        return False


def _read_hub(source: DataSource, split: str, where: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(source.hub, source.config, split=source.split or split, revision=source.revision)
    except Exception as exc:
        offline = [
            name for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(name, "0") not in ("0", "")
        ]
        if offline:
            raise UserError(
                f"{where}: hub dataset '{source.hub}' is not in the local cache and {offline[0]} is set; save the "
                "split to a local file on a connected machine and set its `path` instead"
            ) from None
        raise UserError(
            f"{where}: cannot load hub dataset '{source.hub}': {_root_cause(exc)}. "
            "Offline? Save the split to a local file on a connected machine and set its `path` instead."
        ) from None


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(exc).__name__


def row_location(source: DataSource, index: int) -> str:
    """A 0-based row index as a user finds it: the file line for line-based files, else the row number."""
    suffix = Path(source.path).suffix.lower() if source.path else ""
    if source.parallel is not None:
        return f"line {index + 1}"
    if suffix in (".csv", ".tsv"):
        return f"line {index + 2}"  # after the header; exact unless a quoted field spans lines
    if suffix == ".jsonl":
        return f"line {index + 1}"
    return f"row {index + 1}"


def require_columns(column_names: list[str], columns: dict[str, str], where: str) -> None:
    """Fail with one line naming the recipe key, the missing column and the columns that exist.

    Args:
        column_names: the columns there are (a split's, or the keys of a prediction input row).
        columns: `{recipe key: column name}`, e.g. `{"task.text_column": "text"}`.
    """
    for key, column in columns.items():
        if column not in column_names:
            close = difflib.get_close_matches(column, column_names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(
                f"{where}: column '{column}' ({key}) not found{hint}; available columns: {', '.join(column_names)}. "
                f"Set {key} or map it with data.columns"
            )


def in_memory(columns: dict[str, list]) -> datasets.Dataset:
    """`Dataset.from_dict(columns)` under a random fingerprint.

    datasets names a new dataset by hashing all of it, ~5 ms even for one row: a third of a served request's
    time. The name only keys the cache of file-backed data, and this data is in memory.
    """

    class Named(datasets.Dataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, fingerprint=uuid.uuid4().hex, **kwargs)

    named = Named.from_dict(columns)
    return datasets.Dataset(named.data, info=named.info, fingerprint=named._fingerprint)


def tokenization_fingerprint(dataset: datasets.Dataset, tokenizer, *settings) -> str:
    """Cache key of a tokenization `map`: the data, the tokenizer's full definition and the settings.

    Passed as `new_fingerprint`: otherwise datasets pickles the whole tokenizer to fingerprint the map
    function, which takes seconds per split, on every run.
    """
    digest = hashlib.sha256(dataset._fingerprint.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    digest.update(definition.encode())
    digest.update(
        repr((type(tokenizer).__name__, tokenizer.padding_side, tokenizer.model_input_names, settings)).encode()
    )
    return digest.hexdigest()[:32]
