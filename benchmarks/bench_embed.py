"""Images per second of each backbone's jitted forward pass, compile time separately.

    python benchmarks/bench_embed.py                 # every backbone, batch 32, 224 px
    python benchmarks/bench_embed.py --backbones resnet18 efficientnet_lite0 --repeat 5

Times the network on a preprocessed (batch, 224, 224, 3) array, so image decoding is not
included (``--with-io`` times ``Embedder.embed`` on uint8 arrays instead, resizing included).
Speed does not depend on the weights' values: backbones whose ImageNet weights are not
available offline (ResNets, DINOv2) run with ``weights="random"``. The compile column compiles:
msde_jax's persistent compilation cache is off here unless ``MSDE_JAX_COMPILATION_CACHE`` says
otherwise (with it, a rerun would time a cache read).
"""

import argparse
import os
import platform
import time

os.environ.setdefault("MSDE_JAX_COMPILATION_CACHE", "off")  # before msde_jax is imported

import jax
import jax.numpy as jnp
import numpy as np

from msde_jax.backbones.registry import BACKBONES
from msde_jax.embedder import Embedder

OFFLINE_WEIGHTS = {"efficientnet_lite0", "mobilenet_v2"}


def best_of(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--with-io", action="store_true", help="time embed() incl. resizing")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="random weights for every backbone (speed does not depend on them; for machines "
        "without the offline ImageNet weight packages, e.g. benchmarks/gpu.sh)",
    )
    args = parser.parse_args()
    bs, size = args.batch_size, args.image_size
    print(
        f"batch {bs}, {size}×{size}, {args.dtype}; jax {jax.__version__} on "
        f"{jax.devices()[0].platform} ({len(jax.devices())} device), {os.cpu_count()} CPU cores "
        f"({platform.machine()})"
    )
    rows = []
    rng = np.random.default_rng(0)
    for name in args.backbones:
        weights = None if name in OFFLINE_WEIGHTS and not args.random_weights else "random"
        emb = Embedder(
            name,
            weights=weights,
            image_size=size,
            batch_size=bs,
            dtype=jnp.dtype(args.dtype),
            progress=False,
        )
        x = jax.device_put(rng.random((bs, size, size, 3), dtype=np.float32), emb._batch_sharding)
        start = time.perf_counter()
        jax.block_until_ready(emb._forward(emb._variables, x))
        compile_s = time.perf_counter() - start
        # as it is measured: a run stopped by its time limit (benchmarks/gpu.sh) keeps it
        print(f"  {name:<20} first call (compile included) {compile_s:.1f} s", flush=True)
        if args.with_io:
            raw = list((rng.random((bs, 512, 512)) * 255).astype(np.uint8))
            seconds = best_of(lambda e=emb, r=raw: e.embed(r), args.repeat)
        else:
            seconds = best_of(lambda e=emb, v=x: e._forward(e._variables, v), args.repeat)
        rows.append(
            (name, "ImageNet" if weights is None else "random", emb.dim, compile_s, bs / seconds)
        )
        print(f"  {name:<20} done: {bs / seconds:.1f} images/s", flush=True)

    print()
    print("| backbone | weights | dim | compile (s) | images/s |")
    print("|---|---|---:|---:|---:|")
    for name, weights, dim, compile_s, ips in rows:
        print(f"| {name} | {weights} | {dim} | {compile_s:.1f} | {ips:.1f} |")


if __name__ == "__main__":
    main()
