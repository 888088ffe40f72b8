"""The wheels a bare GPU machine needs to run benchmarks/gpu_check.py, in one folder small enough to carry there.

The lent GPU machines have Python 3.12 with torch, transformers, peft, accelerate, tokenizers, safetensors, typer,
sacrebleu, tensorboard and scikit-learn, no registry, and take at most 64 MiB of working tree per call. llmtune
also needs datasets (with pyarrow and pandas), pydantic, evaluate and seqeval. pyarrow's wheel alone is 55 MB;
its Flight RPC and S3 libraries (17 MB of it) are linked by nothing datasets loads (`ldd` on pyarrow's modules),
so this script repacks the wheel without them. bitsandbytes, for the QLoRA check, is too big to come along:
gpu_check.py skips that check without it. DeepSpeed (its ZeRO-3 check) comes as a wheel built here from its sdist.

    python benchmarks/gpu_wheels.py gpu-wheels                    # download, repack, print the size
    python benchmarks/gpu_wheels.py gpu-wheels --verify python3.12 # and check that datasets works from them

Measured 2026-11-30: 21 wheels, 53.0 MiB; with the 1.2 MB checkout, one call's 64 MiB holds them. gpu-wheels/ is
git-ignored, so name it in the device tool's `carry`. Then, on the GPU machine:

    pip install --no-index --no-deps gpu-wheels/*.whl && python benchmarks/gpu_check.py --out $OUT

For benchmarks/gpu_speed.py alone, `--speed` builds the small set an image with pyarrow and pandas lacks (datasets,
dill, multiprocess, pydantic and its three helpers, evaluate, seqeval), plus bitsandbytes cut to its CUDA 13.0 and
CPU libraries (for the QLoRA workload) and TRL (the second peer): no DeepSpeed, no pyarrow.

    python benchmarks/gpu_wheels.py gpu-speed-wheels --speed
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGES = [
    "datasets==5.2.0", "pyarrow==26.0.1", "pandas", "python-dateutil", "pytz", "tzdata", "dill<0.4.2",
    "multiprocess<0.70.20", "xxhash", "fsspec<=2026.9.0", "pydantic==2.14.4", "pydantic-core==2.50.5",
    "annotated-types", "typing-inspection", "evaluate", "requests", "urllib3", "idna",
    "charset-normalizer", "certifi", "hjson", "msgpack", "ninja", "py-cpuinfo", "einops",
]  # fmt: skip
SPEED_PACKAGES = [
    "datasets==5.2.0", "dill<0.4.2", "multiprocess<0.70.20", "pydantic==2.14.4", "pydantic-core==2.50.5",
    "annotated-types", "typing-inspection", "evaluate", "bitsandbytes==0.50.2", "trl",
]  # fmt: skip
BNB_KEPT = ("libbitsandbytes_cuda130", "libbitsandbytes_cpu")  # the image's torch is cu130; CPU for its fallbacks
# seqeval has only an sdist since 1.0 (a binary-only download silently takes 0.0.10): built here like DeepSpeed.
SEQEVAL = "seqeval==1.2.2"
DEEPSPEED = "deepspeed==0.19.8"  # only an sdist on PyPI: built here into a pure-Python wheel (no compiled ops)
PLATFORM = ["--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_24_x86_64",
            "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
            "--python-version", "3.12", "--implementation", "cp"]  # fmt: skip
LEFT_OUT = ("libarrow_flight", "libarrow_python_flight", "_flight.", "libarrow_s3", "_s3fs.")
LIMIT = 64 * 2**20


def download(folder: Path, speed: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", *PLATFORM]
    subprocess.run([*command, "-d", str(folder), *(SPEED_PACKAGES if speed else PACKAGES)], check=True)
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(folder), SEQEVAL]
    build += [] if speed else [DEEPSPEED]
    subprocess.run(build, check=True, env={**os.environ, "DS_BUILD_OPS": "0"})


def repack_pyarrow(folder: Path) -> None:
    """pyarrow's wheel without Flight and S3 (RECORD lines of the dropped files removed too)."""
    (wheel,) = folder.glob("pyarrow-*.whl")
    repack(wheel, lambda file: any(part in file for part in LEFT_OUT))


def repack_bitsandbytes(folder: Path) -> None:
    """bitsandbytes' wheel with only the CUDA 13.0 and CPU libraries (one per CUDA version otherwise, ~10 MB each)."""
    (wheel,) = folder.glob("bitsandbytes-*.whl")
    repack(wheel, lambda file: file.startswith("libbitsandbytes_") and not file.startswith(BNB_KEPT))


def repack(wheel: Path, dropped) -> None:
    """The wheel without the files whose base name `dropped` picks (their RECORD lines removed too)."""
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            name = item.filename
            if dropped(name.rsplit("/", 1)[-1]):
                continue
            data = source.read(item)
            if name.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                kept = [line for line in lines if not dropped(line.split(",")[0].rsplit("/", 1)[-1])]
                data = ("\n".join(kept) + "\n").encode()
            target.writestr(item, data)
    slim.replace(wheel)


def verify(folder: Path, python: str) -> None:
    """A fresh venv of that Python, the wheels installed (what else they need from the registry), datasets used."""
    with tempfile.TemporaryDirectory() as work:
        venv = Path(work) / "venv"
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, *map(str, folder.glob("*.whl"))], check=True)
        probe = (
            "import datasets, evaluate, pydantic, seqeval, json, tempfile, pathlib\n"
            "folder = pathlib.Path(tempfile.mkdtemp())\n"
            "(folder / 'a.jsonl').write_text(json.dumps({'text': 'x', 'label': 1}) + '\\n')\n"
            "ds = datasets.load_dataset('json', data_files=str(folder / 'a.jsonl'), split='train')\n"
            "ds = ds.map(lambda row: {'n': len(row['text'])})\n"
            "ds.save_to_disk(str(folder / 'saved'))\n"
            "print('datasets works:', datasets.load_from_disk(str(folder / 'saved')))"
        )
        subprocess.run([str(venv / "bin" / "python"), "-c", probe], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--verify", metavar="PYTHON", help="a Python 3.12 to install the wheels into and try")
    parser.add_argument("--speed", action="store_true", help="only what benchmarks/gpu_speed.py needs (~9 MB)")
    args = parser.parse_args()
    download(args.folder, args.speed)
    if args.speed:
        repack_bitsandbytes(args.folder)
    else:
        repack_pyarrow(args.folder)
    total = sum(path.stat().st_size for path in args.folder.glob("*.whl"))
    count = len(list(args.folder.glob("*.whl")))
    print(f"{count} wheels, {total / 2**20:.1f} MiB (limit per call {LIMIT / 2**20:.0f} MiB)")
    if args.verify:
        verify(args.folder, args.verify)


if __name__ == "__main__":
    main()
