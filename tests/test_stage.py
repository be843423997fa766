"""The stage contract: a stage finds what its parents recorded, once each, and its best checkpoint."""

import json

from train.stage import Stage, recall_threshold


def _stage(path, **meta):
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_a_stage_reads_through_its_parents(tmp_path):
    sft = _stage(tmp_path / "sft", stage="sft", recall_threshold=-3.7)
    rl = _stage(tmp_path / "rl", stage="rl", parent=str(sft))
    rlhf = _stage(tmp_path / "rlhf", stage="rlhf", parent=str(rl))
    assert [s.path.name for s in Stage(rlhf).lineage()] == ["rlhf", "rl", "sft"]
    assert Stage(rlhf).find("recall_threshold") == -3.7 and Stage(rlhf).find("nothing") is None
    assert recall_threshold(json.loads((rlhf / "meta.json").read_text())) == -3.7
    # a cycle of parents ends instead of looping
    loop = _stage(tmp_path / "a", parent=str(tmp_path / "b"))
    _stage(tmp_path / "b", parent=str(loop))
    assert len(list(Stage(loop).lineage())) == 2 and Stage(loop).find("recall_threshold") is None
    assert Stage(rlhf).best is None
    (rlhf / "best" / "checkpoints").mkdir(parents=True)
    assert Stage(rlhf).best.path == rlhf / "best"
