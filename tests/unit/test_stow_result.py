from __future__ import annotations

from dicomweb_server.domain.stow_result import CANNOT_UNDERSTAND, StowResult


def test_status_codes_follow_ps3_18_10_5_3() -> None:
    result = StowResult()
    result.add_stored("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2", "1.2.5")
    assert result.status == 200
    result.add_failed("", "", CANNOT_UNDERSTAND, "not DICOM")
    assert result.status == 202
    only_failed = StowResult()
    only_failed.add_failed("1.2", "1.3", CANNOT_UNDERSTAND, "x")
    assert only_failed.status == 409


def test_response_data_set() -> None:
    result = StowResult()
    result.add_stored("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2", "1.2.5")
    result.add_failed("", "", CANNOT_UNDERSTAND, "not DICOM")
    body = result.to_json("http://h/dicomweb", None)
    assert body["00081190"]["Value"] == ["http://h/dicomweb/studies/1.2"]
    (stored,) = body["00081199"]["Value"]
    assert stored["00081190"]["Value"] == [
        "http://h/dicomweb/studies/1.2/series/1.2.5/instances/1.2.3"
    ]
    (failed,) = body["00081198"]["Value"]
    assert failed["00081197"] == {"vr": "US", "Value": [0xC000]}
    assert failed["00081155"] == {"vr": "UI"}
    assert result.failure_texts == ["not DICOM"]


def test_no_study_url_when_several_studies() -> None:
    result = StowResult()
    result.add_stored("1.2", "1.3", "1.4", "1.5")
    result.add_stored("1.2", "1.6", "1.7", "1.8")
    assert "00081190" not in result.to_json("http://h", None)
