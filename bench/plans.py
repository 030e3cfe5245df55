"""What is measured: each plan names a metric, the requests of each round and how to score them.

Plans only build requests (paths relative to the DICOMweb root, identical for every server);
`bench/run.py` sends them. Kinds:

- "latency": the round's requests one at a time; samples are milliseconds per request.
- "transfer": the same, but samples are MB/s per request (size / time).
- "stow": STOW-RS requests with `concurrency` in flight; one sample (MB/s) per round.
- "mix": the viewer-like load (`ViewerMix`); one sample (requests/s) per round.
"""

from __future__ import annotations

import random
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.client import Req
from bench.corpus import Corpus
from bench.qido_corpus import QidoSizes, accession, patient_id, study_date, study_uid
from bench.stats import Metric, Target

__all__ = ["Plan", "ViewerMix", "build_plans"]

JSON = "application/dicom+json"
INSTANCES = 'multipart/related; type="application/dicom"'
OCTETS = 'multipart/related; type="application/octet-stream"'
TO_JPEG = 'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50'
JPEG = "image/jpeg"
PNG = "image/png"


@dataclass
class Plan:
    """One metric and the requests that produce it."""

    metric: Metric
    kind: str
    requests: Callable[[int], list[Req]] = field(default=lambda r: [])
    probe: Req | None = None
    # The request the ceiling is sent instead of `req` (for plans whose requests must stay
    # unique per round, the ceiling replays one recorded representative).
    ceiling_alias: Callable[[Req], Req] | None = None
    concurrency: int = 1
    per_request: int = 1  # STOW: instances per request
    stow_files: str = ""  # STOW: "ct" or "small"
    count_results: bool = False  # QIDO: record how many results the probe returned


@dataclass
class ViewerMix:
    """Sessions of a viewer: series QIDO, series metadata, then `frames` frame requests."""

    clients: int
    seconds: float
    frames: int
    # (QIDO, metadata, frame requests of the series) per series a session may open
    series: list[tuple[Req, Req, list[Req]]]

    def session(self, rng: random.Random) -> list[Req]:
        qido, metadata, frames = self.series[rng.randrange(len(self.series))]
        if len(frames) <= self.frames:
            chosen = frames
        else:
            start = rng.randrange(len(frames) - self.frames + 1)
            chosen = frames[start : start + self.frames]
        return [qido, metadata, *chosen]

    def all_requests(self) -> list[Req]:
        out: list[Req] = []
        for qido, metadata, frames in self.series:
            out += [qido, metadata, *frames]
        return out


def _q(**params: str | int) -> str:
    return "?" + urllib.parse.urlencode(params, safe="*,-")


def _instance(corpus: Corpus, name: str, index: int) -> str:
    s = corpus.series[name]
    return f"/studies/{s.study}/series/{s.series}/instances/{s.sops[index]}"


def build_plans(
    corpus: Corpus,
    qido: QidoSizes,
    *,
    qido_repeat: int = 20,
    wado_repeat: int = 16,
    mix_seconds: float = 6.0,
    mix_clients: int = 16,
) -> tuple[list[Plan], ViewerMix]:
    """Every plan of a `make bench` run, in the order they run (STOW last: it adds data)."""
    plans: list[Plan] = []
    ct = corpus.series["ct"]
    mf = corpus.series["mf"]
    us = corpus.series["us"]
    j2k = corpus.series["j2k"]

    # --- QIDO-RS ---------------------------------------------------------------------------
    p = min(1234, qido.patients - 1)
    s = min(4321, qido.studies - 1)
    first_day = study_date(qido, 0)
    seventh_day = study_date(qido, min(6, qido.days - 1))
    day = study_date(qido, min(4, qido.days - 1))
    viewer_p95 = Target("<=", 10.0, "p95", "p95 ≤ 10 ms (30k SQLite)", ("ours",))
    queries: list[tuple[str, str, str, Target | None, str]] = [
        ("qido.patient_id", "Studies by PatientID", "/studies" + _q(PatientID=patient_id(p)),
         Target("<=", 5.0, "median", "≤ 5 ms"), "a viewer opening a patient (2 studies)"),
        ("qido.patient_name", "Studies by PatientName prefix (KAMO*)",
         "/studies" + _q(PatientName="KAMO*"), viewer_p95, "a name search; ~16 studies"),
        ("qido.patient_name_fuzzy", "Studies by PatientName, fuzzy (kamo*)",
         "/studies" + _q(PatientName="kamo*", fuzzymatching="true"), None,
         "case-insensitive prefix; Orthanc ignores fuzzymatching, so it finds none"),
        ("qido.accession", "Studies by AccessionNumber",
         "/studies" + _q(AccessionNumber=accession(s)), viewer_p95, "a worklist jump to one order"),
        ("qido.date_day", "Studies of one day (200)", "/studies" + _q(StudyDate=day, limit=1000),
         None, "a day's worklist"),
        ("qido.date_week", "Studies of a week (1,400 results)",
         "/studies" + _q(StudyDate=f"{first_day}-{seventh_day}", limit=2000),
         Target("<=", 60.0, "median", "≤ 60 ms"), "a 1,400-result query"),
        ("qido.worklist", "Week + ModalitiesInStudy=MR, limit 100",
         "/studies" + _q(StudyDate=f"{first_day}-{seventh_day}", ModalitiesInStudy="MR", limit=100),
         None, "a filtered worklist page"),
        ("qido.page100", "A page of 100 studies (offset 2000)",
         "/studies" + _q(limit=100, offset=min(2000, max(0, qido.studies - 100))),
         Target("<=", 10.0, "p95", "p95 ≤ 10 ms (30k SQLite)", ("ours",)), "paging the study list"),
        ("qido.series_of_study", "Series of a study", f"/studies/{study_uid(s)}/series",
         viewer_p95, "a viewer listing a study's series"),
        ("qido.series_by_modality", "Series by Modality=CT, limit 100",
         "/series" + _q(Modality="CT", limit=100), None, "cross-study series search"),
        ("qido.instances_of_series", "Instances of the 300-slice CT series",
         f"/studies/{ct.study}/series/{ct.series}/instances", None, "300 results"),
        ("qido.instance_by_uid", "Instance by SOPInstanceUID",
         "/instances" + _q(SOPInstanceUID=ct.sops[7]), viewer_p95, "one instance anywhere"),
    ]  # fmt: skip
    for metric_id, label, path, target, meaning in queries:
        req = Req(path, JSON)
        plans.append(
            Plan(
                Metric(metric_id, "QIDO-RS", label, "ms", False, target, meaning),
                "latency",
                requests=lambda r, req=req: [req] * qido_repeat,
                probe=req,
                count_results=True,
            )
        )

    # --- WADO-RS ---------------------------------------------------------------------------
    study_req = Req(f"/studies/{ct.study}", INSTANCES)
    plans.append(
        Plan(
            Metric("wado.study", "WADO-RS", "Retrieve the CT study (300 × 512²)", "MB/s", True,
                   Target(">=", 0.8, "vs_ceiling", "≥ 80 % of ceiling"),
                   "whole study as multipart application/dicom, as stored"),
            "transfer", requests=lambda r: [study_req] * 4, probe=study_req,
        )
    )  # fmt: skip
    meta_req = Req(f"/studies/{ct.study}/series/{ct.series}/metadata", JSON)
    plans.append(
        Plan(
            Metric("wado.series_metadata", "WADO-RS", "Series metadata (300 instances)", "ms",
                   False, Target("<=", 30.0, "median", "≤ 30 ms"), "DICOM JSON of a whole series"),
            "latency", requests=lambda r: [meta_req] * 10, probe=meta_req,
        )
    )  # fmt: skip
    plans.append(
        Plan(
            Metric("wado.instance", "WADO-RS", "Single CT instance (513 KB)", "ms", False,
                   None, "one instance as multipart application/dicom"),
            "latency",
            requests=lambda r: [Req(_instance(corpus, "ct", (r * 37 + i) % len(ct.sops)),
                                    INSTANCES) for i in range(wado_repeat)],
            probe=Req(_instance(corpus, "ct", 0), INSTANCES),
        )
    )  # fmt: skip

    def frame_req(name: str, index: int, number: int, accept: str) -> Req:
        return Req(f"{_instance(corpus, name, index)}/frames/{number}", accept)

    plans.append(
        Plan(
            Metric("wado.frame_native", "WADO-RS", "Frame of the 200-frame object (native)", "ms",
                   False, Target("<=", 8.0, "median", "≤ 8 ms"), "one 256 KB frame, ranged read"),
            "latency",
            requests=lambda r: [frame_req("mf", 0, 1 + (r * 53 + i * 7) % mf.frames, OCTETS)
                                for i in range(wado_repeat)],
            probe=frame_req("mf", 0, 1, OCTETS),
        )
    )  # fmt: skip
    plans.append(
        Plan(
            Metric("wado.frame_ct", "WADO-RS", "Frame of a CT slice (native)", "ms", False, None,
                   "one 512 KB frame of a single-frame instance"),
            "latency",
            requests=lambda r: [frame_req("ct", (r * 41 + i * 3) % len(ct.sops), 1, OCTETS)
                                for i in range(wado_repeat)],
            probe=frame_req("ct", 0, 1, OCTETS),
        )
    )  # fmt: skip
    # Transcoding plans ask for frames never asked before in the run (our server caches
    # transcoded frames); the ceiling replays one recorded frame kept out of the measurement.
    unique = wado_repeat
    plans.append(
        Plan(
            Metric("wado.frame_j2k_decode", "WADO-RS", "JPEG 2000 frame → native", "ms", False,
                   None, "decode a 512² 16-bit lossless JPEG 2000 frame"),
            "latency",
            requests=lambda r: [frame_req("j2k", (r * unique + i) % (len(j2k.sops) - 1), 1,
                                          OCTETS) for i in range(unique)],
            probe=frame_req("j2k", len(j2k.sops) - 1, 1, OCTETS),
            ceiling_alias=lambda req: frame_req("j2k", len(j2k.sops) - 1, 1, OCTETS),
        )
    )  # fmt: skip
    plans.append(
        Plan(
            Metric("wado.frame_jpeg_decode", "WADO-RS", "JPEG baseline US frame → native", "ms",
                   False, None, "decode a 640×480 colour JPEG frame"),
            "latency",
            requests=lambda r: [frame_req("us", 0, 1 + (r * unique + i) % (us.frames - 1),
                                          OCTETS) for i in range(unique)],
            probe=frame_req("us", 0, us.frames, OCTETS),
            ceiling_alias=lambda req: frame_req("us", 0, us.frames, OCTETS),
        )
    )  # fmt: skip
    plans.append(
        Plan(
            Metric("wado.frame_to_jpeg", "WADO-RS", "Native frame → JPEG baseline", "ms", False,
                   None, "encode a 512² 8-bit frame as JPEG (transcoding on retrieve)"),
            "latency",
            requests=lambda r: [frame_req("mf", 0, 1 + (r * unique + i) % (mf.frames - 1),
                                          TO_JPEG) for i in range(unique)],
            probe=frame_req("mf", 0, mf.frames, TO_JPEG),
            ceiling_alias=lambda req: frame_req("mf", 0, mf.frames, TO_JPEG),
        )
    )  # fmt: skip
    # The same transcodes with the cache warm (issue 22): the frame the probe asked for, again
    # and again; on PostgreSQL + S3 this is the in-process cache in front of the object store.
    warm_j2k = frame_req("j2k", len(j2k.sops) - 1, 1, OCTETS)
    warm_jpeg = frame_req("mf", 0, mf.frames, TO_JPEG)
    plans.append(
        Plan(
            Metric("wado.frame_j2k_warm", "WADO-RS", "JPEG 2000 frame → native, cache warm",
                   "ms", False, None, "the same transcoded frame again (derived-data cache)"),
            "latency", requests=lambda r: [warm_j2k] * unique, probe=warm_j2k,
        )
    )  # fmt: skip
    plans.append(
        Plan(
            Metric("wado.frame_to_jpeg_warm", "WADO-RS", "Native frame → JPEG, cache warm", "ms",
                   False, None, "the same JPEG-encoded frame again (derived-data cache)"),
            "latency", requests=lambda r: [warm_jpeg] * unique, probe=warm_jpeg,
        )
    )  # fmt: skip
    last_ct = len(ct.sops) - 1
    plans.append(
        Plan(
            Metric("wado.rendered", "WADO-RS", "Rendered CT instance (image/jpeg)", "ms", False,
                   Target("<=", 12.0, "median", "≤ 12 ms"), "windowed 512² slice as JPEG"),
            "latency",
            requests=lambda r: [Req(f"{_instance(corpus, 'ct', (r * unique + i) % last_ct)}"
                                    "/rendered", JPEG) for i in range(unique)],
            probe=Req(f"{_instance(corpus, 'ct', last_ct)}/rendered", JPEG),
            ceiling_alias=lambda req: Req(f"{_instance(corpus, 'ct', last_ct)}/rendered", JPEG),
        )
    )  # fmt: skip
    # PNG and thumbnails use other slices than the JPEG plan (offsets 75 and 150), so no
    # plan finds an instance another one has already decoded.
    plans.append(
        Plan(
            Metric("wado.rendered_png", "WADO-RS", "Rendered CT instance (image/png)", "ms", False,
                   Target("<=", 25.0, "median", "≤ 25 ms"), "windowed 512² slice as PNG"),
            "latency",
            requests=lambda r: [Req(f"{_instance(corpus, 'ct', (75 + r * unique + i) % last_ct)}"
                                    "/rendered", PNG) for i in range(unique)],
            probe=Req(f"{_instance(corpus, 'ct', last_ct)}/rendered", PNG),
            ceiling_alias=lambda req: Req(f"{_instance(corpus, 'ct', last_ct)}/rendered", PNG),
        )
    )  # fmt: skip
    plans.append(
        Plan(
            Metric("wado.thumbnail", "WADO-RS", "Thumbnail of a CT instance (first request)", "ms",
                   False, None, "small JPEG of an instance never asked for before"),
            "latency",
            requests=lambda r: [Req(f"{_instance(corpus, 'ct', (150 + r * unique + i) % last_ct)}"
                                    "/thumbnail", JPEG) for i in range(unique)],
            probe=Req(f"{_instance(corpus, 'ct', last_ct)}/thumbnail", JPEG),
            ceiling_alias=lambda req: Req(f"{_instance(corpus, 'ct', last_ct)}/thumbnail", JPEG),
        )
    )  # fmt: skip
    cached_thumbnail = Req(f"{_instance(corpus, 'ct', last_ct)}/thumbnail", JPEG)
    plans.append(
        Plan(
            Metric("wado.thumbnail_cached", "WADO-RS", "Thumbnail of a CT instance (cached)", "ms",
                   False, Target("<=", 5.0, "median", "≤ 5 ms"),
                   "the same thumbnail again, as a study list redrawn"),
            "latency",
            requests=lambda r: [cached_thumbnail] * unique,
            probe=cached_thumbnail,
        )
    )  # fmt: skip
    # A series thumbnail is asked once per series and server: every round takes two series
    # no round has asked for (the probe warms the multi-frame series, kept out of the list).
    thumb_series = [corpus.series[n] for n in ("mr1", "mr2", "mr3", "mr4", "ct", "j2k", "us")]

    def series_thumbnails(r: int) -> list[Req]:
        chosen = [thumb_series[(2 * r + i) % len(thumb_series)] for i in range(2)]
        return [Req(f"/studies/{s.study}/series/{s.series}/thumbnail", JPEG) for s in chosen]

    series_probe = Req(f"/studies/{mf.study}/series/{mf.series}/thumbnail", JPEG)
    plans.append(
        Plan(
            Metric("wado.thumbnail_series", "WADO-RS", "First thumbnail of a series", "ms", False,
                   Target("<=", 30.0, "median", "≤ 30 ms"),
                   "a study list showing a series it has never shown"),
            "latency",
            requests=series_thumbnails,
            probe=series_probe,
            ceiling_alias=lambda req: series_probe,
        )
    )  # fmt: skip

    # --- viewer mix ------------------------------------------------------------------------
    series_options = []
    for name in ("ct", "mr1", "mr2", "mr3", "mr4", "mf"):
        item = corpus.series[name]
        qido_req = Req(f"/studies/{item.study}/series", JSON)
        meta = Req(f"/studies/{item.study}/series/{item.series}/metadata", JSON)
        if item.frames > 1:
            frames = [frame_req(name, 0, n, OCTETS) for n in range(1, item.frames + 1)]
        else:
            frames = [frame_req(name, i, 1, OCTETS) for i in range(len(item.sops))]
        series_options.append((qido_req, meta, frames))
    mix = ViewerMix(mix_clients, mix_seconds, 40, series_options)
    plans.append(
        Plan(
            Metric("mix.viewer", "Viewer mix", f"{mix_clients} clients: series QIDO + metadata"
                   " + 40 frames per session", "req/s", True,
                   Target(">=", 200.0, "median", "≥ 200 req/s, 0 errors"),
                   "sessions on the CT, MR and multi-frame series"),
            "mix", probe=series_options[0][1],
        )
    )  # fmt: skip

    # --- STOW-RS (last: it grows the stores) ------------------------------------------------
    for per_request, concurrency in ((1, 1), (1, 8), (50, 1), (50, 8)):
        target = None
        if (per_request, concurrency) == (50, 8):
            target = Target(">=", 2.0, "vs_orthanc", "≥ 2× Orthanc")
        plans.append(
            Plan(
                Metric(f"stow.ct.b{per_request}.c{concurrency}", "STOW-RS",
                       f"CT 512² ×{len(ct.sops)}, {per_request}/request, c={concurrency}", "MB/s",
                       True, target, "fresh UIDs each round; instances/s in the JSON"),
                "stow", per_request=per_request, concurrency=concurrency, stow_files="ct",
            )
        )  # fmt: skip
    plans.append(
        Plan(
            Metric("stow.small.b50.c8", "STOW-RS", "Small instances (1 KB), 50/request, c=8",
                   "inst/s", True, None, "per-instance overhead: parse, digest, index"),
            "stow", per_request=50, concurrency=8, stow_files="small",
        )
    )  # fmt: skip
    return plans, mix
