"""`python -m orchestrator.weights`: ImageNet weight files for air-gapped clusters.

    fetch [--backbones NAME ...] [--source URL|DIR] DIR   download, md5-check, store in DIR
    check [--backbones NAME ...] DIR                      present / missing / corrupt, no network

Each backbone's file is Keras's own no-top ImageNet file under its standard name
(`Backbone.weights_file`), so DIR works as `--weights-dir DIR` / MEDSWEEP_WEIGHTS_DIR=DIR and the
files are byte-identical to what `keras.applications` downloads. See docs/weights.md.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from orchestrator.models import backbones
from orchestrator.errors import ConfigError, MedSweepError, WeightsUnavailable

STAGING_PREFIX = ".medsweep-fetch-"  # a download in progress; never under the final name
Log = Callable[[str], None]


@dataclass(frozen=True)
class WeightsFile:
    """One backbone's file in a weights directory and what fetch/check found or did."""

    backbone: str
    path: str
    # check: present | missing | corrupt; fetch: fetched | present | replaced (was corrupt)
    status: str
    size: int | None = None  # bytes; None when missing
    md5: str | None = None  # of the file on disk; None when missing


def pretrainable_backbones() -> list[backbones.Backbone]:
    return [b for b in backbones.BACKBONES.values() if b.pretrainable and b.weights_file]


def select_backbones(names: Iterable[str] | None) -> list[backbones.Backbone]:
    """The named backbones (default: every pretrainable one); unknown or weightless: ConfigError."""
    if not names:
        return pretrainable_backbones()
    chosen = []
    for name in names:
        bb = backbones.get_backbone(name)
        if not bb.pretrainable or not bb.weights_file:
            valid = ", ".join(b.name for b in pretrainable_backbones())
            raise ConfigError(f"{name} has no ImageNet weights to fetch; backbones with weights: "
                              f"{valid}")
        if bb not in chosen:
            chosen.append(bb)
    return chosen


def file_md5(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights(
    backbones: Iterable[backbones.Backbone | str] | None, directory: str | os.PathLike
) -> list[WeightsFile]:
    """Which backbones' files in `directory` are present (md5 matches), missing or corrupt.

    Reads only the directory: no network, no Keras cache.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise ConfigError(f"weights directory {directory} does not exist or is not a directory")
    return [_inspect(bb, directory) for bb in _as_backbones(backbones)]


def fetch_weights(
    backbones: Iterable[backbones.Backbone | str] | None,
    directory: str | os.PathLike,
    *,
    source: str | None = None,
    log: Log = print,
) -> list[WeightsFile]:
    """Store each backbone's ImageNet no-top file in `directory` under its standard name.

    A file already there with the right md5 is kept; one with the wrong md5 is downloaded again.
    Downloads go through `keras.utils.get_file` (md5 checked) into a staging folder inside
    `directory` and are renamed into place only once verified, so an interrupted or corrupt
    download never leaves a file under the final name. `source` replaces Keras's download
    location with a mirror holding the same file names: a base URL (https://, http://, file://)
    or a local folder. Raises ConfigError (directory unusable) or WeightsUnavailable (download).
    """
    chosen = _as_backbones(backbones)
    directory = Path(directory).expanduser().resolve()
    _ensure_writable(directory)
    base = _source_base(source)
    done = []
    for bb in chosen:
        found = _inspect(bb, directory)
        if found.status == "present":
            result = found
        else:
            _download_into(bb, directory, _url(bb, base))
            result = _inspect(bb, directory)
            result = WeightsFile(bb.name, result.path,
                                 "replaced" if found.status == "corrupt" else "fetched",
                                 result.size, result.md5)
        log(_describe(result))
        done.append(result)
    return done


# --- helpers --------------------------------------------------------------------------------------


def _as_backbones(backbones: Iterable[backbones.Backbone | str] | None) -> list[backbones.Backbone]:
    if backbones is None:
        return pretrainable_backbones()
    items = list(backbones)
    if not items:
        return pretrainable_backbones()
    names = [b for b in items if isinstance(b, str)]
    if len(names) == len(items):
        return select_backbones(names)
    return [backbones.get_backbone(b) if isinstance(b, str) else b for b in items]


def _inspect(bb: backbones.Backbone, directory: Path) -> WeightsFile:
    path = directory / bb.weights_file
    if not path.is_file():
        return WeightsFile(bb.name, str(path), "missing")
    md5 = file_md5(path)
    ok = bb.weights_hash is None or md5 == bb.weights_hash
    return WeightsFile(bb.name, str(path), "present" if ok else "corrupt", path.stat().st_size, md5)


def _ensure_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=directory)
        os.rmdir(probe)
    except OSError as err:
        raise ConfigError(f"weights directory {directory} is not writable "
                          f"({err.strerror or err})") from None


def _source_base(source: str | None) -> str | None:
    if not source:
        return None
    if "://" in source:
        return source.rstrip("/")
    folder = Path(source).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"--source {source} is neither a URL nor an existing folder")
    return folder.as_uri()


def _url(bb: backbones.Backbone, base: str | None) -> str:
    return f"{base}/{bb.weights_file}" if base else bb.weights_url


def _download_into(bb: backbones.Backbone, directory: Path, url: str) -> None:
    import keras

    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=directory)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(backbones.DOWNLOAD_SOCKET_TIMEOUT_S)  # black-holed egress: fail

    interactive = keras.config.is_interactive_logging_enabled()
    if not sys.stdout.isatty():  # Keras's progress bar only where someone watches it
        keras.config.disable_interactive_logging()
    try:
        try:
            got = keras.utils.get_file(bb.weights_file, url, file_hash=bb.weights_hash,
                                       hash_algorithm="md5", cache_dir=staging,
                                       cache_subdir=staging)
            with open(got, "rb") as f:
                os.fsync(f.fileno())
            os.replace(got, directory / bb.weights_file)
        except Exception as err:  # URL failure, timeout, md5 mismatch, disk full
            reason = " ".join(str(err).split()) or type(err).__name__
            raise WeightsUnavailable(f"{bb.name}: could not fetch {bb.weights_file} from {url} "
                                     f"into {directory}: {reason}") from err
    finally:
        socket.setdefaulttimeout(previous)
        if interactive:
            keras.config.enable_interactive_logging()
        shutil.rmtree(staging, ignore_errors=True)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _describe(f: WeightsFile) -> str:
    """One line: backbone, what happened, size, where (the path ends in the file's name)."""
    text = {"fetched": "fetched", "replaced": "re-fetched (was corrupt)",
            "present": "present (md5 ok)", "missing": "missing", "corrupt": "CORRUPT"}[f.status]
    line = f"{f.backbone:<17} {text:<24} {_size(f.size):>9}  {f.path}"
    if f.status == "corrupt":
        line += f"  (md5 {f.md5}, expected {backbones.get_backbone(f.backbone).weights_hash})"
    return line


def _hint(directory: Path) -> str:
    return (f"\nweights directory: {directory}\n"
            f"use it with:  --weights-dir {directory}\n"
            f"         or:  export MEDSWEEP_WEIGHTS_DIR={directory}")


# ----------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    names = ", ".join(b.name for b in pretrainable_backbones())
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.weights",
        description="Keras's ImageNet no-top weight files for an air-gapped cluster: `fetch` on a "
        "machine with internet, copy DIR to the cluster, train with --weights-dir DIR "
        "(docs/weights.md).")
    sub = p.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download each file into DIR (md5 checked; files "
                           "already there with the right md5 are kept)")
    check = sub.add_parser("check", help="list which files in DIR are present, missing or "
                           "corrupt (md5); no network. Exit 1 if any is missing or corrupt")
    for s in (fetch, check):
        s.add_argument("--backbones", nargs="+", metavar="NAME",
                       help=f"default: all with ImageNet weights ({names})")
    fetch.add_argument("--source", metavar="URL|DIR", help="a mirror holding the files under "
                       "their standard names (https://..., file://..., or a folder) instead of "
                       "Keras's storage.googleapis.com")
    for s in (fetch, check):
        # nargs="?": argparse gives `--backbones a b DIR` all to --backbones; _parse takes DIR back
        s.add_argument("directory", metavar="DIR", nargs="?", help="the weights directory")
    return p


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.directory is None and args.backbones and len(args.backbones) > 1:
        args.directory = args.backbones.pop()
    if args.directory is None:
        parser.error(f"{args.command}: the following arguments are required: DIR")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        chosen = select_backbones(args.backbones)
        directory = Path(args.directory).expanduser().resolve()
        if args.command == "check":
            found = check_weights(chosen, directory)
            for f in found:
                print(_describe(f))
            bad = [f for f in found if f.status != "present"]
            if bad:
                print(f"{len(bad)} of {len(found)} weight files missing or corrupt in {directory}; "
                      f"run: python -m orchestrator.weights fetch {directory}", file=sys.stderr)
                return 1
            print(_hint(directory))
            return 0
        fetch_weights(chosen, directory, source=args.source)
    except MedSweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(_hint(directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
