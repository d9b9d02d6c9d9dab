"""Benchmark of scoring imported tasks (issue #31, item 3): the incremental job against a full re-rank.

    python -m bench.imported [--ranked 1000] [--new 1000] [--image-size 64] [--net-config tiny]

On a project of ``--ranked`` tasks already ranked (:func:`backend.loop.rank_pass.rank_tasks`, served by
:mod:`bench.fake_ls`, clusters off) ``--new`` tasks are imported; measured side by side, each with a cold
image cache:

- ``METRIC new_tasks_s``: :func:`backend.loop.rank_new.score_new_tasks` on the new tasks (fetch, score, place,
  push, ranking update); the issue's target: within a minute for 1,000 new tasks on CPU.
- ``METRIC rerank_s``: a full ``rank_tasks`` over all ``--ranked + --new`` tasks, what the new tasks would
  otherwise have waited for.
- ``METRIC new_over_rerank``: their ratio (about ``new / (ranked + new)`` when both are linear).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.loop import CONFIG, _RankContext


def main(argv: list[str] | None = None) -> int:
    from backend.labelstudio.client import LabelStudioAPI
    from backend.labelstudio.images import ImageFetcher
    from backend.loop.rank_new import score_new_tasks
    from backend.loop.rank_pass import rank_tasks
    from backend.serving.model import MTALModel, load_schema
    from backend.serving.store import ModelStore
    from backend.settings import Settings
    from bench.fake_ls import FakeLabelStudio

    ap = argparse.ArgumentParser(prog="python -m bench.imported", description=__doc__.split("\n")[0])
    ap.add_argument("--ranked", type=int, default=1000, help="tasks ranked before the import")
    ap.add_argument("--new", type=int, default=1000, help="tasks imported after the ranking")
    ap.add_argument("--image-size", type=int, default=64, help="inference size in px (multiple of 32)")
    ap.add_argument("--net-config", default="tiny", help="network preset (tiny, small, default)")
    args = ap.parse_args(argv)
    schema = load_schema(CONFIG)
    with tempfile.TemporaryDirectory(prefix="bench-imported-") as d:
        tmp = Path(d)
        settings = Settings(model_dir=tmp / "models", net_config=args.net_config, image_size=args.image_size,
                            device="cpu", clusters=0, cache_dir=tmp / "cache0")
        store = ModelStore(settings.model_dir, device="cpu")
        with FakeLabelStudio.start(CONFIG, args.ranked + args.new) as ls:
            version = MTALModel("1", CONFIG, settings, store).setup()
            api = LabelStudioAPI(ls.url, "bench-token")
            tasks = list(api.iter_tasks(1))
            old, new = tasks[:args.ranked], tasks[args.ranked:]

            def ctx(cache: str) -> _RankContext:
                return _RankContext(settings, store, api, ImageFetcher(ls.url, "bench-token", cache_dir=tmp / cache))

            rank_tasks(ctx("cache1"), "1", schema, version, old, set())
            t0 = time.perf_counter()
            summary = score_new_tasks(ctx("cache2"), "1", schema, new)
            new_s = time.perf_counter() - t0
            if summary["pushed"] != args.new:
                raise RuntimeError(f"pushed {summary['pushed']} of {args.new} new tasks")
            t0 = time.perf_counter()
            rank_tasks(ctx("cache3"), "1", schema, version, tasks, set())
            rerank_s = time.perf_counter() - t0
    what = f"{args.net_config} net, {args.image_size}px, cold image cache"
    print(f"METRIC new_tasks_s={new_s:.2f}  # {args.new} new tasks after {args.ranked} ranked, {what}", flush=True)
    print(f"METRIC rerank_s={rerank_s:.2f}  # full re-rank of all {args.ranked + args.new}, {what}", flush=True)
    print(f"METRIC new_over_rerank={new_s / rerank_s:.3f}  # linear = {args.new / (args.ranked + args.new):.3f}",
          flush=True)
    print(f"[bench.imported] strategy {summary}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
