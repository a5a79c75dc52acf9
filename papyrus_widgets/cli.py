"""``papyrus`` — the shell face of the same engine: demo, ingest, search, train, evaluate, doctor, db."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .config import CPU_RECIPE, DEFAULT_EPOCHS, DEFAULT_MODEL, Settings
from .errors import ModelError, PapyrusError

if TYPE_CHECKING:  # pragma: no cover
    from .request import SearchRequest

EXIT_ERROR = 1
EXIT_USAGE = 2


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings a parsed command asks for (its --data-dir, --model, --database-url, --scheduler)."""
    return Settings.from_env(
        data_dir=getattr(args, "data_dir", None),
        model=getattr(args, "model", None),
        database_url=getattr(args, "database_url", None),
        dask_scheduler=getattr(args, "scheduler", None),
    )


def _corners(text: str | None) -> list[list[float]] | None:
    if not text:
        return None
    try:
        nums = [float(x) for x in text.replace(";", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("--corners takes 8 numbers: x1,y1,x2,y2,x3,y3,x4,y4") from None
    if len(nums) != 8:
        raise argparse.ArgumentTypeError("--corners takes 8 numbers: x1,y1,x2,y2,x3,y3,x4,y4")
    return [nums[i : i + 2] for i in range(0, 8, 2)]


def _ef_search(args: argparse.Namespace) -> int | None:
    """``--ef-search`` as a validated int (usage error, exit 2, when it is not 1 … 1000)."""
    from .errors import QueryError
    from .request import EF_SEARCH_MAX, check_ef_search

    text = getattr(args, "ef_search", None)
    if text is None:
        return None
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--ef-search takes a whole number between 1 and {EF_SEARCH_MAX}, got {text!r}"
        ) from None
    try:
        return check_ef_search(number)
    except QueryError as exc:  # "ef_search must be between 1 and 1000, got 0."
        raise argparse.ArgumentTypeError(str(exc).replace("ef_search", "--ef-search", 1)) from None


def search_request(args: argparse.Namespace) -> SearchRequest:
    """The SearchRequest of a parsed ``papyrus search`` (also ``%papyrus search``).

    Malformed ``--ef-search`` / ``--corners`` text raises ``argparse.ArgumentTypeError`` (a usage
    error, exit 2); values out of range raise the request's ``QueryError`` / ``CornersError`` (exit 1)."""
    from .request import FILTER_FIELDS, SearchRequest

    ef_search = _ef_search(args)
    return SearchRequest.build(
        k=args.k,
        corners=_corners(args.corners),
        filters={name: getattr(args, name, None) for name in FILTER_FIELDS},
        ef_search=ef_search,
        verify=getattr(args, "verify", None),
    )


def print_hits(results, out=sys.stdout) -> None:  # type: ignore[no-untyped-def]
    print(f"{len(results)} hits for {results.query} in {results.elapsed:.2f} s", file=out)
    print(results.verdict, file=out)
    head = f"{'rank':>4}  {'score':>6}  {'match':<9} {'inventory':<28} {'HGV':<8} {'date':<18} {'place':<22} title"
    print(head, file=out)
    unconfirmed = "similar" if results.was_verified else "-"
    for h in results:
        match = "confirmed" if h.confirmed else "near miss" if h.near_miss else unconfirmed
        print(
            f"{h.rank:>4}  {h.score:>6.3f}  {match:<9} {(h.inventory or h.key)[:28]:<28} {(h.hgv_id or '')[:8]:<8} "
            f"{(h.date_text or '')[:18]:<18} {(h.place or '')[:22]:<22} {(h.title or '')[:40]}",
            file=out,
        )


# --- commands ----------------------------------------------------------------------------------


def cmd_search(args: argparse.Namespace) -> int:
    from .api import get_engine

    request = search_request(args)
    engine = get_engine(settings_from_args(args))
    results = engine.run_search(args.image, request)
    if args.json:
        print(results.to_json(indent=2))
    else:
        print_hits(results)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from .api import get_engine

    engine = get_engine(settings_from_args(args))
    report = engine.ingest(
        args.folder, args.metadata, batch_size=args.batch_size, progress=not args.quiet, upload=args.upload
    )
    print(report)
    stats = engine.stats()
    print(f"index: {stats['papyri']} papyri, {stats['images']} images (model {stats['model_source']})")
    return 0 if not report.failed or report.added or report.skipped else EXIT_ERROR


def cmd_doctor(args: argparse.Namespace) -> int:
    from .services import doctor

    checks = doctor(settings_from_args(args), start_services=not args.no_start)
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{'ok ' if c.ok else 'ERR'}  {c.name:<{width}}  {c.detail}")
    return 0 if all(c.ok for c in checks) else EXIT_ERROR


def cmd_db(args: argparse.Namespace) -> int:
    from . import index
    from .config import mask_url
    from .retrieval.features import reference_params
    from .services import database_url

    settings = settings_from_args(args)
    url = database_url(settings)
    if args.action == "url":
        print(mask_url(url) if not args.show_password else url)
        return 0
    version = index.ensure_schema(url)
    if args.action == "rewords":
        from .api import get_engine

        report = get_engine(settings).reword(
            everything=args.all, batch_size=args.batch_size, progress=not args.quiet
        )
        print(report)
        return 0 if not report.failed else EXIT_ERROR
    if args.action == "reindex":
        vectors, seconds = index.rebuild_hnsw(url)
        print(f"HNSW index rebuilt over {vectors} vectors in {seconds:.1f} s")
        with index.connect(url) as conn:
            conn.autocommit = True  # REINDEX CONCURRENTLY runs outside a transaction
            compacted = index.compact_postings(conn)
        if compacted is not None:
            print(f"word postings index rebuilt in {compacted:.1f} s")
        return 0
    now = reference_params()
    with index.connect(url) as conn:
        stats = index.stats(conn)
        stale = index.stale_word_images(conn, now) if stats["images_with_words"] else 0
    print(f"schema version {version}: {stats['papyri']} papyri, {stats['images']} images")
    for model, n in stats["models"].items():
        print(f"  model {model}: {n} images")
    if stats["hnsw"] != "valid":
        print(f"  HNSW index {stats['hnsw']} (searches scan every vector): run papyrus db reindex")
    if stats["images_with_words"] and not stats["signed_words"]:
        print(
            "  visual words stored without signatures (an index made by an older version): searches count words "
            "alone, which finds small or tilted papyri less well; run papyrus db rewords to give them"
        )
    if stale:
        print(
            f"  visual words of {stale} of {stats['images']} images not made from the reference features this "
            f"version makes ({now}): searches find shaken, small or far papyri less well; run papyrus db rewords"
        )
    return 0


def train_demo_model(images_dir: Path, out_dir: Path, **options: object) -> Path:
    """Train a model on a folder of references or labelled folders. ``options`` go to
    :func:`papyrus_widgets.training.train_triplets` (``limit``: the first N papyri only); without
    them, :data:`papyrus_widgets.training.CPU_RECIPE` (about a minute on a CPU)."""
    from .training import load_training_data, recipe_options, train_triplets

    limit = options.pop("limit", None)
    identities = load_training_data(images_dir, limit=limit)  # type: ignore[arg-type]
    recipe = {
        name: options.pop(name, None)
        for name in ("trainable", "cache_views", "epochs", "steps_per_epoch", "batch_size")
    }
    kwargs = {**recipe_options(**recipe), **options}  # type: ignore[arg-type]
    train_triplets(identities, out_dir=out_dir, source=Path(images_dir).name, **kwargs)
    return out_dir


def cmd_train(args: argparse.Namespace) -> int:
    options = {
        "epochs": args.epochs,
        "steps_per_epoch": args.steps,
        "batch_size": args.batch_size,
        "mining": args.mining,
        "pretrained": args.pretrained,
        "trainable": args.trainable,
        "seed": args.seed,
        "checkpoint_dir": args.checkpoint_dir,
        "resume": args.resume,
        "limit": args.limit,
        "cache_views": args.cache_views,
        "progress": not args.quiet,
    }
    out = train_demo_model(Path(args.references), Path(args.out), **options)
    print(f"model written to {out}: use it with PAPYRUS_MODEL={out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .api import get_engine
    from .evaluation import evaluate, load_queries, make_queries

    if args.k < 5:
        raise argparse.ArgumentTypeError(f"-k must be at least 5 (top-5 accuracy is reported), got {args.k}")
    if args.recaptures:
        queries: list = make_queries(args.queries, args.recaptures, seed=args.seed)
        what = f"{len(queries)} software re-photographs ({args.recaptures} per image) of {args.queries}"
    else:
        queries = load_queries(args.queries)
        what = f"{len(queries)} query images in {args.queries}"
    engine = get_engine(settings_from_args(args))
    modes = (
        [("embedding", False), ("verified", True)]
        if args.compare
        else [("verified" if args.verify else "embedding", args.verify)]
    )
    results = [
        evaluate(engine, queries, k=args.k, verify=flag, label=label, progress=not args.quiet and not args.json)
        for label, flag in modes
    ]
    if args.json:
        print(json.dumps({"queries": what, "k": args.k, "results": {r.label: r.metrics() for r in results}}, indent=2))
        return 0
    print(f"evaluate: {what}, ground truth by inventory, k={args.k}")
    print(f"{'search':<10} {'top-1':>6} {'top-5':>6} {'mAP':>6} {'recall@' + str(args.k):>9} {'ms/query':>9}")
    for r in results:
        print(
            f"{r.label:<10} {r.top1:>6.3f} {r.top5:>6.3f} {r.mean_average_precision:>6.3f} "
            f"{r.recall_at_k:>9.3f} {r.seconds_per_query * 1000:>9.0f}"
        )
    return 0


def cmd_vocabulary(args: argparse.Namespace) -> int:
    from .imaging import decode_image, image_files
    from .retrieval.features import extract_features
    from .retrieval.vocabulary import train_vocabulary

    paths = [p for folder in args.folders for p in image_files(Path(folder).expanduser())]
    if not paths:
        print(f"papyrus vocabulary: no images in {', '.join(args.folders)}", file=sys.stderr)
        return EXIT_USAGE
    descriptors = []
    for i, path in enumerate(paths, start=1):
        try:
            img = decode_image(path.read_bytes(), max_side=max(args.sides), max_pixels=400_000_000, name=path.name)
        except PapyrusError as exc:
            print(f"  skipped {path.name}: {exc}", file=sys.stderr)
            continue
        for side in args.sides:  # the same papyrus at several scales: photos see it at many
            descriptors.append(extract_features(img, max_side=side, max_keypoints=args.keypoints).descriptors)
        if not args.quiet:
            print(f"  features {i}/{len(paths)}: {path.name}", file=sys.stderr)
    total = sum(len(d) for d in descriptors)
    if total < args.coarse * args.fanout // 4:
        print(
            f"papyrus vocabulary: {total} descriptors are too few for {args.coarse} x {args.fanout} words: "
            "add images, or lower --coarse / --fanout",
            file=sys.stderr,
        )
        return EXIT_USAGE
    source = f"{args.coarse} x {args.fanout} words, k-means on {total:,} SIFT descriptors of {len(paths)} images"
    vocab = train_vocabulary(descriptors, coarse=args.coarse, fanout=args.fanout, seed=args.seed, source=source)
    out = vocab.save(args.out)
    print(f"vocabulary {vocab.fingerprint} ({source}) written to {out}: use it with PAPYRUS_VOCABULARY={out}")
    print("(an index keeps the vocabulary that built its words: use it for a new index, or re-ingest)")
    return 0


def _gallery_parts(gallery: Path) -> tuple[Path, Path | None]:
    refs = gallery / "references" if (gallery / "references").is_dir() else gallery
    meta = None
    for name in ("hgv-epidoc", "metadata", "metadata.csv"):
        if (gallery / name).exists():
            meta = gallery / name
            break
    return refs, meta


def cmd_demo(args: argparse.Namespace) -> int:
    from .api import get_engine, iter_images
    from .model import load_model

    settings = settings_from_args(args)
    if args.gallery:
        gallery = Path(args.gallery).expanduser()
        if not gallery.is_dir():
            print(f"papyrus demo: no such folder: {gallery}", file=sys.stderr)
            return EXIT_USAGE
    else:
        from .gallery import fetch_gallery

        gallery = settings.data_dir / "gallery"
        print(f"gallery: downloading {args.manifest or 'the demo gallery'} into {gallery} …")
        print(fetch_gallery(gallery, args.manifest, progress=not args.quiet))
    refs, meta = _gallery_parts(gallery)
    engine = get_engine(settings)
    resolved = engine.resolved_settings()
    model = resolved.model or DEFAULT_MODEL
    try:
        load_model(model, revision=resolved.model_revision)
        print(f"model: {model}")
    except ModelError as exc:
        if settings.model:
            raise
        demo_dir = settings.data_dir / "models" / "papyrus-demo"
        if not (demo_dir / "config.json").exists():
            print(f"model: {exc}")
            print(f"model: training a small demo model on {refs} instead (about a minute on a CPU) …")
            train_demo_model(refs, demo_dir)  # training.CPU_RECIPE, as papyrus train
        model = str(demo_dir)
        print(f"model: {model} (demo model trained here, not the published papyrusNet)")
        settings = settings.replace(model=model)
        engine = get_engine(settings)
    print(f"ingest: {refs}" + (f" with metadata {meta}" if meta else ""))
    report = engine.ingest(refs, meta, progress=not args.quiet)
    print(report)
    query = Path(args.query) if args.query else next(iter(iter_images(refs)))
    print(f"search: {query}")
    results = engine.search(query, k=args.k)
    print_hits(results)
    if args.no_lab or os.environ.get("DEMO_NO_LAB"):
        return 0
    notebook = Path(args.notebook)
    lab = shutil.which("jupyter", path=str(Path(sys.executable).parent)) or shutil.which("jupyter")
    if not lab:
        print("JupyterLab is not installed: pip install 'papyrus-widgets[lab]'", file=sys.stderr)
        return EXIT_ERROR
    env = dict(
        os.environ,
        PAPYRUS_MODEL=model,
        PAPYRUS_DATA_DIR=str(settings.data_dir),
        PAPYRUS_GALLERY=str(gallery.resolve()),
        PAPYRUS_QUERY=str(query.resolve()),
    )
    print(f"starting JupyterLab on {notebook} (Ctrl-C to stop)")
    return subprocess.call([lab, "lab", str(notebook)], env=env)


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="where the embedded services keep their data (PAPYRUS_DATA_DIR)")
    common.add_argument("--model", help="Hub repo id or local directory of the model (PAPYRUS_MODEL)")
    common.add_argument("--database-url", help="PostgreSQL with pgvector (PAPYRUS_DATABASE_URL)")
    common.add_argument("--scheduler", help="Dask scheduler address (PAPYRUS_DASK_SCHEDULER)")

    p = argparse.ArgumentParser(prog="papyrus", description="Papyrus image retrieval: index, search, diagnose.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", parents=[common], help="find the reference papyri nearest to a photo")
    s.add_argument("image")
    s.add_argument("-k", type=int, default=8, help="number of hits (default 8)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--corners", help="x1,y1,x2,y2,x3,y3,x4,y4: the papyrus' corners in the photo (any order)")
    s.add_argument("--date-from", type=int, help="only papyri dated (partly) in or after this year (BC < 0)")
    s.add_argument("--date-to", type=int, help="only papyri dated (partly) in or before this year")
    s.add_argument("--place", help="place of origin contains this text")
    s.add_argument("--collection", help="collection, e.g. P.Heid.")
    s.add_argument("--text", help="title contains this text")
    s.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="re-rank the top hits by local-feature verification (default: on unless PAPYRUS_VERIFY=0)",
    )
    s.add_argument(
        "--ef-search", metavar="N",
        help="HNSW candidate list, 1-1000: higher finds true neighbours more often, slower (default max(100, 2k))",
    )  # fmt: skip
    s.set_defaults(func=cmd_search)

    i = sub.add_parser("ingest", parents=[common], help="index a folder of reference scans")
    i.add_argument("folder")
    i.add_argument("--metadata", help="HGV EpiDoc XML folder/file or CSV with the catalogue records")
    i.add_argument("--batch-size", type=int, default=8)
    i.add_argument(
        "--upload", action=argparse.BooleanOptionalAction, default=None,
        help="send the scans to the workers through the object store (default: only when a worker cannot "
        "see the folder, i.e. workers on other machines without a shared file system)",
    )  # fmt: skip
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    i.set_defaults(func=cmd_ingest)

    d = sub.add_parser("doctor", parents=[common], help="show settings (secrets masked) and check services")
    d.add_argument("--no-start", action="store_true", help="do not start embedded services")
    d.set_defaults(func=cmd_doctor)

    db = sub.add_parser(
        "db", parents=[common],
        help="database: migrate and show counts (status), rebuild the HNSW index (reindex), make the visual "
        "words again from the references' current features (rewords), or print the URL",
    )  # fmt: skip
    db.add_argument("action", choices=["status", "reindex", "rewords", "url"], nargs="?", default="status")
    db.add_argument("--show-password", action="store_true")
    db.add_argument("--batch-size", type=int, default=32, help="rewords: images per batch on a worker (default 32)")
    db.add_argument("--quiet", action="store_true", help="rewords: no progress bar")
    db.add_argument(
        "--all", action="store_true", help="rewords: every image, not only those whose words were made otherwise"
    )
    db.set_defaults(func=cmd_db)

    t = sub.add_parser(
        "train",
        help="train a model on a folder of references or labelled folders",
        description="Train a model (Hugging Face Hub format). By default the recipe that beats the untrained "
        "network on a CPU in about a minute: the head on cached trunk features of 16 re-photographs per "
        "papyrus (--trainable head --cache-views 16), 40 epochs x 50 steps of 16 views. Training the whole "
        "network from random weights (--trainable all) on a CPU collapses: all papyri look alike.",
    )
    t.add_argument("references", help="folder of reference scans, or one subfolder of photographs per papyrus")
    t.add_argument("--out", required=True, help="output directory (Hugging Face Hub format)")
    t.add_argument(
        "--epochs", type=int,
        help=f"default {CPU_RECIPE['epochs']}; {DEFAULT_EPOCHS} without cached features",
    )  # fmt: skip
    t.add_argument(
        "--steps", type=int,
        help=f"steps per epoch (default {CPU_RECIPE['steps_per_epoch']}; without cached features one pass "
        "over the papyri)",
    )  # fmt: skip
    t.add_argument("--batch-size", type=int, help=f"views per step (default {CPU_RECIPE['batch_size']})")
    t.add_argument("--mining", choices=["batch_hard", "semi_hard", "random"], default="batch_hard")
    t.add_argument(
        "--trainable",
        choices=["layer4", "all", "head"],
        help=f"freeze policy (default {CPU_RECIPE['trainable']}); layer4 or all train through full forward "
        "passes (no cached features): slow on a CPU, and all from random weights collapses",
    )
    t.add_argument(
        "--pretrained", action="store_true", help="start from torchvision's ImageNet weights when they can be had"
    )
    t.add_argument(
        "--cache-views",
        type=int,
        help="train the head on cached features of N re-photographs per papyrus "
        f"(default {CPU_RECIPE['cache_views']} with --trainable head; 0: new re-photographs every step)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit", type=int, help="train on the first N papyri only")
    t.add_argument("--checkpoint-dir", help="save a checkpoint after every epoch here")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    vo = sub.add_parser(
        "vocabulary",
        help="train a visual vocabulary (the words of the search's first stage) on folders of images",
        description="Cluster SIFT descriptors of the images (each at several sizes) into coarse x fanout visual "
        "words. The package ships one trained on papyrus photographs (256 x 256); train your own on "
        "photographs like your collection's, ideally not the very images you will query.",
    )
    vo.add_argument("folders", nargs="+", help="folders of images (searched recursively)")
    vo.add_argument("--out", required=True, help="the .npz to write")
    vo.add_argument("--coarse", type=int, default=256, help="top-level cells (default 256)")
    vo.add_argument("--fanout", type=int, default=256, help="words per cell (default 256)")
    vo.add_argument("--sides", type=int, nargs="+", default=[1600, 800], help="image sizes (long side, px)")
    vo.add_argument("--keypoints", type=int, default=4000, help="keypoints per image and size (default 4000)")
    vo.add_argument("--seed", type=int, default=0)
    vo.add_argument("--quiet", action="store_true")
    vo.set_defaults(func=cmd_vocabulary)

    ev = sub.add_parser("evaluate", parents=[common], help="measure top-1/top-5/mAP of the index on labelled queries")
    ev.add_argument(
        "--queries", required=True, help="folder of query photos named like the references (<HGV id>_<inventory>.jpg)"
    )
    ev.add_argument("--recaptures", type=int, default=0, help="use N software re-photographs of each image instead")
    ev.add_argument("-k", type=int, default=10, help="hits per query (default 10, at least 5)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the re-photographs")
    ev.add_argument("--no-verify", dest="verify", action="store_false", help="rank by the embedding only")
    ev.add_argument("--compare", action="store_true", help="evaluate with and without verification")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_evaluate)

    demo = sub.add_parser("demo", parents=[common], help="index a demo gallery, search it, open JupyterLab")
    demo.add_argument("--gallery", help="a local folder with references/ (scans) and hgv-epidoc/ or metadata.csv")
    demo.add_argument(
        "--manifest", help="gallery manifest CSV (path or URL) to download; default: the shipped demo gallery"
    )
    demo.add_argument("--query", help="image to search for (default: the first reference)")
    demo.add_argument("-k", type=int, default=5)
    demo.add_argument("--no-lab", action="store_true", help="stop before starting JupyterLab (also DEMO_NO_LAB=1)")
    demo.add_argument("--notebook", default="notebooks/quickstart.ipynb")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PapyrusError as exc:
        print(f"papyrus {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except argparse.ArgumentTypeError as exc:
        print(f"papyrus {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"papyrus {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        from .services import close_clients

        try:
            close_clients()
        except Exception:  # noqa: BLE001
            pass


if __name__ == "__main__":
    sys.exit(main())
