"""``autoside export`` and ``autoside predict``: thin commands over :mod:`autoside.export.pick` and
:func:`autoside.load` (registered into :mod:`autoside.cli` on import)."""

from __future__ import annotations

import argparse
import json

from autoside.cli.registry import command


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the search's name (a folder under --root)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the export folder to create")
    pick = p.add_mutually_exclusive_group(required=True)
    pick.add_argument("--trial", metavar="ID", help="export this trial (e.g. 7 or 0007)")
    pick.add_argument(
        "--budget",
        metavar="SIZE",
        help="export the most accurate (validation) finished trial whose peak memory fits, e.g. 4GiB",
    )
    pick.add_argument(
        "--knee",
        action="store_true",
        help="export the knee of the accuracy/memory front (the member farthest above the chord "
        "between its extremes, after min-max scaling; ties: lower trial id)",
    )
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it is a previous export (or empty)")
    p.add_argument("--root", default=None, help="where searches live (default: autoside_runs)")
    p.add_argument(
        "--register",
        metavar="MODEL_NAME",
        help="also log the export as an MLflow pyfunc model and register it under this name",
    )
    p.add_argument(
        "--tracking-uri",
        help="the MLflow tracking server the trial's weights are fetched from when they are not in the search folder "
        "(default: the search's tracking URI)",
    )
    p.add_argument("--registry-uri", help="MLflow registry for --register (default: --tracking-uri, else the search's)")
    p.add_argument("--json", action="store_true", help="print what was exported as JSON")


@command("export", "export a trial of a search as a loadable side network (side_config.json + safetensors)")(
    _export_args
)
def _export(args: argparse.Namespace) -> int:
    from autoside.export.format import read_side_config
    from autoside.export.pick import export_trial
    from autoside.units import format_bytes

    out, record = export_trial(
        args.name,
        args.out_dir,
        trial=args.trial,
        budget=args.budget,
        knee=args.knee,
        root=args.root,
        overwrite=args.force,
        register=args.register,
        tracking_uri=args.tracking_uri,
        registry_uri=args.registry_uri,
    )
    info = read_side_config(out)
    metrics = info.get("metrics") or {}
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(out),
                    "trial_id": record.trial_id,
                    "family": info["family"],
                    "selected_by": info["extra"].get("selected_by"),
                    "metrics": metrics,
                    "registered": args.register,
                },
                indent=2,
            )
        )
        return 0
    acc = metrics.get("val_accuracy")
    memory = metrics.get("peak_memory_bytes")
    print(
        f"exported trial {record.trial_id} ({info['extra'].get('selected_by')}): {info['family']}, "
        f"val accuracy {acc if acc is None else f'{acc:.4f}'}, peak memory {format_bytes(memory)} "
        f"on {metrics.get('device', 'unknown device')} -> {out}"
    )
    if args.register:
        print(f"registered as MLflow model {args.register!r} (models:/{args.register}/latest)")
    return 0


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="an export folder (from `autoside export` or save_pretrained)")
    p.add_argument("files", nargs="+", metavar="FILE", help="image files")
    p.add_argument("--top-k", type=int, default=5, help="labels to print per image (default 5)")
    p.add_argument("--checkpoint", help="the backbone checkpoint file, when the export was trained on one")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument(
        "--min-score", type=float, default=0.5, help="detectors: print boxes scoring at least this (default 0.5)"
    )
    p.add_argument("--draw", metavar="OUT.png", help="detectors: write the (one) image with its boxes drawn to a PNG")


@command(
    "predict",
    "print the top-k labels an exported side network gives to image (or video) files, or a detector's boxes",
)(_predict_args)
def _predict(args: argparse.Namespace) -> int:
    import autoside
    from autoside.errors import ConfigError
    from autoside.export.load import read_images

    if args.top_k < 1:
        raise ConfigError(f"--top-k: must be at least 1, got {args.top_k}")
    if not 0.0 <= args.min_score <= 1.0:
        raise ConfigError(f"--min-score: must be in [0, 1], got {args.min_score}")
    model = autoside.load(args.path, checkpoint=args.checkpoint, device=args.device)
    if model.info.get("task") == "detection":
        return _print_detections(model, args)
    if args.draw:
        raise ConfigError("--draw: only a detector's predictions can be drawn; this export is a classifier")
    if model.sidenet.modality == "video":
        from autoside.data.video import read_clips

        images = read_clips(args.files, model.clip_sampling)
    else:
        images = read_images(args.files, model.backbone.spec.image_size)
    results = model.topk(images, k=args.top_k)
    if args.json:
        rows = [
            {"file": f, "top_k": [{"label": label, "probability": p} for label, p in top]}
            for f, top in zip(args.files, results)
        ]
        print(json.dumps(rows, indent=2))
        return 0
    for file, top in zip(args.files, results):
        print(f"{file}: " + ", ".join(f"{label} {p:.3f}" for label, p in top))
    return 0


def _print_detections(model, args: argparse.Namespace) -> int:  # noqa: ANN001
    """Boxes in each file's own pixels (the detector sees it resized to its input size), best score first."""
    from autoside.errors import ConfigError
    from autoside.export.load import read_images

    if args.draw and len(args.files) != 1:
        raise ConfigError(f"--draw: writes one picture; give one image file, not {len(args.files)}")
    originals = [read_images([f], None) for f in args.files]
    detections = model.detect_images([image[0] for image in originals], min_score=args.min_score)
    rows = []
    for file, image, found in zip(args.files, originals, detections, strict=True):
        h, w = image.shape[-2:]
        rows.append({"file": file, "width": w, "height": h, "detections": found})
    if args.draw:
        from autoside.detection.draw import write_boxes_png

        found = rows[0]["detections"]
        write_boxes_png(args.draw, originals[0][0], found["boxes"], found["labels"], model.classes, found["scores"])
    if args.json:
        out = [
            {
                **{k: row[k] for k in ("file", "width", "height")},
                "detections": [
                    {"label": model.classes[label], "score": score, "box": [round(v, 2) for v in box]}
                    for box, score, label in zip(
                        row["detections"]["boxes"].tolist(),
                        row["detections"]["scores"].tolist(),
                        row["detections"]["labels"].tolist(),
                    )
                ],
            }
            for row in rows
        ]
        print(json.dumps(out, indent=2))
        return 0
    for row in rows:
        found = row["detections"]
        print(f"{row['file']}: {len(found['labels'])} objects (score >= {args.min_score})")
        for box, score, label in zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist()):
            print(f"  {model.classes[label]} {score:.3f} [{', '.join(f'{v:.1f}' for v in box)}]")
    if args.draw:
        print(f"boxes drawn to {args.draw}")
    return 0
