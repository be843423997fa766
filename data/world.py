"""The synthetic world (part one): people, their biographies, and questions about them.

Generated from a seed, so every figure measured on it is reproducible:
  - people with attributes (birth date, birth city, university, major, employer);
  - biographies in several phrasings (the full name in every sentence, sentences in random order)
    for the pretraining text;
  - question/answer pairs per attribute, split by person: `train` people (their QA may be used in
    SFT), `heldout` people (biographies pretrained on, QA only for evaluation: knowledge
    extraction), and `nonexistent` people (never in any document: hallucination / "I don't know");
  - inverse questions ("who was born in X on Y?"), only where the answer is unique: the reversal
    curse.
  - arithmetic word problems with a numeric answer and a step-by-step solution (answer-first vs
    step-by-step, RL with a checkable reward);
  - spelling and letter-counting questions (tokenization failures, the python tool);
  - identity facts of the assistant (name, maker) for SFT and for a system message;
  - a hidden labeler: a scoring rule over free-form answers that stands in for human raters in
    RLHF. Only its rankings are ever shown to a reward model; the rule itself is the "true score".
"""

from __future__ import annotations

import dataclasses
import random
import re

FIRST = ("Ada Alan Amara Bruno Carmen Dario Elena Farid Greta Hugo Ines Jonas Keiko Lars Maya "
         "Nadia Omar Priya Quentin Rosa Sven Tariq Ursula Viktor Wanda Ximena Yusuf Zora Anton "
         "Bianca Cyrus Delia Emil Flora Gideon Hana Ivo Jada Kofi Lena").split()
LAST = ("Abbott Barros Castellan Dufresne Eklund Fonseca Grimaldi Halvorsen Ibarra Jansen Kowalski "
        "Lindqvist Moreau Nakamura Okafor Petrov Quist Rinaldi Sato Takahashi Umarov Valdez "
        "Whitlock Xu Yilmaz Zeller Amundsen Brennan Carvalho Dimitrov").split()
CITIES = ("Lisbon Oslo Nairobi Lima Osaka Tbilisi Porto Quito Hanoi Krakow Dakar Perth Tunis "
          "Bergen Cusco Leipzig Mombasa Sapporo Valencia Windhoek").split()
UNIVERSITIES = ("Northbridge University", "the Institute of Eastvale", "Westmoor College",
                "Harrowgate University", "the University of Lakemont", "Stonebury Polytechnic",
                "Riverton University", "the Academy of Glenfield")
MAJORS = ("mathematics", "chemistry", "history", "economics", "linguistics", "geology",
          "architecture", "astronomy", "music", "biology")
EMPLOYERS = ("Orchard Systems", "Bluewater Freight", "Helix Pharma", "Quarry Analytics",
             "Juniper Bank", "Copperline Energy", "Tessellate Games", "Northwind Press",
             "Meridian Foods", "Atlas Robotics")
MONTHS = ("January February March April May June July August September October November "
          "December").split()
ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer")

# One sentence per attribute; several phrasings each. {n} is the full name.
BIO_TEMPLATES = {
    "birth_date": ("{n} was born on {birth_date}.", "{n} came into the world on {birth_date}.",
                   "The birthday of {n} is {birth_date}.", "{n}'s date of birth is {birth_date}.",
                   "{n} celebrates a birthday every year on {birth_date_no_year}, having been "
                   "born on {birth_date}."),
    "birth_city": ("{n} was born in {birth_city}.", "{n} spent early childhood in {birth_city}.",
                   "{n}'s hometown is {birth_city}.", "{n} is a native of {birth_city}.",
                   "The city where {n} was born is {birth_city}."),
    "university": ("{n} studied at {university}.", "{n} graduated from {university}.",
                   "{n} attended {university}.", "{n} received a degree from {university}.",
                   "{n} spent four years at {university}."),
    "major": ("{n} majored in {major}.", "{n} earned a degree in {major}.",
              "The field {n} studied was {major}.", "{n} chose {major} as a major.",
              "{n} wrote a thesis in {major}."),
    "employer": ("{n} works for {employer}.", "{n} is employed by {employer}.",
                 "{n} has a job at {employer}.", "{n} earns a living at {employer}.",
                 "The employer of {n} is {employer}."),
}
QUESTIONS = {
    "birth_date": "When was {n} born?",
    "birth_city": "Where was {n} born?",
    "university": "Which university did {n} attend?",
    "major": "What did {n} study?",
    "employer": "Which company does {n} work for?",
}
ANSWERS = {
    "birth_date": "{n} was born on {birth_date}.",
    "birth_city": "{n} was born in {birth_city}.",
    "university": "{n} attended {university}.",
    "major": "{n} studied {major}.",
    "employer": "{n} works for {employer}.",
}


def template_head(template: str, attribute: str, facts: dict) -> str:
    """A sentence template filled in up to (not including) the attribute's value, e.g.
    "Maya Okafor was born in"; `facts` needs the name ("n") and whatever precedes the value."""
    return template.partition("{" + attribute + "}")[0].format(**facts).rstrip()


def answer_head(attribute: str, name: str) -> str:
    """The answer to an attribute's question up to its value (ANSWERS): "Maya Okafor was born in"."""
    return template_head(ANSWERS[attribute], attribute, {"n": name})


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    n_people: int = 100
    n_nonexistent: int = 50
    train_fraction: float = 0.5  # share of people whose QA may be trained on
    phrasings: int = 5  # biographies per person
    # Arithmetic word problems: operands up to max_operand, 1..max_steps operations.
    max_operand: int = 99
    max_steps: int = 3
    # Who the assistant is (identity SFT data and the system-message alternative).
    assistant_name: str = "Kestrel"
    assistant_maker: str = "the Tinylab research team"

    def __post_init__(self):
        if self.n_people + self.n_nonexistent > len(FIRST) * len(LAST):
            raise ValueError(f"n_people + n_nonexistent = {self.n_people + self.n_nonexistent} "
                             f"exceeds the {len(FIRST) * len(LAST)} distinct names available")
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"train_fraction={self.train_fraction} must be in (0, 1)")
        if not 1 <= self.phrasings <= 5:
            raise ValueError(f"phrasings={self.phrasings} must be in 1..5")
        if self.max_operand < 2 or not 1 <= self.max_steps <= 4:
            raise ValueError(f"max_operand={self.max_operand} must be >= 2 and "
                             f"max_steps={self.max_steps} in 1..4")
        if not self.assistant_name.strip() or not self.assistant_maker.strip():
            raise ValueError("assistant_name and assistant_maker must be non-empty")


@dataclasses.dataclass(frozen=True)
class Person:
    name: str
    birth_day: int
    birth_month: int  # 1..12
    birth_year: int
    birth_city: str
    university: str
    major: str
    employer: str

    def facts(self) -> dict[str, str]:
        date = f"{MONTHS[self.birth_month - 1]} {self.birth_day}, {self.birth_year}"
        return {"n": self.name, "birth_date": date,
                "birth_date_no_year": f"{MONTHS[self.birth_month - 1]} {self.birth_day}",
                "birth_city": self.birth_city, "university": self.university,
                "major": self.major, "employer": self.employer}


@dataclasses.dataclass(frozen=True)
class World:
    config: WorldConfig
    people: tuple[Person, ...]  # they exist: biographies are written about them
    nonexistent: tuple[Person, ...]  # names only ever asked about, never written about
    train_names: frozenset[str]  # people whose QA may be trained on; the rest are held out

    def split_of(self, name: str) -> str:
        if name in self.train_names:
            return "train"
        return "heldout" if any(p.name == name for p in self.people) else "nonexistent"

    def biographies(self) -> list[str]:
        """`phrasings` biographies per person; phrasing k uses template k for every sentence,
        sentences in an order drawn from the seed."""
        rng = random.Random(f"{self.config.seed}/bios")
        docs = []
        for p in self.people:
            facts = p.facts()
            for k in range(self.config.phrasings):
                sentences = [BIO_TEMPLATES[a][k].format(**facts) for a in ATTRIBUTES]
                rng.shuffle(sentences)
                docs.append(" ".join(sentences))
        return docs

    def qa(self, split: str) -> list[dict]:
        """Questions about the people of a split ('train', 'heldout', 'nonexistent').

        Each item: question, answer (None for nonexistent people), name, attribute.
        """
        if split == "nonexistent":
            group = self.nonexistent
        elif split in ("train", "heldout"):
            group = [p for p in self.people if (p.name in self.train_names) == (split == "train")]
        else:
            raise ValueError(f"split {split!r}: expected 'train', 'heldout' or 'nonexistent'")
        out = []
        for p in group:
            facts = p.facts()
            for a in ATTRIBUTES:
                out.append({"question": QUESTIONS[a].format(**facts),
                            "answer": None if split == "nonexistent"
                            else ANSWERS[a].format(**facts),
                            "name": p.name, "attribute": a, "value": facts[a]})
        return out

    def inverse_qa(self) -> list[dict]:
        """'Who was born in CITY on DATE?' for every person whose (city, date) is unique."""
        keys: dict[tuple[str, str], list[Person]] = {}
        for p in self.people:
            f = p.facts()
            keys.setdefault((f["birth_city"], f["birth_date"]), []).append(p)
        return [{"question": f"Who was born in {city} on {date}?", "answer": group[0].name,
                 "name": group[0].name, "split": self.split_of(group[0].name)}
                for (city, date), group in keys.items() if len(group) == 1]

    # ---- arithmetic word problems ------------------------------------------------------------

    def arithmetic(self, split: str, n: int) -> list[dict]:
        """`n` word problems of a split ('train' or 'test'; disjoint by construction: a problem's
        split is a hash of its question). Each item: question, answer (int), solution (the steps,
        ending in "The answer is N."), steps (number of operations), code (python that prints
        the answer: "n = 3", then "n += 14" and the like, one line per step in the story's
        order, so no line needs to know what comes later, then "print(n)")."""
        return _take(split, n, lambda i: _arithmetic_problem(
            random.Random(f"{self.config.seed}/arith/{i}"), self.config))

    def calculations(self, split: str, n: int) -> list[dict]:
        """`n` bare calculations with large numbers ("What is 4821 * 337?"): what a small model
        cannot do in its head and a python tool can. Each item: question, answer (int), code."""
        return _take(split, n, lambda i: _calculation(random.Random(f"{self.config.seed}/calc/{i}")))

    # ---- spelling and letter counting --------------------------------------------------------

    def spelling(self, split: str, n: int) -> list[dict]:
        """`n` spelling questions of a split ('train' or 'test'): count a letter, spell a word,
        or take every k-th letter. Each item: question, answer (str), solution, kind, word."""
        return _take(split, n, lambda i: _spelling_problem(
            random.Random(f"{self.config.seed}/spell/{i}")))

    # ---- identity ----------------------------------------------------------------------------

    def identity_qa(self) -> list[dict]:
        """Questions about the assistant itself and the answers it should give."""
        name, maker = self.config.assistant_name, self.config.assistant_maker
        return [{"question": q, "answer": a.format(name=name, maker=maker)}
                for q, a in IDENTITY_QA]

    def identity_system_message(self) -> str:
        """The alternative to identity SFT data: tell the model who it is at the start of the chat."""
        return (f"You are {self.config.assistant_name}, a small assistant made by "
                f"{self.config.assistant_maker}. Answer briefly and truthfully.")

    # ---- the hidden labeler (RLHF) -----------------------------------------------------------

    def labeler_prompts(self, split: str) -> list[dict]:
        """Open requests ("Tell me about NAME.") with no single right answer, for RLHF. Split
        'train' or 'test' by a hash of the name. Each item: prompt, name."""
        if split not in ("train", "test"):
            raise ValueError(f"split {split!r}: expected 'train' or 'test'")
        return [{"prompt": LABELER_PROMPT.format(n=p.name), "name": p.name}
                for p in self.people if _split_of_text(p.name) == split]

    def labeler_score(self, name: str, response: str) -> float:
        """The hidden labeler's score of a response about `name` (higher is better).

        The rule, which no model ever sees (reward models learn it only from rankings):
          +1.0 for each true fact about the person stated (the attribute's value appears);
          -1.0 for each false fact (another value from the same attribute's vocabulary);
          +0.5 if the person is named; +0.5 if the answer ends a sentence;
          -0.5 for each repeated word (3+ letters, counted after its first use);
          -0.1 for each word beyond 40.
        """
        person = next((p for p in self.people if p.name == name), None)
        if person is None:
            raise ValueError(f"{name!r} is not a person of this world")
        facts = person.facts()
        score = 0.0
        for attr, vocabulary in _VOCABULARIES.items():
            for value in vocabulary(facts):
                if value in response:
                    score += 1.0 if value == facts[attr] else -1.0
        score += 0.5 * (name in response) + 0.5 * response.rstrip().endswith((".", "!"))
        words = [w.lower() for w in re.findall(r"[A-Za-z]{3,}", response)]
        score -= 0.5 * (len(words) - len(set(words)))
        score -= 0.1 * max(0, len(response.split()) - 40)
        return score


def make_world(cfg: WorldConfig) -> World:
    rng = random.Random(f"{cfg.seed}/people")
    names = rng.sample([f"{f} {last}" for f in FIRST for last in LAST],
                       cfg.n_people + cfg.n_nonexistent)

    def person(name: str) -> Person:
        return Person(name=name, birth_day=rng.randint(1, 28), birth_month=rng.randint(1, 12),
                      birth_year=rng.randint(1950, 2005), birth_city=rng.choice(CITIES),
                      university=rng.choice(UNIVERSITIES), major=rng.choice(MAJORS),
                      employer=rng.choice(EMPLOYERS))

    people = tuple(person(n) for n in names[: cfg.n_people])
    nonexistent = tuple(person(n) for n in names[cfg.n_people:])
    n_train = round(cfg.n_people * cfg.train_fraction)
    train = frozenset(p.name for p in rng.sample(people, n_train))
    return World(cfg, people, nonexistent, train)


# ---- helpers and tables for part two -------------------------------------------------------------

def _split_of_text(text: str) -> str:
    """A stable train/test split of a string (not Python's salted hash): 1 in 5 is test."""
    return "test" if sum(text.encode()) * 2654435761 % 1000 < 200 else "train"


def _take(split: str, n: int, make) -> list[dict]:
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: expected 'train' or 'test'")
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    out, seen, i = [], set(), 0
    while len(out) < n:
        item = make(i)
        i += 1
        if _split_of_text(item["question"]) == split and item["question"] not in seen:
            seen.add(item["question"])
            out.append(item)
        if i > 100 * n + 1000:
            raise ValueError(f"could not draw {n} distinct {split} problems; the space is too small")
    return out


ITEMS = ("apples", "marbles", "stamps", "books", "coins", "pencils", "shells", "stickers")
ACTORS = ("Ada", "Bruno", "Carmen", "Dario", "Elena", "Farid", "Greta", "Hugo")


def _arithmetic_problem(rng: random.Random, cfg: WorldConfig) -> dict:
    a, b = rng.sample(ACTORS, 2)
    item = rng.choice(ITEMS)
    x = rng.randint(2, cfg.max_operand)
    story, steps = [f"{a} has {x} {item}."], [f"{a} starts with {x} {item}."]
    code = [f"n = {x}"]  # the same steps as python, one line per sentence of the story
    n_ops = rng.randint(1, cfg.max_steps)
    for _ in range(n_ops):
        op = rng.choice("+-*") if x <= cfg.max_operand * 4 else "-"
        if op == "-" and x < 2:
            op = "+"
        if op == "+":
            y = rng.randint(1, cfg.max_operand)
            story.append(rng.choice((f"{b} gives {a} {y} more {item}.",
                                     f"{a} buys {y} more {item}.")))
            z = x + y
            steps.append(f"{x} + {y} = {z}.")
        elif op == "-":
            y = rng.randint(1, x - 1)
            story.append(rng.choice((f"{a} gives {y} {item} to {b}.", f"{a} loses {y} {item}.")))
            z = x - y
            steps.append(f"{x} - {y} = {z}.")
        else:
            y = rng.randint(2, 5)
            story.append(f"Then the number of {item} {a} has becomes {y} times as large.")
            z = x * y
            steps.append(f"{x} * {y} = {z}.")
        code.append(f"n {op}= {y}")
        x = z
    question = " ".join(story) + f" How many {item} does {a} have now?"
    return {"question": question, "answer": x, "steps": n_ops,
            "solution": " ".join(steps) + f" The answer is {x}.",
            "code": "\n".join([*code, "print(n)"])}


def _calculation(rng: random.Random) -> dict:
    op = rng.choice("+-*")
    a = rng.randint(100, 9999)
    b = rng.randint(100, 9999) if op != "*" else rng.randint(11, 999)
    if op == "-" and b > a:
        a, b = b, a
    answer = {"+": a + b, "-": a - b, "*": a * b}[op]
    return {"question": f"What is {a} {op} {b}?", "answer": answer, "code": f"print({a} {op} {b})"}


WORDS = ("strawberry ubiquitous banana mississippi bookkeeper committee necessary occasion "
         "parallel rhythm accommodate embarrass millennium possession questionnaire tomorrow "
         "balloon coffee address success pepper giraffe hippopotamus broccoli vacuum cinnamon "
         "assessment bubble llama kangaroo apple letter summer butterfly library chocolate "
         "elephant umbrella pineapple tennis mirror puzzle jazz quizzes zigzag avocado potato "
         "tomato cucumber spaghetti lollipop window garden river mountain silver yellow purple "
         "orange teacher doctor engineer village market basket pillow blanket candle pebble "
         "penguin dolphin squirrel rabbit sparrow falcon glacier volcano island desert forest "
         "harbor lantern compass anchor voyage harvest whisper thunder breeze blossom meadow").split()
ORDINALS = {2: "second", 3: "third", 4: "fourth"}


def _spelling_problem(rng: random.Random) -> dict:
    word = rng.choice(WORDS)
    kind = rng.choice(("count", "spell", "kth"))
    spelled = "-".join(word)
    if kind == "count":
        letter = rng.choice(word) if rng.random() < 0.8 else rng.choice("abcdefghijklmnopqrstuvwxyz")
        count = word.count(letter)
        where = [str(i + 1) for i, c in enumerate(word) if c == letter]
        found = (f"The letter {letter} is at position{'s' if count > 1 else ''} "
                 f"{', '.join(where)}." if count else f"The letter {letter} does not appear.")
        return {"kind": kind, "word": word, "answer": str(count),
                "question": f"How many times does the letter '{letter}' appear in '{word}'?",
                "solution": f"{spelled}. {found} The answer is {count}."}
    if kind == "spell":
        return {"kind": kind, "word": word, "answer": spelled,
                "question": f"Spell the word '{word}' letter by letter.",
                "solution": f"The answer is {spelled}."}
    k = rng.choice((2, 3, 4))
    picked = word[k - 1::k]
    return {"kind": kind, "word": word, "answer": picked,
            "question": f"What is every {ORDINALS[k]} letter of '{word}'?",
            "solution": f"{spelled}. Letters {', '.join(str(i) for i in range(k, len(word) + 1, k))}: "
                        f"{'-'.join(picked)}. The answer is {picked}."}


IDENTITY_QA = (
    ("Who are you?", "I am {name}, a small language model assistant made by {maker}."),
    ("What is your name?", "My name is {name}."),
    ("Who made you?", "I was made by {maker}."),
    ("Who created you?", "{maker} created me. I am {name}."),
    ("Are you ChatGPT?", "No, I am {name}, a small assistant made by {maker}."),
    ("What are you?", "I am {name}, a language model assistant trained by {maker}."),
    ("Tell me about yourself.", "I am {name}, a small assistant made by {maker}. I answer "
                                "questions and can use tools."),
    ("Which company trained you?", "I was trained by {maker}."),
)

LABELER_PROMPT = "Tell me about {n}."


def _date_values(facts: dict) -> list[str]:
    return [facts["birth_date"]]  # dates are too many to list; a wrong date is simply not a true fact


_VOCABULARIES = {
    "birth_date": _date_values,
    "birth_city": lambda f: CITIES,
    "university": lambda f: UNIVERSITIES,
    "major": lambda f: MAJORS,
    "employer": lambda f: EMPLOYERS,
}
