"""``make demo``: Label Studio + the MTAL backend + a ranked sample project, on this machine.

Steps: make sure Label Studio 1.23 has its own virtualenv (``scripts/ls_venv.sh``), start it with a
known user and legacy token, start the backend under gunicorn with the embedded queue (no Redis), create a
project of synthetic scenes (semantic brush + object rectangles + the ``mtal_labelled`` modalities
choice), connect the backend, retrieve predictions, submit annotations made from the scenes' exact
labels (some partial: semantic only or objects only), press "Start Training" and wait for the
retrained, ranked version. The edit cost of the prefill on the tasks left to label (pixels to repaint,
boxes to delete / draw, duplicates: ``tests/support/prefill_check.py``) is measured on what Label
Studio holds, before and after training, and printed. Then print where to click and keep everything
running until Ctrl-C.

Defaults: 60 of 80 scenes of 64 px labelled, the ``small`` network at 64 px, 50 epochs at lr 3e-3.
Measured with 40 epochs: 116 s of training, 3 min 23 s in all on 2 cores, 20.1 % of pixels to
repaint (82.8 % before); 50 epochs are meant to bring it under 20 % (not measured yet).

With ``DEMO_DATA=<CamVid-layout folder>`` (or ``--data``) the project holds real photographs instead:
60 CamVid train images with two brush tags, *stuff* (sky, building, road, pavement, tree, fence) and
*things* (pole, sign_symbol, car, pedestrian, bicyclist), 40 of them annotated from CamVid's human labels
(Unlabelled pixels left unpainted and out of the edit cost), the ``small`` network at
``MTAL_IMAGE_SIZE=192`` (the input's shorter side: a 480x360 photo is seen at 256x192), 80 epochs at
lr 5e-3; the same edit cost is printed, whatever it is.

The data directory (default ``~/.cache/mtal/demo``) is wiped at every start: the demo is a fresh
sample, not a place to keep work. Run ``python scripts/demo.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # tests.support holds the service starters and the scene project

import requests  # noqa: E402

from tests.support.label_studio import LabelStudioServer  # noqa: E402
from tests.support.mtal_processes import backend_env, start_backend  # noqa: E402
from tests.support.photo_project import create_photo_project  # noqa: E402
from tests.support.prefill_check import prefill_edit_cost, version_predictions  # noqa: E402
from tests.support.prefill_figure import save_prefill_figure  # noqa: E402
from tests.support.scene_project import annotate, create_scene_project  # noqa: E402

USERNAME = "demo@mtal.local"
PASSWORD = "mtal-demo"
TOKEN = "mtal0demo0legacy0token00000000000000000000"


def labelled_modalities(index: int, modalities: Sequence[str] = ("semantic", "objects")) -> list[str]:
    """What the demo's annotator labels on its ``index``-th task: mostly both modalities, some partial
    (the first only, or the second only)."""
    first, second = modalities
    if index % 5 == 1:
        return [first]
    if index % 5 == 3:
        return [second]
    return [first, second]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/demo.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--ls-port", type=int, default=int(os.environ.get("LS_PORT", "8080")),
                   help="Label Studio port (env LS_PORT, default 8080)")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9090")),
                   help="backend port (env PORT, default 9090)")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MTAL_DEMO_DIR", "~/.cache/mtal/demo")),
                   help="wiped and re-created at each start (env MTAL_DEMO_DIR, default ~/.cache/mtal/demo)")
    p.add_argument("--data", type=Path, default=os.environ.get("DEMO_DATA") or None,
                   help="a CamVid-layout folder (env DEMO_DATA): real photographs with a two-brush-tag config "
                        "(stuff / things) instead of synthetic scenes")
    p.add_argument("--tasks", type=int, help="images in the project (default 80 scenes / 60 photographs)")
    p.add_argument("--label", type=int,
                   help="tasks the demo annotates before training (default 60 scenes / 40 photographs)")
    p.add_argument("--size", type=int, default=64, help="synthetic image size in pixels, a multiple of 32 (default 64)")
    p.add_argument("--net-size", type=int, help="network input's shorter side, a multiple of 32 (MTAL_IMAGE_SIZE; "
                                                "default 64 for scenes, 192 for photographs)")
    p.add_argument("--epochs", type=int, help="epochs of each training round (default 50 scenes / 80 photographs)")
    p.add_argument("--lr", type=float, help="learning rate of the training (default 3e-3 scenes / 5e-3 photographs)")
    p.add_argument("--net", default="small", choices=["tiny", "small", "default"], help="network size (default small)")
    p.add_argument("--semi-weight", type=float, default=float(os.environ.get("MTAL_SEMI_WEIGHT", "0")),
                   help="MTAL_SEMI_WEIGHT of the backend: every training also learns from the unlabelled tasks "
                        "(default 0 = off)")
    p.add_argument("--pretrain-minutes", type=float, default=float(os.environ.get("MTAL_PRETRAIN_MINUTES", "0")),
                   help="MTAL_PRETRAIN_MINUTES of the backend: the cold start pretrains on the project's images "
                        "before any label; the demo waits for it (default 0 = off)")
    p.add_argument("--summary", type=Path, help="write the edit cost before / after training here (JSON)")
    p.add_argument("--figure", type=Path, help="write a before / after picture of 3 prefilled tasks here (PNG)")
    p.add_argument("--no-wait", action="store_true", help="stop everything once the project is ranked")
    args = p.parse_args(argv)
    photos = args.data is not None
    for name, scenes, photo in (("tasks", 80, 60), ("label", 60, 40), ("net_size", 64, 192), ("epochs", 50, 80),
                                ("lr", 3e-3, 5e-3)):
        if getattr(args, name) is None:
            setattr(args, name, photo if photos else scenes)
    if photos and not args.data.is_dir():
        p.error(f"--data / DEMO_DATA {args.data} is not a folder (expected a CamVid layout: train/ trainannot/ ...)")
    if args.size < 32 or args.size % 32 or args.net_size < 32 or args.net_size % 32:
        p.error("--size and --net-size must be positive multiples of 32")
    if not 1 <= args.label <= args.tasks - 2:
        p.error("--label must be at least 1 and leave at least 2 of --tasks unlabelled")
    return args


def _step(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _ensure_ls_venv() -> None:
    _step("Label Studio virtualenv (first time: installs label-studio 1.23.2, about 70 s)...")
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "ls_venv.sh")], check=True, stdout=subprocess.DEVNULL)


def _wait_trained(backend_url: str, project: int, old: str | None, timeout: float = 3600) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        status = requests.get(f"{backend_url}/status", params={"project": project}, timeout=10).json()
        if status.get("error"):
            raise RuntimeError(f"training failed: {status['error']}")
        if status["state"] == "idle" and status.get("version") and status["version"] != old:
            return status
        training = status["state"] == "training" and status.get("epoch") is not None
        epoch = f", epoch {status['epoch']:.0f}" if training else ""
        if (status["state"], epoch) != last:
            _step(f"  ... {status['state']}{epoch}")
            last = (status["state"], epoch)
        time.sleep(3)
    raise RuntimeError(f"no trained version within {timeout:.0f} s")


def _wait_pretrained(backend_url: str, project: int, timeout: float = 3600) -> dict:
    """The cold start's outcome (/status "pretrain") once the project is idle again (ranked when it
    published a version)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(f"{backend_url}/status", params={"project": project}, timeout=10).json()
        outcome = status.get("pretrain") or {}
        if status["state"] == "idle" and outcome.get("state") not in (None, "pretraining", "filling the pool"):
            return outcome
        time.sleep(3)
    raise RuntimeError(f"no pretrain outcome within {timeout:.0f} s")


def _results(url: str, headers: dict, project: Any, version: str, indices: list[int]) -> dict[int, list]:
    preds = version_predictions(url, headers, project.id, version)
    return {i: preds[project.task_ids[i]]["result"] for i in indices if project.task_ids[i] in preds}


def _print_edit_cost(before: dict, after: dict, n: int) -> None:
    rows = (("pixels to repaint (mask edit share)", "mask_edit_share", "{:.1%}"),
            ("box precision at IoU 0.5", "box_precision", "{:.2f}"),
            ("box recall at IoU 0.5", "box_recall", "{:.2f}"),
            ("duplicate boxes per object", "duplicates_per_object", "{:.2f}"),
            ("boxes to delete per task", "boxes_to_delete_per_image", "{:.1f}"),
            ("boxes to draw per task", "boxes_to_draw_per_image", "{:.1f}"))
    _step(f"edit cost of the prefill on the {n} tasks left to label (what Label Studio holds):")
    print(f"    {'':38} {'before training':>16} {'after':>10}")
    for label, key, fmt in rows:
        if before[key] != before[key] and after[key] != after[key]:
            continue  # no such modality (photographs: no boxes)
        b, a = (fmt.format(x) if x == x else "n/a" for x in (before[key], after[key]))
        print(f"    {label:38} {b:>16} {a:>10}")


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    data_dir = args.data_dir.expanduser().resolve()
    _ensure_ls_venv()
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops the services like Ctrl-C does
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)

    with ExitStack() as services:
        _step(f"starting Label Studio on port {args.ls_port} (data in {data_dir / 'label-studio'})...")
        ls = services.enter_context(LabelStudioServer.start(data_dir / "label-studio", username=USERNAME,
                                                            password=PASSWORD, token=TOKEN, port=args.ls_port))
        _step(f"Label Studio is up at {ls.url} ({ls.startup_s:.0f} s)")
        env = backend_env(ls.url, TOKEN, data_dir / "models", cache_dir=data_dir / "cache",
                          MTAL_NET_CONFIG=args.net, MTAL_IMAGE_SIZE=str(args.net_size), MTAL_TRAIN_LR=str(args.lr),
                          MTAL_TRAIN_EPOCHS=str(args.epochs), MTAL_TRAIN_THRESHOLD="0", LOG_LEVEL="INFO",
                          MTAL_SEMI_WEIGHT=str(args.semi_weight), MTAL_PRETRAIN_MINUTES=str(args.pretrain_minutes))
        _step(f"starting the MTAL backend (gunicorn, embedded queue) on port {args.port}...")
        backend = services.enter_context(start_backend(env, data_dir, port=args.port))
        _step(f"backend is up at {backend.url} (log: {backend.log_path})")

        if args.data is not None:
            _step(f"creating the sample project: {args.tasks} photographs of {args.data}, "
                  "two brush tags (stuff, things) + modalities choice")
            project = create_photo_project(ls.url, ls.headers, ls.files_root, "MTAL demo (photographs)",
                                           args.data.expanduser().resolve(), args.tasks)
        else:
            _step(f"creating the sample project: {args.tasks} synthetic scenes, brush + rectangles + modalities choice")
            project = create_scene_project(ls.url, ls.headers, ls.files_root, "MTAL demo", args.tasks,
                                           size=args.size, boxes=True, parts=False)
        r = requests.post(f"{ls.url}/api/ml/", headers=ls.headers, timeout=60,
                          json={"url": backend.url, "project": project.id, "title": "MTAL", "is_interactive": False})
        r.raise_for_status()
        ml_id = r.json()["id"]
        v1 = requests.get(f"{backend.url}/versions", params={"project": project.id}, timeout=10).json()["current"]
        v1 = v1.get(str(project.id))
        if args.pretrain_minutes > 0:  # the cold start publishes a pretrained version before any label
            _step(f"backend connected (ML backend id {ml_id}); pretraining on the project's images "
                  f"(up to {args.pretrain_minutes:g} min)...")
            outcome = _wait_pretrained(backend.url, project.id)
            _step(f"pretrain {outcome.get('state')}: {outcome}")
            if outcome.get("state") != "done":
                raise RuntimeError(f"the pretrain did not publish a version: {outcome}")
            v1 = outcome["version"]
        _step(f"backend connected (ML backend id {ml_id}, initial version {v1}); retrieving predictions...")
        requests.post(f"{ls.url}/api/dm/actions/", headers=ls.headers, timeout=600,
                      params={"id": "retrieve_tasks_predictions", "project": project.id},
                      json={"selectedItems": {"all": True, "excluded": []}}).raise_for_status()
        todo = range(args.label, args.tasks)  # the tasks a user will open next: measured before and after
        before = prefill_edit_cost(ls.url, ls.headers, project, v1, todo)
        shown = list(todo)[:3]
        first = _results(ls.url, ls.headers, project, v1, shown) if args.figure else {}
        for index in range(args.label):
            annotate(ls.url, ls.headers, project, index, labelled_modalities(index, project.modalities))
        one, other = project.modalities
        _step(f"submitted {args.label} annotations (some tasks: {one} only, some: {other} only); "
              f"pressing Start Training ({args.epochs} epochs)...")
        started = time.monotonic()
        requests.post(f"{ls.url}/api/ml/{ml_id}/train", headers=ls.headers, json={}, timeout=60).raise_for_status()
        status = _wait_trained(backend.url, project.id, v1)
        _step(f"trained and ranked: version {status['version']} "
              f"({status['metrics'].get('train_seconds', '?')} s of training, "
              f"{time.monotonic() - started:.0f} s with ranking)")
        after = prefill_edit_cost(ls.url, ls.headers, project, status["version"], todo)
        _print_edit_cost(before, after, len(todo))
        if args.figure:
            later = _results(ls.url, ls.headers, project, status["version"], shown)
            _step(f"figure: {save_prefill_figure(args.figure, project, shown, first, later)}")
        if args.summary:
            args.summary.write_text(json.dumps({"before": before, "after": after, "version": status["version"],
                                                "semi_weight": args.semi_weight,
                                                "pretrain_minutes": args.pretrain_minutes,
                                                "initial_version": v1, "metrics": status.get("metrics")}, indent=1))
        nxt = requests.get(f"{ls.url}/api/projects/{project.id}/next", headers=ls.headers, timeout=60).json()

        print(f"""
==============================================================================
 MTAL demo is running.

 Label Studio   {ls.url}
   user         {USERNAME}
   password     {PASSWORD}
   API token    {TOKEN}   (legacy token)
 Project        {ls.url}/projects/{project.id}/data
 MTAL backend   {backend.url}   (status: {backend.url}/status?project={project.id})

 What to click:
  1. Open the project URL above and log in.
  2. Click "Label All Tasks": tasks now come in the backend's order, the most informative
     first (task {nxt.get('id')} is next). Regions are prefilled by the model; the
     "mtal_labelled" choices show the modalities it asks you to label.
  3. Fix the regions of the ticked modalities, keep the ticks of what you labelled, Submit.
     Labelling only some modalities of a task is fine (partial labels).
  4. Settings > Model > the MTAL card's menu > "Start Training" retrains on all annotations
     and re-ranks the project (watch the status URL above); then go on labelling.
  In the Data Manager you can also add the "Prediction score" column and sort by it:
  0 % = label first, 100 % = already labelled; Filters > Annotations = 0 shows the tasks left.

 Ctrl-C stops Label Studio and the backend. Data: {data_dir} (wiped at the next start)
==============================================================================
""", flush=True)
        if not args.no_wait:
            try:
                while ls.process.poll() is None and backend.alive():
                    time.sleep(1)
                _step("a service exited; stopping the demo (see the logs under the data dir)")
                return 1
            except KeyboardInterrupt:
                print()
        _step("stopping Label Studio and the backend...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
