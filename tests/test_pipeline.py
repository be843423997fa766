"""The cleaning pipeline, stage by stage, on pages written for the test."""

import gzip
import json

import pytest

from data.pipeline import PipelineConfig, run_pipeline
from data.sources import write_raw

ARTICLES = {
    "gardens": (
        "Community gardens have become a familiar sight in many cities over the last twenty years. "
        "They give people without a yard a place to grow vegetables, herbs and flowers, and they "
        "often turn an empty lot into a shared green space that the whole street can enjoy.\n"
        "Most gardens are run by a small committee of volunteers. The committee decides how the "
        "plots are assigned, collects a modest yearly fee, and organises work days when everyone "
        "helps to repair fences, turn the compost and clear the paths before the spring planting.\n"
        "Researchers who study these projects report that gardeners eat more fresh produce and "
        "spend more time outdoors. Neighbours who had never spoken before start to trade seeds and "
        "advice, and older residents pass on what they know about soil, weather and pests.\n"
        "There are challenges as well. Water can be expensive, tools go missing, and a lease on "
        "city land may end with little warning. Even so, most gardens that survive their first "
        "three seasons tend to last for a long time, because the people who use them care."),
    "bridges": (
        "A suspension bridge carries its deck on vertical cables that hang from two main cables. "
        "The main cables pass over tall towers and are anchored in heavy blocks at each end of the "
        "bridge, so that the weight of the deck is carried to the ground through the towers.\n"
        "Engineers choose this design when a bridge must cross a long distance without supports in "
        "the water. Ships can pass underneath, and the light structure uses less steel than a "
        "truss of the same length would need, which keeps the cost of the project lower.\n"
        "The greatest danger for such a bridge is wind. Early designs were too flexible, and one "
        "famous bridge twisted itself apart only a few months after it opened. Modern decks are "
        "shaped like the wing of an aircraft and are tested in wind tunnels before construction.\n"
        "Maintenance never stops. Inspectors climb the cables to look for broken wires, and the "
        "steel is painted again and again to protect it from rust. A well kept suspension bridge "
        "can serve a city for more than a hundred years."),
    "bread": (
        "Baking bread at home requires only flour, water, salt and yeast, yet the results vary "
        "enormously with the skill of the baker. The way the dough is mixed, how long it rests "
        "and the heat of the oven all change the taste and the texture of the loaf.\n"
        "Kneading develops gluten, a network of proteins that traps the gas produced by the yeast. "
        "A dough that has been kneaded well feels smooth and stretches without tearing, while a "
        "dough that has been kneaded too little will spread out flat in the oven.\n"
        "Many bakers let their dough rise slowly in a cool place overnight. The long, slow "
        "fermentation gives the bread a deeper flavour and a crust that stays crisp for longer, "
        "and it also makes the baking day easier to plan around work and family.\n"
        "Finally the loaf is baked in a very hot oven, often with a little steam at the start. "
        "When the crust is brown and the bottom sounds hollow when tapped, the bread is done and "
        "should cool on a rack before anyone cuts the first slice."),
    "lighthouses": (
        "Before satellite navigation, sailors depended on lighthouses to find their way along "
        "dangerous coasts at night. Each tower showed its own pattern of flashes, so that a "
        "captain who counted the seconds between them could tell exactly which light he saw.\n"
        "The keepers lived in small houses at the foot of the tower, often on a rock far from the "
        "nearest village. They trimmed the wicks, polished the great glass lenses and wound the "
        "clockwork that turned the lamp, and they wrote every change of weather into a log.\n"
        "Today almost every light in the world is automatic. Many of the old towers have become "
        "museums or holiday homes, and volunteers keep them painted so that visitors can climb "
        "the narrow stairs and look out over the sea as the keepers once did."),
}
GERMAN = (
    "Die Stadt liegt an einem breiten Fluss, und im Sommer sitzen die Menschen bis spät in der "
    "Nacht an seinem Ufer. Es gibt viele kleine Cafés, in denen man Kuchen essen und Kaffee "
    "trinken kann, und am Wochenende findet auf dem alten Marktplatz ein großer Markt statt.\n"
    "Die meisten Besucher kommen wegen der Altstadt mit ihren engen Gassen und den bunten "
    "Häusern. Viele Gebäude sind mehr als dreihundert Jahre alt und wurden nach dem Krieg "
    "sorgfältig wieder aufgebaut, so dass die Stadt heute wieder so aussieht wie früher.\n"
    "Wer länger bleibt, sollte eine Fahrt mit dem Schiff machen oder mit dem Fahrrad durch die "
    "Weinberge fahren. Im Herbst feiern die Dörfer rund um die Stadt ihre Weinfeste, und dann "
    "sind die Straßen voller Musik, Lachen und Gäste aus dem ganzen Land.")


def page(title: str, body: str) -> str:
    paras = "".join(f"<p>{p}</p>\n" for p in body.split("\n"))
    return (f"<html><head><title>{title}</title></head><body>"
            "<nav><a href='/'>Home</a> | <a href='/about'>About</a> | <a href='/contact'>Contact</a></nav>"
            f"<article><h1>{title}</h1>\n{paras}</article>"
            "<footer>Copyright 2024. All rights reserved.</footer></body></html>")


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    near = ARTICLES["bridges"].replace("two main cables", "two great cables").replace(
        "hundred years", "century")
    contact = ARTICLES["bread"] + ("\nQuestions about the recipe are welcome: write to "
                                   "baker.jones@example-bakery.com or call +1 (555) 123-4567.")
    boiler = ("<html><body><nav><a href='/'>Home</a> | <a href='/news'>News</a></nav>"
              "<footer>Copyright 2024. All rights reserved. Privacy policy.</footer></body></html>")
    web = [
        ("gardens", page("Gardens", ARTICLES["gardens"]), "https://example.org/gardens.html"),
        ("gardens-copy", page("Gardens", ARTICLES["gardens"]), "https://mirror.example.net/g.html"),
        ("bridges", page("Bridges", ARTICLES["bridges"]), "https://example.org/bridges.html"),
        ("bridges-near", page("Bridges", near), "https://example.com/bridges2.html"),
        ("bread", page("Bread", contact), "https://example.org/bread.html"),
        ("blocked", page("Gardens too", ARTICLES["gardens"] + " Extra."),
         "https://badsite.com/gardens.html"),
        ("german", page("Die Stadt", GERMAN), "https://example.de/stadt.html"),
        ("boilerplate", boiler, "https://example.org/nav.html"),
    ]
    write_raw("fixture-web", ({"id": i, "text": t, "format": "html", "url": u} for i, t, u in web),
              raw, "web")
    write_raw("fixture-prose", iter([{"id": "p0", "text": ARTICLES["lighthouses"],
                                      "format": "text", "url": "https://books.example/p0"}]),
              raw, "prose")
    out = tmp_path_factory.mktemp("clean")
    cfg = PipelineConfig(blocked_domains=("badsite.com",), use_integrated_lists=False, workers=1,
                         minhash_buckets=14)
    stats = run_pipeline(raw, out, cfg)
    docs = [json.loads(line) for f in sorted((out / "clean").glob("*.jsonl.gz"))
            for line in gzip.open(f, "rt")]
    return stats, {d["id"].split("/", 1)[1]: d for d in docs}, out


def test_each_stage_drops_what_it_should(cleaned):
    stats, docs, _ = cleaned
    kept = set(docs)
    assert "blocked" not in kept  # URL blocklist
    assert "german" not in kept  # language ID
    assert "boilerplate" not in kept  # nothing left after extraction / quality filters
    assert len({"gardens", "gardens-copy"} & kept) == 1  # exact duplicate
    assert len({"bridges", "bridges-near"} & kept) == 1  # near duplicate
    assert "bread" in kept and "p0" in kept
    p = stats["points"]
    assert p["url"]["docs"] == 7 and p["read"]["docs"] == 9
    assert p["exact_dedup"]["docs"] == p["quality"]["docs"] - 1
    assert p["near_dedup"]["docs"] == p["exact_dedup"]["docs"] - 1
    assert any("domain" in reasons for reasons in stats["drops"].values())


def test_pii_is_scrubbed(cleaned):
    _, docs, _ = cleaned
    text = docs["bread"]["text"]
    assert "baker.jones@example-bakery.com" not in text and "555) 123-4567" not in text
    assert "@example" in text and "<PHONE_NUMBER>" in text  # replaced, not deleted
    assert "Kneading develops gluten" in text


def test_stats_add_up_and_the_table_is_written(cleaned):
    stats, docs, out = cleaned
    p = stats["points"]
    for point in stats["order"]:
        assert p[point]["docs"] == sum(s["docs"] for s in p[point]["sources"].values())
    assert p["pii"]["docs"] == len(docs)
    # Every document read is either kept or dropped by exactly one step.
    dropped = sum(sum(r.values()) for r in stats["drops"].values())
    assert p["read"]["docs"] - p["pii"]["docs"] == dropped
    table = (out / "stats.md").read_text()
    assert "fixture-web" in table and "near_dedup" in table
    assert stats["scrubbed"] == {"emails": 1, "phones": 1}


def test_phone_and_id_scrubber_spares_dates_versions_and_numbers():
    from data.pipeline import ID_NUMBER, PHONE

    for pii in ("+1 (555) 123-4567", "+44 20 7946 0958", "(030) 1234-5678", "555-123-4567",
                "555.123.4567"):
        assert PHONE.search(f"call {pii} today"), pii
    for pii in ("123-45-6789", "4111 1111 1111 1111", "4111-1111-1111-1111"):
        assert ID_NUMBER.search(f"number {pii}."), pii
    for keep in ("on 2024-11-23 at 10:30", "Python 3.11.2", "ports 5432 8080 9090", "1850-1851",
                 "ISBN 978-3-16-148410-0", "version 1.2.3.4", "in 1999 and 2004 and 2010"):
        assert not PHONE.search(keep) and not ID_NUMBER.search(keep), keep
