"""The benchmark harness stays importable and its arithmetic right (no network, no servers)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.ceiling import request_key
from bench.client import multipart_body
from bench.corpus import ROOT, uid_with_round, with_round
from bench.qido_corpus import (
    QidoSizes,
    QidoTemplate,
    accession,
    add_corpus_sites,
    check_templating,
    corpus_sites,
    iter_instances,
    load_index,
    patient_id,
    study_site,
    study_uid,
)
from bench.report import metric_results, render_markdown, results_document
from bench.scale import _VIEWER_QUERIES, _verdicts, render_scale, site_plans
from bench.stats import Metric, Summary, Target, check_target, percentile, ratio, summarize


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1.0], 95) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile(list(map(float, range(101))), 95) == pytest.approx(95.0)
    assert percentile([10.0, 20.0], 50) == pytest.approx(15.0)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summaries_take_the_bad_side_for_p95() -> None:
    times = summarize([1.0, 2.0, 3.0, 100.0], higher_is_better=False)
    assert times.median == 2.5
    assert times.p95 is not None and times.p95 > 80
    rates = summarize([100.0, 90.0, 10.0], higher_is_better=True)
    assert rates.median == 90.0
    assert rates.p95 is not None and rates.p95 < 20
    assert not summarize([], higher_is_better=True).available


def test_targets_and_ratios() -> None:
    ours = Summary(median=4.0, p95=9.0, n=10)
    orthanc = Summary(median=8.0, p95=20.0, n=10)
    assert ratio(ours, orthanc) == 0.5
    assert ratio(ours, Summary()) is None
    assert check_target(Target("<=", 5.0), ours, {}) is True
    assert check_target(Target("<=", 8.0, "p95"), ours, {}) is False
    assert check_target(Target(">=", 2.0, "vs_orthanc"), ours, {"orthanc": orthanc}) is False
    assert check_target(Target(">=", 2.0, "vs_orthanc"), ours, {}) is None
    failing = Summary(median=300.0, p95=250.0, n=3, errors=2)
    assert check_target(Target(">=", 200.0), failing, {}) is False


def test_report_renders_ratios_targets_and_na() -> None:
    metric = Metric("qido.x", "QIDO-RS", "A query", "ms", False, Target("<=", 5.0), "why")
    entry = metric_results(
        metric,
        {
            "ours": Summary(median=2.0, p95=3.0, n=20),
            "orthanc": Summary(median=8.0, p95=9.0, n=20),
            "ceiling": Summary(median=0.5, p95=0.6, n=20),
            "ours_pg": Summary(note="not supported: HTTP 404"),
        },
    )
    assert entry["ratios"]["ours/orthanc"] == 0.25
    assert entry["ratios"]["ours/ceiling"] == 4.0
    assert entry["verdicts"]["ours"]["met"] is True
    assert entry["verdicts"]["ours_pg"]["met"] is None
    document = results_document({"started": "now", "cpus": 2}, {}, [entry])
    text = render_markdown(document)
    assert "| A query | ms | 2.00 / 3.00 |" in text
    assert "n/a (not supported: HTTP 404)" in text
    assert "0.25" in text


def test_report_renders_server_cpu_per_instance_for_stow() -> None:
    metric = Metric("stow.x", "STOW-RS", "A store", "MB/s", True, None, "why")
    key = "server_cpu_ms_per_instance"
    ours = Summary(median=100.0, p95=90.0, n=2, extra={key: 3.5})
    entry = metric_results(metric, {"ours": ours, "orthanc": Summary(median=50.0, p95=40.0, n=2)})
    text = render_markdown(results_document({"started": "now"}, {}, [entry]))
    assert "Server CPU per stored instance" in text
    assert "| A store | 3.50 | n/a |" in text
    plain = metric_results(metric, {"ours": Summary(median=1.0, p95=1.0, n=1)})
    assert "Server CPU" not in render_markdown(results_document({}, {}, [plain]))


def test_scale_report_renders_steps() -> None:
    step = {
        "instances": 300,
        "stow_mb_s": 50.0,
        "qido": {
            "qido.page100": {"label": "Page", "p50": 3.0, "p95": 4.0, "errors": 0},
            "qido.date_week": {"label": "Week", "p50": 55.0, "p95": 70.0, "errors": 0},
        },
    }
    slower = {"label": "Page", "p50": 9.0, "p95": 12.5, "errors": 0}
    last = {**step, "instances": 1000, "stow_mb_s": 45.0}
    last["qido"] = {**step["qido"], "qido.page100": slower}  # type: ignore[dict-item]
    document = {
        "meta": {"started": "now", "description": "d", "cpus": 2, "load_before": 0.5,
                 "workers": 2, "loader": "copy", "load_rate": 12000},
        "steps": [step, last],
        "verdicts": {"x": "met"},
    }  # fmt: skip
    text = render_scale(document)
    assert "| Page | 3.0 / 4.0 | 9.0 / 12.5 | p95 ≤ 10 ms |" in text
    assert "| Week | 55.0 / 70.0 | 55.0 / 70.0 | ≤ 60 ms |" in text  # issue 22: the median
    assert "50.0 | 45.0" in text
    assert "Loading by COPY" in text and "12000 instances/s" in text
    assert "round after the load" not in text  # no step had one
    last["stow_warmup"] = 30.5
    assert "| STOW, the round after the load (not counted) | — | 30.5 |  |" in render_scale(
        document
    )
    verdicts = _verdicts(document["steps"])  # type: ignore[arg-type]
    assert verdicts["Page"] == "p95 12.5 ms (missed: ≤ 10)"
    assert verdicts["Week"] == "p50 55.0 ms (met: ≤ 60)"
    assert verdicts["STOW rate at the end vs empty"].startswith("-10% (met")


def test_issue15_scale_report_shows_unindexed_targets_and_413s() -> None:
    scan = {"label": "Scan", "p50": 600.0, "p95": 800.0, "errors": 0, "statuses": [200]}
    metadata = {"label": "Meta", "p50": 5000.0, "p95": 5100.0, "errors": 3, "statuses": [413]}
    step = {
        "instances": 300,
        "stow_mb_s": 50.0,
        "qido": {"qido.unindexed_study_scan": scan, "qido.unindexed_metadata_scan": metadata},
    }
    document = {
        "meta": {"started": "now", "description": "d", "cpus": 2, "load_before": 0.5,
                 "workers": 2},
        "steps": [step],
    }  # fmt: skip
    text = render_scale(document)
    assert "| Scan | 600.0 / 800.0 | p95 ≤ 1 s |" in text
    assert "| Meta | 5000.0 / 5100.0 (3× 413) |  |" in text


def test_round_rewrite_keeps_lengths() -> None:
    uid = f"{ROOT}.1000.1.1.1.7"
    data = b"\0" * 10 + uid.encode() + b"\0" * 10
    varied = with_round(data, 42)
    assert len(varied) == len(data)
    assert uid_with_round(uid, 42).encode() in varied


def test_qido_templating_matches_the_parser() -> None:
    template = QidoTemplate()
    check_templating(template, list(iter_instances(QidoSizes(studies=2))))
    assert QidoSizes().instances == 30_000


def test_multipart_and_ceiling_keys() -> None:
    body, content_type = multipart_body([b"abc"])
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    assert b"\r\n\r\nabc\r\n" in body
    assert request_key("POST", "/dicomweb/studies?x=1", "a") == "POST /dicomweb/studies"
    assert request_key("GET", "/dicomweb/studies", None) == "GET /dicomweb/studies "


def test_issue16_corpus_spread_over_sites_is_keyed_apart() -> None:
    one, ten = QidoSizes(studies=400), QidoSizes(studies=400, sites=10)
    assert one.key() == "400-2-200-v2"  # one site: the caches of before stay valid
    assert ten.key() != one.key() and "s10" in ten.key()
    assert corpus_sites(one) == ("default",)
    assert corpus_sites(ten) == tuple(f"site-{n:02d}" for n in range(1, 11))
    assert {study_site(one, s) for s in range(400)} == {"default"}
    shares = [sum(1 for s in range(400) if study_site(ten, s) == n) for n in corpus_sites(ten)]
    assert min(shares) > 10 and sum(shares) == 400
    for s in range(0, 400, 2):  # a patient's two studies live in one site
        assert study_site(ten, s) == study_site(ten, s + 1)
    assert {i.site for i in iter_instances(ten) if i.study == study_uid(7)} == {study_site(ten, 7)}


def test_issue16_site_plans_ask_for_what_the_site_holds() -> None:
    sizes = QidoSizes(studies=400, sites=10)
    plans = site_plans(sizes, "site-01", 300)  # 300 studies loaded so far
    assert [p.metric.id for p in plans] == list(_VIEWER_QUERIES)
    paths = {p.metric.id: p.requests(0)[0].path for p in plans}
    held = [s for s in range(300) if study_site(sizes, s) == "site-01"]
    patients = {patient_id(s // 2) for s in held if s + 1 in held or s - 1 in held}
    assert paths["qido.patient_id"].split("=")[1] in patients
    assert paths["qido.accession"].split("=")[1] in {accession(s) for s in held}
    assert any(paths["qido.series_of_study"] == f"/studies/{study_uid(s)}/series" for s in held)
    assert paths["qido.page100"] == f"/studies?limit=100&offset={max(0, len(held) - 100)}"
    worklist = paths["qido.ohif_worklist"]  # what OHIF's study list sends for a day
    assert "limit=101&offset=0&fuzzymatching=false" in worklist
    assert "includefield=00081030%2C00080060%2C00080090%2C00100030" in worklist


async def test_issue16_corpus_loads_into_its_sites(tmp_path: Path) -> None:
    from dicomweb_server.index.sqlite import SqliteInstanceIndex

    sizes = QidoSizes(studies=12, instances_per_series=1, sites=3)
    index = await SqliteInstanceIndex.open(tmp_path / "index.sqlite")
    try:
        assert await add_corpus_sites(index, sizes) == ["site-01", "site-02", "site-03"]
        assert await add_corpus_sites(index, sizes) == []  # already there
        assert await load_index(index, sizes, concurrency=2, batch=4) == sizes.instances
        for s in range(sizes.studies):
            assert await index.sites_holding_study(study_uid(s)) == [study_site(sizes, s)]
    finally:
        await index.close()


def test_issue16_scale_report_compares_enterprise_and_site_roots() -> None:
    def side(p50: float, p95: float, results: int) -> dict[str, object]:
        return {"p50": p50, "p95": p95, "errors": 0, "statuses": [200], "results": results}

    def step(instances: int, ratio: float) -> dict[str, object]:
        queries = {
            "qido.patient_id": {
                "label": "Studies by PatientID", "path": "/studies?PatientID=P1",
                "enterprise": side(2.0, 2.0 * ratio, 2), "site": side(1.5, 2.0, 2),
                "ratio_p95": ratio,
            },
            "qido.date_day": {
                "label": "Studies of one day", "path": "/studies?StudyDate=20240105",
                "enterprise": side(9.0, 12.0, 200), "site": side(2.0, 3.0, 21),
                "ratio_p95": 4.0,
            },
        }  # fmt: skip
        return {
            "instances": instances,
            "stow_mb_s": 40.0,
            "qido": {"qido.patient_id": {"label": "Studies by PatientID", "p50": 2.0,
                                         "p95": 3.0, "errors": 0}},
            "sites": {"sites": 10, "site": "site-01", "studies_in_site": 50, "queries": queries},
        }  # fmt: skip

    document = {
        "meta": {"started": "now", "description": "d", "cpus": 2, "load_before": 0.5,
                 "workers": 2, "sites": 10},
        "steps": [{"instances": 300, "stow_mb_s": 40.0, "qido": {}}, step(1000, 1.25),
                  step(2000, 2.5)],
    }  # fmt: skip
    document["verdicts"] = _verdicts(document["steps"])  # type: ignore[arg-type]
    text = render_scale(document)
    assert "10 sites: the table's queries run at the enterprise root" in text
    assert "## Enterprise root (10 sites) vs site-01's root" in text
    assert "| Studies by PatientID | 1.25× | 2.50× | ≤ 2× |" in text
    assert "| Studies by PatientID | 2 / 2 | 2.0 / 5.0 | 1.5 / 2.0 | 2.50× |" in text
    verdict = document["verdicts"]["Studies by PatientID: enterprise root vs site-01"]
    assert verdict == "p95 5.0 vs 2.0 ms, 2.50× (missed: ≤ 2×)"
    day = document["verdicts"]["Studies of one day: enterprise root vs site-01"]
    assert day == "p95 12.0 vs 3.0 ms, 4.00× (missed: ≤ 2×; 200 vs 21 results)"


def test_profile_summaries_leave_waiting_threads_out(tmp_path: Path) -> None:
    from bench.run import profile_summary

    base = 'process 1:"serve";process 2:"worker";subprocess_started (uvicorn/_subprocess.py:80)'
    raw = tmp_path / "profile.txt"
    raw.write_text(
        f"{base};Workers._work (dicomweb_server/index/threads.py:62) 70\n"  # SQLite thread idle
        f"{base};Workers._work (dicomweb_server/index/threads.py:64);"
        "SqliteInstanceIndex._run.<locals>.call (dicomweb_server/index/sqlite.py:240) 10\n"
        f"{base};_worker (concurrent/futures/thread.py:81) 50\n"
        f"{base};Route.matches (starlette/routing.py:255) 30\n"
    )
    summary = profile_summary(raw)
    assert summary.startswith("40 busy samples")
    assert "75.0%  Route.matches (starlette/routing.py:255)" in summary
    assert "25.0%  SqliteInstanceIndex._run.<locals>.call" in summary
