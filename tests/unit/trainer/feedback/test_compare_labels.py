"""``rlaif-train compare-labels``: two labelings of the same pairs joined on id, their agreement,
correlations, summaries and largest differences, as a table, JSON or a scatter plot; and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlaif_api.contract import EXIT_BAD_INPUT, EXIT_OK
from rlaif_trainer import cli
from rlaif_trainer.errors import BadInputError
from rlaif_trainer.feedback import compare

from ..conftest import write_jsonl

FIRST_P = [0.9, 0.8, 0.3, 0.2, 0.6]
SECOND_P = [0.7, 0.4, 0.1, 0.45, 0.5]


def _records(
    p_as: list[float],
    *,
    mode: str = "pairwise",
    consistent: list[bool] | None = None,
    ids: list[str] | None = None,
) -> list[dict]:
    ids = ids or [f"id{i}" for i in range(len(p_as))]
    out = []
    for i, (rid, p) in enumerate(zip(ids, p_as, strict=True)):
        rec = {
            "id": rid,
            "prompt": f"prompt {rid}",
            "response_a": "a",
            "response_b": "b",
            "p_a": p,
            "mode": mode,
            "labeler": "python:tests:judge",
        }
        if consistent is not None:
            rec["consistent"] = consistent[i]
        out.append(rec)
    return out


def test_agreement_counts_ties_as_no_preference():
    report = compare.compare_labelings(_records(FIRST_P), _records(SECOND_P, mode="pointwise"))
    # preferences A A B B A against A B B B -: the tie leaves 4 decided pairs, 3 of them agree
    assert report["common"] == 5
    assert (report["agree"], report["disagree"]) == (3, 1)
    assert report["agreement"] == 0.75
    assert report["no_preference"] == {"first": 0, "second": 1, "either": 1}
    assert report["first"]["mode"] == "pairwise" and report["second"]["mode"] == "pointwise"


def test_ties_on_both_sides_and_all_ties():
    first, second = _records([0.5, 0.5, 0.9]), _records([0.5, 0.2, 0.5])
    report = compare.compare_labelings(first, second)
    assert report["no_preference"] == {"first": 2, "second": 2, "either": 3}
    assert (report["agree"], report["disagree"], report["agreement"]) == (0, 0, None)


def test_agreement_is_the_share_of_pairs_both_prefer_the_same_way_without_ties():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.01, 0.99, 50).tolist(), rng.uniform(0.01, 0.99, 50).tolist()
    report = compare.compare_labelings(_records(a), _records(b))
    same = sum((x > 0.5) == (y > 0.5) for x, y in zip(a, b, strict=True)) / 50
    assert report["agreement"] == pytest.approx(same, abs=1e-4)
    assert report["agree"] + report["disagree"] == 50


def test_correlations():
    report = compare.compare_labelings(_records(FIRST_P), _records(SECOND_P))
    assert report["pearson"] == pytest.approx(np.corrcoef(FIRST_P, SECOND_P)[0, 1], abs=1e-4)
    # ranks 5 4 2 1 3 against 5 2 1 3 4: sum of squared rank differences 10, 1 - 6*10/(5*24)
    assert report["spearman"] == pytest.approx(0.5, abs=1e-4)

    monotone = compare.compare_labelings(_records([0.1, 0.2, 0.4, 0.9]), _records([0.01, 0.04, 0.16, 0.81]))
    assert monotone["spearman"] == 1.0 and 0.9 < monotone["pearson"] < 1.0
    reversed_ = compare.compare_labelings(_records([0.1, 0.2, 0.4]), _records([0.9, 0.6, 0.5]))
    assert reversed_["spearman"] == -1.0


def test_spearman_gives_tied_values_their_average_rank():
    report = compare.compare_labelings(_records([0.1, 0.3, 0.3, 0.8]), _records([0.2, 0.4, 0.6, 0.7]))
    assert report["spearman"] == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1], abs=1e-4)


def test_correlation_is_none_when_a_side_is_constant():
    report = compare.compare_labelings(_records([0.1, 0.1, 0.1]), _records([0.2, 0.6, 0.9]))
    assert report["pearson"] is None and report["spearman"] is None
    assert compare.compare_labelings(_records([0.3]), _records([0.7]))["pearson"] is None


def test_largest_differences_are_ordered_and_limited():
    first = _records([0.9, 0.5, 0.2, 0.6, 0.4], ids=["e", "d", "c", "b", "a"])
    second = _records([0.1, 0.5, 0.3, 0.3, 0.7], ids=["e", "d", "c", "b", "a"])
    report = compare.compare_labelings(first, second, top=3)
    diffs = report["largest_differences"]
    # |diff| 0.8, then 0.3 twice (ties broken by id: a before b), then 0.1 and 0 left out
    assert [d["id"] for d in diffs] == ["e", "a", "b"]
    assert [d["difference"] for d in diffs] == [0.8, 0.3, 0.3]
    assert diffs[0] == {"id": "e", "p_a_first": 0.9, "p_a_second": 0.1, "difference": 0.8, "prefers": "A/B"}
    assert [d["prefers"] for d in diffs[1:]] == ["B/A", "A/B"]
    assert compare.compare_labelings(first, second, top=0)["largest_differences"] == []


def test_summaries_are_over_the_common_pairs_and_counts_per_side():
    first = _records([0.9, 0.2, 0.6], consistent=[True, False, False], ids=["x", "y", "only1"])
    second = _records([0.8, 0.1, 0.7, 0.4], mode="pointwise", consistent=[True] * 4, ids=["y", "x", "z", "w"])
    report = compare.compare_labelings(first, second)
    assert report["common"] == 2
    assert report["first"]["pairs"] == 3 and report["second"]["pairs"] == 4
    assert report["first"]["consistency_rate"] == 0.5  # x and y only; "only1" is left out
    assert report["first"]["mean_p_a"] == pytest.approx(0.55)
    assert report["second"]["mean_p_a"] == pytest.approx(0.45)  # matched by id, not by position
    assert report["second"]["consistency_rate"] == 1.0
    assert report["agreement"] == 0.0  # x: A/B, y: B/A


def test_no_common_ids_or_different_pairs_under_one_id_are_errors():
    with pytest.raises(BadInputError, match="share no pair id"):
        compare.compare_labelings(_records([0.6], ids=["a"]), _records([0.6], ids=["b"]))
    second = _records([0.6, 0.4])
    second[1]["response_b"] = "another response"
    with pytest.raises(BadInputError, match=r"pair 'id1' has a different response_b"):
        compare.compare_labelings(_records([0.6, 0.4]), second)
    # records without the pair's text (a user's labels file) are matched on id alone
    bare = [{"id": "id0", "p_a": 0.7}, {"id": "id1", "p_a": 0.3}]
    assert compare.compare_labelings(_records([0.6, 0.4]), bare)["agreement"] == 1.0


def test_read_labels_from_a_file_or_a_stage_directory(tmp_path: Path):
    rows = _records(FIRST_P)
    write_jsonl(tmp_path / "run" / "labels" / "labels.jsonl", rows)
    from_dir = compare.read_labels(tmp_path / "run" / "labels")
    from_file = compare.read_labels(tmp_path / "run" / "labels" / "labels.jsonl")
    assert from_dir == from_file == rows
    write_jsonl(tmp_path / "ints.jsonl", [{"id": 7, "p_a": 1}])
    assert compare.read_labels(tmp_path / "ints.jsonl") == [{"id": "7", "p_a": 1.0}]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": "a", "p_a": 0.5}', '{"id": "b", "p_a": 0.5'], r"labels\.jsonl:2: not valid JSON"),
        (['{"id": "a", "p_a": 0.5}', "", '{"p_a": 0.5}'], r"labels\.jsonl:3: missing field 'id'"),
        (['{"id": "a", "p_a": 1.5}'], r"labels\.jsonl:1: field 'p_a' must be a number in \[0, 1\], got 1.5"),
        (['{"id": "a", "p_a": "0.5"}'], r"labels\.jsonl:1: field 'p_a' must be a number"),
        (['{"id": "a"}'], r"labels\.jsonl:1: field 'p_a' must be a number in \[0, 1\], got None"),
        (
            ['{"id": "a", "p_a": 0.1}', '{"id": "a", "p_a": 0.2}'],
            r"labels\.jsonl:2: duplicate id 'a' \(first on line 1\)",
        ),
        (["[1, 2]"], r"labels\.jsonl:1: expected a JSON object"),
        ([], r"labels file .*labels\.jsonl holds no labels"),
    ],
)
def test_read_labels_names_the_file_and_line(tmp_path: Path, lines: list[str], message: str):
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(BadInputError, match=message):
        compare.read_labels(path)


def test_read_labels_missing_inputs(tmp_path: Path):
    with pytest.raises(BadInputError, match=r"labels file .*nope\.jsonl does not exist"):
        compare.read_labels(tmp_path / "nope.jsonl")
    (tmp_path / "labels").mkdir()
    with pytest.raises(BadInputError, match=r"labels directory .*labels holds no labels\.jsonl$"):
        compare.read_labels(tmp_path / "labels")
    (tmp_path / "labels.partial").mkdir()
    with pytest.raises(BadInputError, match=r"the label stage has not finished"):
        compare.read_labels(tmp_path / "labels")


@pytest.fixture
def two_labelings(tmp_path: Path) -> tuple[Path, Path]:
    first = write_jsonl(
        tmp_path / "pairwise" / "labels" / "labels.jsonl",
        _records(FIRST_P, consistent=[True, True, False, True, False]),
    )
    second = write_jsonl(
        tmp_path / "pointwise.jsonl", _records(SECOND_P, mode="pointwise", consistent=[True] * 5)
    )
    return first.parent, second


def test_cli_prints_a_table(two_labelings: tuple[Path, Path], capsys: pytest.CaptureFixture[str]):
    first, second = two_labelings
    assert cli.main(["compare-labels", str(first), str(second)]) == EXIT_OK
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"first:  {first}" and lines[1] == f"second: {second}"
    assert any(line.split() == ["mode", "pairwise", "pointwise"] for line in lines)
    assert any(line.split() == ["consistency", "rate", "0.600", "1.000"] for line in lines)
    assert "pairs in common   5 (0 only in first, 0 only in second)" in out
    assert (
        "agreement         0.750 (same preferred response on 3 of the 4 pairs where both prefer one)" in out
    )
    assert "no preference     1 of 5 pairs have p_a exactly 0.5 (0 in first, 1 in second)" in out
    assert "Spearman 0.500" in out
    table = lines[lines.index("largest differences in p_a:") + 1 :]
    assert table[0].split() == ["id", "first", "second", "|diff|", "prefers"]
    assert table[1].split() == ["id1", "0.800", "0.400", "0.400", "A/B"]
    assert len(table) == 6


def test_cli_json_and_plot(
    two_labelings: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    first, second = two_labelings
    png = tmp_path / "plots" / "modes.png"
    assert (
        cli.main(["compare-labels", str(first), str(second), "--json", "--plot", str(png), "--top", "2"])
        == EXIT_OK
    )
    report = json.loads(capsys.readouterr().out)
    assert report["agreement"] == 0.75 and report["common"] == 5
    assert report["first"]["path"] == str(first) and report["second"]["path"] == str(second)
    assert report["first"]["consistency_rate"] == 0.6
    assert [d["id"] for d in report["largest_differences"]] == ["id1", "id3"]
    assert report["plot"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_cli_text_mentions_the_plot(
    two_labelings: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    first, second = two_labelings
    png = tmp_path / "modes.png"
    assert cli.main(["compare-labels", str(first), str(second), "--plot", str(png)]) == EXIT_OK
    assert capsys.readouterr().out.rstrip().endswith(f"plot: {png}")
    assert png.is_file()


def test_cli_bad_input_exits_65_naming_file_and_line(
    two_labelings: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    first, _ = two_labelings
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "id0", "p_a": 0.4}\n{"id": "id1", p_a: 0.4}\n')
    assert cli.main(["compare-labels", str(first), str(bad)]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert f"error: {bad}:2: not valid JSON" in captured.err and captured.out == ""

    assert cli.main(["compare-labels", str(first), str(tmp_path / "missing")]) == EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err

    other = write_jsonl(tmp_path / "other.jsonl", [{"id": "zz", "p_a": 0.3}])
    png = tmp_path / "never.png"
    assert cli.main(["compare-labels", str(first), str(other), "--plot", str(png)]) == EXIT_BAD_INPUT
    assert "share no pair id" in capsys.readouterr().err and not png.exists()


def test_cli_help(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exc:
        cli.main(["compare-labels", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert (
        "usage: rlaif-train compare-labels" in out
        and "FIRST SECOND" in out
        and "--plot PNG" in out
        and "no preference" in out
    )
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert "compare-labels" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["compare-labels", "a", "b", "--top", "-1"])
    assert exc.value.code == 2
