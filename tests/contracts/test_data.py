"""Contract of the toy data tool (data/make_toy.py): what encode.py, train.py and evaluate.py rely on, whatever a
student changes in the families, their mix, the attributes or the media. Run: pytest tests/contracts/test_data.py"""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "data"))
import make_toy  # noqa: E402  (data/ tools are scripts, imported from their folder)
from data.records import missing_media, scan_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    make_toy.build(str(out), seed=0, preset="small")
    return out


def test_every_file_holds_valid_records_whose_media_exist(toy):
    for name in ("train", "val", "test", "test_wordings", "test_multiturn"):
        rows = list(scan_jsonl(str(toy / f"{name}.jsonl")))
        assert rows, name
        for line, rec, problems in rows:  # the format every stage reads (data/README.md §1-2)
            assert rec is not None and not problems, f"{name}.jsonl:{line}: {problems}"
            assert not missing_media(rec, str(toy)), f"{name}.jsonl:{line}"


def test_media_listing_names_every_file_with_its_split_and_attributes(toy):
    """probe.py and evaluate --ceiling read media.jsonl: each file once, a split, attributes to probe."""
    listed = [json.loads(line) for line in (toy / "media.jsonl").read_text().splitlines()]
    assert len({m["path"] for m in listed}) == len(listed)
    assert all(m["split"] in ("train", "val", "test") and m["attributes"] and (toy / m["path"]).is_file()
               for m in listed)
    used = {m["path"] for name in ("train", "val", "test") for line in (toy / f"{name}.jsonl").read_text().splitlines()
            for m in json.loads(line)["media"]}
    assert used <= {m["path"] for m in listed}


def test_test_split_measures_generalisation(toy):
    """Held out: no train record has a HELD_OUT combination, every val/test record has one, and the splits use
    different media files (so the test scores new renderings, not memory)."""
    recs = {s: [json.loads(line) for line in (toy / f"{s}.jsonl").read_text().splitlines()]
            for s in ("train", "val", "test")}
    assert not any(make_toy.is_held_out(c) for r in recs["train"] for c in r["combos"])
    assert all(any(make_toy.is_held_out(c) for c in r["combos"]) for s in ("val", "test") for r in recs[s])
    files = {s: {m["path"] for r in rs for m in r["media"]} for s, rs in recs.items()}
    assert not files["train"] & (files["val"] | files["test"])


def test_needs_point_at_media_attributes_the_probe_can_read(toy):
    """evaluate --ceiling reads `needs`: [media index, attribute] pairs, the attribute listed in media.jsonl."""
    attrs = {m["path"]: m["attributes"] for m in map(json.loads, (toy / "media.jsonl").read_text().splitlines())}
    for line in (toy / "test.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert all(key in attrs[rec["media"][i]["path"]] for i, key in rec["needs"]), rec["id"]
