"""`python -m bench run|scale|ceiling|report`: see BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.corpus import CorpusSizes
from bench.qido_corpus import QidoSizes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="the side-by-side benchmark (make bench)")
    run.add_argument("--rounds", type=int, default=3, help="interleaved rounds per metric")
    run.add_argument("--stow-rounds", type=int, default=2, help="rounds per STOW metric")
    run.add_argument("--workers", type=int, default=0, help="our uvicorn workers (0: cores)")
    run.add_argument("--ct-slices", type=int, default=300)
    run.add_argument("--mf-frames", type=int, default=200)
    run.add_argument(
        "--qido-studies",
        type=int,
        default=6000,
        help="QIDO corpus studies (×5 instances; 6000 → 30,000)",
    )
    run.add_argument("--no-pg", action="store_true", help="skip PostgreSQL + S3")
    run.add_argument("--no-orthanc", action="store_true", help="skip Orthanc")
    run.add_argument("--no-ceiling", action="store_true", help="skip the replay ceiling")
    run.add_argument(
        "--with-auth",
        action="store_true",
        help="also run ours with API keys and audit over the same store (issue 17)",
    )
    run.add_argument("--only", default="", help="comma-separated metric id prefixes")
    run.add_argument("--mix-seconds", type=float, default=6.0)
    run.add_argument(
        "--round-budget",
        type=float,
        default=5.0,
        help="seconds of requests per server and round (at least 3 requests)",
    )
    run.add_argument(
        "--wait-load",
        type=float,
        default=1.0,
        help="wait until the 1-minute load average is below this",
    )
    run.add_argument(
        "--wait-max",
        type=float,
        default=0.0,
        help="seconds to wait for a quiet machine (0: do not wait)",
    )
    run.add_argument(
        "--profile",
        default="",
        help="comma-separated metric ids to profile with py-spy (ours, on each backend pair)",
    )
    run.add_argument(
        "--quick",
        action="store_true",
        help="small corpus, one round: checks the harness, figures are rough",
    )
    run.add_argument("--no-save", action="store_true", help="do not write bench/results/latest.*")
    run.add_argument("--keep", action="store_true", help="keep the run's data under .bench/")
    scale = commands.add_parser(
        "scale", help="10 million instances on PostgreSQL (make bench-scale)"
    )
    scale.add_argument("--studies", type=int, default=500_000)
    scale.add_argument("--instances-per-series", type=int, default=8)
    scale.add_argument("--repeat", type=int, default=40, help="requests per QIDO query")
    scale.add_argument(
        "--steps",
        default="0.1,0.25,0.5,1",
        help="fractions of --studies after which to measure (comma-separated)",
    )
    scale.add_argument(
        "--sites",
        type=int,
        default=1,
        help="spread the studies over this many sites (site-01..) and compare the enterprise"
        " root with site-01's root (issue 16)",
    )
    scale.add_argument(
        "--loader",
        choices=("copy", "add"),
        default="copy",
        help="write the corpus's rows by COPY, or store them through the add path (slower)",
    )
    scale.add_argument("--workers", type=int, default=0)
    scale.add_argument("--no-save", action="store_true")
    ceiling = commands.add_parser("ceiling", help="serve recorded responses (used by run)")
    ceiling.add_argument("folder", type=Path)
    ceiling.add_argument("port", type=int)
    ceiling.add_argument("workers", type=int)
    report = commands.add_parser("report", help="re-render a results JSON (run or scale)")
    report.add_argument("results", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.command == "ceiling":
        from bench.ceiling import serve

        serve(args.folder, args.port, args.workers)
        return 0
    if args.command == "report":
        from bench.report import render_markdown
        from bench.scale import render_scale

        document = json.loads(args.results.read_text())
        scale = str(document.get("format", "")).startswith("dicomweb-server-bench-scale")
        print((render_scale if scale else render_markdown)(document), end="")
        return 0
    from bench.servers import orthanc_available, reexec_in_private_network

    if args.command == "run":
        from bench.run import Options, main_run

        if not args.no_orthanc and orthanc_available():
            reexec_in_private_network(argv)
        corpus = CorpusSizes(ct_slices=args.ct_slices, mf_frames=args.mf_frames)
        qido = QidoSizes(studies=args.qido_studies)
        opts = Options(
            corpus=corpus,
            qido=qido,
            rounds=args.rounds,
            stow_rounds=args.stow_rounds,
            workers=args.workers,
            with_pg=not args.no_pg,
            with_orthanc=not args.no_orthanc,
            with_ceiling=not args.no_ceiling,
            with_auth=args.with_auth,
            only=tuple(o for o in args.only.split(",") if o),
            mix_seconds=args.mix_seconds,
            round_budget=args.round_budget,
            wait_load=args.wait_load,
            wait_max=args.wait_max,
            profile=tuple(p for p in args.profile.split(",") if p),
            save=not args.no_save,
            keep=args.keep,
        )
        if args.quick:
            opts.corpus = CorpusSizes(ct_slices=60, mr_slices=40, mf_frames=200, j2k_slices=64)
            opts.qido = QidoSizes(studies=1000)
            opts.rounds = 1
            opts.stow_rounds = 1
            opts.mix_seconds = 3.0
            opts.save = False
            opts.mode = "quick"
        return main_run(opts, argv)
    if args.command == "scale":
        from bench.scale import main_scale

        return main_scale(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
