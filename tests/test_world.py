"""The synthetic world: deterministic, consistent, and its splits never leak."""

import re

import pytest

from data.world import ATTRIBUTES, CITIES, WorldConfig, make_world


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


def test_arithmetic_answers_follow_their_steps(world):
    train, test = world.arithmetic("train", 200), world.arithmetic("test", 50)
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    assert train == world.arithmetic("train", 200)  # deterministic
    for p in train + test:
        # Replay the solution's equations; the last result is the answer.
        value = None
        for a, op, b, c in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", p["solution"]):
            a, b, c = int(a), int(b), int(c)
            assert value is None or a == value
            assert c == {"+": a + b, "-": a - b, "*": a * b}[op] and c >= 0
            value = c
        assert value == p["answer"] and p["solution"].endswith(f"The answer is {p['answer']}.")
        assert 1 <= p["steps"] <= 3
        # The python form: one line per step, the operands in the story's order.
        lines = p["code"].splitlines()
        assert len(lines) == p["steps"] + 2 and lines[-1] == "print(n)"
        scope: dict = {}
        exec("\n".join(lines[:-1]), scope)  # noqa: S102 (the world's own arithmetic)
        assert scope["n"] == p["answer"]
        assert re.findall(r"\d+", p["code"]) == [re.search(r"\d+", p["solution"]).group()] + [
            b for _, _, b, _ in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", p["solution"])]
    assert {p["steps"] for p in train} == {1, 2, 3}


def test_spelling_answers_are_right(world):
    items = world.spelling("train", 300)
    assert {i["kind"] for i in items} == {"count", "spell", "kth"}
    for i in items:
        w, q = i["word"], i["question"]
        if i["kind"] == "count":
            letter = re.search(r"letter '(.)'", q).group(1)
            assert i["answer"] == str(w.count(letter))
        elif i["kind"] == "spell":
            assert i["answer"].replace("-", "") == w
        else:
            k = {"second": 2, "third": 3, "fourth": 4}[re.search(r"every (\w+) letter", q).group(1)]
            assert i["answer"] == w[k - 1::k]
        assert i["solution"].endswith(f"The answer is {i['answer']}.")
    assert not {i["question"] for i in items} & {i["question"] for i in world.spelling("test", 60)}


def test_identity_comes_from_the_config():
    w = make_world(WorldConfig(n_people=4, n_nonexistent=2, assistant_name="Wren",
                               assistant_maker="Acme Lab"))
    answers = " ".join(q["answer"] for q in w.identity_qa())
    assert "Wren" in answers and "Acme Lab" in answers and "Kestrel" not in answers
    assert "Wren" in w.identity_system_message()


def test_the_labeler_rewards_true_facts_and_punishes_false_and_repetition(world):
    prompts = world.labeler_prompts("train") + world.labeler_prompts("test")
    assert len(prompts) == 60 and world.labeler_prompts("test")
    p = world.people[0]
    f = p.facts()
    true = f"{p.name} was born in {f['birth_city']} and works for {f['employer']}."
    wrong_city = next(c for c in CITIES if c != f["birth_city"])
    false = f"{p.name} was born in {wrong_city} and works for {f['employer']}."
    stuffed = " ".join([f"{p.name} works for {f['employer']}."] * 8)
    s_true, s_false, s_stuffed = (world.labeler_score(p.name, r) for r in (true, false, stuffed))
    assert s_true > s_false and s_true > s_stuffed
    assert world.labeler_score(p.name, "") < s_true
    with pytest.raises(ValueError, match="not a person"):
        world.labeler_score("Nobody Atall", true)


def test_recall_prompts_continue_into_the_biographies(world):
    from eval.knowledge import recall_items

    bios = "\n".join(world.biographies())
    for phrasing in (0, 3):
        items = recall_items(world, phrasing)
        assert len(items) == 60 * len(ATTRIBUTES)
        for it in items:
            # prompt + " " + value is verbatim biography text, so a model that memorised the
            # biographies can complete it.
            assert f"{it['prompt']} {it['value']}" in bios, it
    with pytest.raises(ValueError, match="phrasing"):
        recall_items(world, 5)
