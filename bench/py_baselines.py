#!/usr/bin/python3
"""Python checkpoint-writing baselines for bench/ckpt_bench.

One write per invocation, so that ckpt_bench can interleave it with cairn's own writes:

    py_baselines.py --mode h5py  --size 1073741824 --out /tmp/x.h5
    py_baselines.py --mode torch --size 1073741824 --out /tmp/x.pt
    py_baselines.py --check          # which libraries are importable

The state is 256 float32 tensors of size/256 bytes each (numpy's PCG64, generated
before timing). The printed "seconds" cover only the write and its fsyncs (file, then
its directory); tensor creation and interpreter start are excluded. Output: one JSON line.
"""

import argparse
import json
import os
import sys
import time

NUM_TENSORS = 256


def make_state(size):
    import numpy as np

    per = size // NUM_TENSORS
    if per % 4 or per * NUM_TENSORS != size:
        sys.exit(f"--size {size} is not 256 float32 tensors")
    rng = np.random.default_rng(12345)
    return {f"layer{i:03d}/w": rng.random(per // 4, dtype=np.float32) for i in range(NUM_TENSORS)}


def fsync_dir(path):
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_h5py(state, out):
    import h5py

    t0 = time.perf_counter()
    with h5py.File(out, "w") as f:  # default: contiguous layout, no filters
        for name, arr in state.items():
            f.create_dataset(name, data=arr)
        f.flush()
        try:
            fd = f.id.get_vfd_handle()  # the sec2 driver's descriptor
            os.fsync(fd)
        except Exception:  # pragma: no cover - other drivers: fsync after close below
            fd = None
    if fd is None:
        fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(out)
    return time.perf_counter() - t0


def write_torch(state, out):
    import torch

    tensors = {name: torch.from_numpy(arr) for name, arr in state.items()}
    t0 = time.perf_counter()
    with open(out, "wb") as f:
        torch.save(tensors, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(out)
    return time.perf_counter() - t0


def check():
    info = {}
    for mod in ("numpy", "h5py", "torch"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except Exception:
            info[mod] = None
    info["python"] = sys.version.split()[0]
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("h5py", "torch"))
    ap.add_argument("--size", type=int, help="total bytes of the state (256 f32 tensors)")
    ap.add_argument("--out", help="file to write (overwritten)")
    ap.add_argument("--check", action="store_true", help="print importable library versions")
    args = ap.parse_args()
    if args.check:
        print(json.dumps(check()))
        return
    if not (args.mode and args.size and args.out):
        ap.error("--mode, --size and --out are required (or --check)")
    state = make_state(args.size)
    secs = write_h5py(state, args.out) if args.mode == "h5py" else write_torch(state, args.out)
    print(json.dumps({"mode": args.mode, "bytes": args.size, "file_bytes": os.path.getsize(args.out),
                      "seconds": secs}))


if __name__ == "__main__":
    main()
