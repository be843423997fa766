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
Still to come (corpus issue): arithmetic word problems, spelling and counting, identity facts,
the hidden labeler preference.
"""

from __future__ import annotations

import dataclasses
import random

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


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    n_people: int = 100
    n_nonexistent: int = 50
    train_fraction: float = 0.5  # share of people whose QA may be trained on
    phrasings: int = 5  # biographies per person

    def __post_init__(self):
        if self.n_people + self.n_nonexistent > len(FIRST) * len(LAST):
            raise ValueError(f"n_people + n_nonexistent = {self.n_people + self.n_nonexistent} "
                             f"exceeds the {len(FIRST) * len(LAST)} distinct names available")
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"train_fraction={self.train_fraction} must be in (0, 1)")
        if not 1 <= self.phrasings <= 5:
            raise ValueError(f"phrasings={self.phrasings} must be in 1..5")


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
