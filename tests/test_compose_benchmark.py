"""benchmarks/compose.py: face + cat composition on scenes, sum against regions."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import compose  # noqa: E402


class _Set:
    def __init__(self, reading):
        self.metadata = {"oracle_reading": reading}


def _row(name, domain, target, signed, strength, purity=0.9, domain_kept=1.0):
    return {"name": name, "domain": domain, "target": target, "signed_effects": {target: signed},
            "strength": strength, "purity": purity, "domain_kept": domain_kept}


def test_visible_moves_keep_visible_directions_and_the_value_they_move_away_from():
    directions = _Set([_row("no_glasses", "face", "glasses", -0.7, 0.7), _row("smiling", "face", "expression", 0.5, 0.5),
                       _row("weak", "face", "skin", 0.1, 0.1),
                       _row("mixed", "face", "hair", 0.8, 0.8, purity=0.45),          # strong, not pure
                       _row("to_a_cat", "face", "hair", 0.8, 0.8, domain_kept=0.6)])  # leaves the domain
    moves = compose.visible_moves(directions)
    assert [(m["name"], m["attribute"], m["from_value"]) for m in moves] == [
        ("no_glasses", "face_glasses", 1), ("smiling", "face_expression", 0)]
    assert compose.visible_moves(_Set(None)) == []


def test_scenes_with_and_flip_share():
    labels = [{"file": "a.png", "face_glasses": "1", "cat_eyes": "1"}, {"file": "b.png", "face_glasses": "1", "cat_eyes": "0"},
              {"file": "c.png", "face_glasses": "0", "cat_eyes": "1"}]
    assert compose.scenes_with(labels, {"face_glasses": 1, "cat_eyes": 1}) == ["a.png"]
    assert compose.scenes_with(labels, {"face_glasses": 1}) == ["a.png", "b.png"]
    probabilities = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.6, 0.3]])
    assert compose.flip_share(probabilities, 0, from_value=1) == 0.5   # 2 of 4 now read below 0.5
    assert compose.flip_share(probabilities, 1, from_value=0) == 0.5   # 2 of 4 now read at or above 0.5


def test_compose_benchmark_quick_run_writes_its_report(tmp_path):
    report = compose.main(["--quick", "--inversion-steps", "3", "--out", str(tmp_path)])
    assert 1 <= len(report["pairs"]) <= 2
    runs = ["face alone", "cat alone", "both (sum)", "both (regions)"]
    for pair in report["pairs"]:
        assert list(pair["runs"]) == runs and 1 <= pair["scenes"] <= 4
        for row in pair["runs"].values():
            assert all(0.0 <= value <= 1.0 for value in row.values())
            assert row["both flipped"] <= min(row["face flipped"], row["cat flipped"])
    saved = json.loads((tmp_path / "compose.json").read_text())
    assert saved["mean"] == report["mean"] and set(saved["mean"]) == set(runs)
    markdown = (tmp_path / "compose.md").read_text()
    assert "| both (regions) |" in markdown and "Mean over pairs" in markdown
