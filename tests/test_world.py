"""The synthetic world: deterministic, consistent, and its splits never leak."""

import pytest

from data.world import ATTRIBUTES, WorldConfig, make_world


@pytest.fixture(scope="module")
def world():
    return make_world(WorldConfig(seed=0, n_people=60, n_nonexistent=30))


def test_the_world_is_deterministic_for_a_seed(world):
    again = make_world(WorldConfig(seed=0, n_people=60, n_nonexistent=30))
    assert again.biographies() == world.biographies() and again.qa("train") == world.qa("train")
    other = make_world(WorldConfig(seed=1, n_people=60, n_nonexistent=30))
    assert other.biographies() != world.biographies()


def test_answers_agree_with_the_biographies(world):
    bios = world.biographies()
    assert len(bios) == 60 * 5
    for split in ("train", "heldout"):
        for item in world.qa(split):
            theirs = [b for b in bios if item["name"] in b]
            assert len(theirs) == 5
            # Every phrasing states the fact the answer gives.
            assert all(item["value"] in b for b in theirs), item
            assert item["value"] in item["answer"]


def test_splits_never_leak(world):
    train = {q["name"] for q in world.qa("train")}
    heldout = {q["name"] for q in world.qa("heldout")}
    ghosts = {q["name"] for q in world.qa("nonexistent")}
    assert len(train) == 30 and len(heldout) == 30 and len(ghosts) == 30
    assert not train & heldout and not ghosts & (train | heldout)
    text = "\n".join(world.biographies())
    assert not any(name in text for name in ghosts)
    assert all(name in text for name in heldout)
    assert all(q["answer"] is None for q in world.qa("nonexistent"))
    assert len(world.qa("train")) == 30 * len(ATTRIBUTES)


def test_inverse_questions_have_unique_answers(world):
    inv = world.inverse_qa()
    assert inv and len({q["question"] for q in inv}) == len(inv)
    by_name = {p.name: p.facts() for p in world.people}
    for q in inv:
        f = by_name[q["answer"]]
        assert f["birth_city"] in q["question"] and f["birth_date"] in q["question"]


def test_bad_world_configs_fail_clearly():
    with pytest.raises(ValueError, match="distinct names"):
        WorldConfig(n_people=10_000)
    with pytest.raises(ValueError, match="train_fraction"):
        WorldConfig(train_fraction=1.0)
