"""Write a synthetic corpus in the Wikipedia dataset's schema (one article per record: `title`, `text`).

    python scripts/make_synthetic_wiki.py --num_articles 3000 --output data/synthetic_wiki.jsonl
    python scripts/make_synthetic_wiki.py --num_articles 3000 --people 250 --output demo_run/synthetic_wiki.jsonl

The model hub and Wikipedia are out of reach offline, so the tests, the benchmarks and the demo write
their own articles. The text is not Wikipedia: it is generated from a small fixed "world" (countries with
capitals, languages and currencies; cities on rivers; people with professions and fields) so that the
same facts recur across articles and a small masked LM can learn them. Articles look like the dataset's:
paragraphs separated by blank lines, section headings on lines of their own, and the abbreviations,
initials and decimals ("Dr.", "U.S.", "J. R.", "3.5 km") that trip naive sentence splitters.

Writes JSON lines (.jsonl) or parquet (.parquet), chosen by the output's extension.
"""

import argparse
import json
import random
from pathlib import Path

from core.errors import InputError, reports_errors

COUNTRIES = [  # name, demonym, language, currency
    ("Aldoria", "Aldorian", "Aldorese", "crown"), ("Benmark", "Benmarkish", "Benmarkic", "mark"),
    ("Corvania", "Corvanian", "Corvan", "florin"), ("Delmora", "Delmoran", "Delmoric", "ducat"),
    ("Estavia", "Estavian", "Estavic", "lira"), ("Fenwick", "Fenwickian", "Fennic", "pound"),
    ("Galdor", "Galdorian", "Galdic", "talent"), ("Hespera", "Hesperan", "Hesperic", "dinar"),
    ("Istria Nova", "Istrian", "Istro", "guilder"), ("Jorvik", "Jorvish", "Norric", "krona"),
    ("Kalmar", "Kalmarese", "Kalmaric", "rupee"), ("Lorania", "Loranian", "Loranese", "peso"),
]
CITY_STEMS = ["north", "river", "stone", "oak", "salt", "iron", "bright", "wolf", "ash", "green", "high",
              "east", "mill", "bridge", "black", "fair", "gold", "long", "red", "west", "cold", "deep"]
CITY_ENDS = ["ford", "ham", "ton", "burg", "wick", "port", "field", "vale", "mouth", "stead"]
RIVERS = ["Avon", "Lethe", "Marrow", "Silvan", "Tamber", "Udra", "Velka", "Wend", "Yarrow", "Zell"]
FIRST = ["Anna", "Boris", "Clara", "David", "Elena", "Felix", "Grace", "Henry", "Irene", "James", "Karen",
         "Louis", "Maria", "Nikolai", "Olivia", "Peter", "Rosa", "Samuel", "Teresa", "Victor", "Walter"]
LAST = ["Abbot", "Bellamy", "Carver", "Dunmore", "Ellery", "Fairbank", "Garrow", "Holloway", "Ingram",
        "Jessop", "Kettering", "Lindqvist", "Marchetti", "Novak", "Okafor", "Petrov", "Quinlan", "Rourke"]
JOBS = [  # occupation, field, institution kind
    ("physicist", "physics", "institute"), ("chemist", "chemistry", "laboratory"),
    ("historian", "history", "archive"), ("composer", "music", "conservatory"),
    ("painter", "painting", "academy"), ("botanist", "botany", "garden"),
    ("economist", "economics", "bank"), ("architect", "architecture", "school"),
    ("mathematician", "mathematics", "university"), ("novelist", "literature", "library"),
]
INDUSTRY = ["shipbuilding", "textiles", "mining", "fishing", "printing", "brewing", "banking", "glassmaking"]


def build_world(rng):
    cities = []
    names = {s.capitalize() + e for s in CITY_STEMS for e in CITY_ENDS}
    for name in sorted(rng.sample(sorted(names), 6 * len(COUNTRIES))):
        cities.append({"name": name, "country": rng.randrange(len(COUNTRIES)), "river": rng.choice(RIVERS),
                       "founded": rng.randrange(900, 1700), "industry": rng.choice(INDUSTRY),
                       "population": rng.randrange(20, 900) * 1000})
    capitals = {}
    for c in cities:
        capitals.setdefault(c["country"], c["name"])
    return cities, capitals


def new_person(rng, cities, names=None):
    """A person's facts (drawn in the order the articles once drew them inline). `names`: names taken."""
    while True:
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        if names is None or name not in names:
            break
    he, his = rng.choice([("He", "his"), ("She", "her")])
    city = rng.choice(cities)
    job = rng.choice(JOBS)
    born = rng.randrange(1800, 1990)
    died = born + rng.randrange(45, 95)
    mentor = f"Dr. {rng.choice(FIRST)[0]}. {rng.choice(LAST)}"
    return {
        "name": name, "he": he, "his": his, "city": city, "job": job, "born": born, "died": died, "mentor": mentor,
        "age": rng.randrange(12, 19), "moved": f"{rng.randrange(2, 90)}.{rng.randrange(10)}",
        "left_school": born + rng.randrange(15, 20), "joined": born + rng.randrange(22, 35),
        "us_years": rng.randrange(2, 12), "works": rng.randrange(3, 60), "died_in": rng.choice(cities)["name"],
    }


def city_facts(rng, city):
    """A city's facts beyond build_world's (drawn in the order the articles once drew them inline)."""
    return {"bridge": city["founded"] + rng.randrange(50, 300),
            "area": f"{rng.randrange(10, 400)}.{rng.randrange(10)}", "elevation": rng.randrange(2, 900)}


def person_article(p, capitals):
    """(title, paragraphs): a paragraph is a heading (str) or a list of sentences."""
    name, he, his, city = p["name"], p["he"], p["his"], p["city"]
    country, demonym, language, _ = COUNTRIES[city["country"]]
    job, fieldname, place = p["job"]
    capital = capitals[city["country"]]
    paras = [
        [f"{name} ({p['born']} – {p['died']}) was a {demonym} {job} known for work in {fieldname}.",
         f"{he} was born in {city['name']}, a city on the {city['river']} river in {country}.",
         f"{he} spoke {language} and studied {fieldname} under {p['mentor']} in {capital}."],
        "Early life",
        [f"{his.capitalize()} father worked in {city['industry']} in {city['name']}.",
         f"At the age of {p['age']}, {his} family moved {p['moved']} km to the east.",
         f"{he} left school at 4 p.m. one day in {p['left_school']} and never returned."],
        "Career",
        [f"In {p['joined']}, {name.split()[0]} joined the {fieldname} {place} of {capital}.",
         f"{he} later worked for the U.S. Office of {fieldname.capitalize()} for {p['us_years']} years.",
         f"As a {job}, {he.lower()} published {p['works']} works."],
        [f"{he} died in {p['died_in']} in {p['died']}."],
    ]
    return name, paras


def city_article(city, facts, capitals):
    """(title, paragraphs): a paragraph is a heading (str) or a list of sentences."""
    country, demonym, language, currency = COUNTRIES[city["country"]]
    is_capital = capitals[city["country"]] == city["name"]
    role = f"the capital of {country}" if is_capital else f"a city in {country}"
    paras = [
        [f"{city['name']} is {role}, on the {city['river']} river.",
         f"It had a population of {city['population']:,} in the 2011 census.",
         f"Most people in {city['name']} speak {language} and pay in the {demonym} {currency}."],
        "History",
        [f"{city['name']} was founded in {city['founded']}.",
         f"Its economy grew with {city['industry']} in the {city['founded'] // 100 + 2}th century, and the "
         f"{city['river']} bridge opened in {facts['bridge']}."],
        "Geography",
        [f"The city covers {facts['area']} square km at an elevation of {facts['elevation']} m.",
         f"The {city['river']} flows through {city['name']} towards the sea."],
    ]
    return city["name"], paras


def reshuffle(rng, paras):
    """Another telling of the same facts: each paragraph's sentences in a new order and some left out
    (never the article's first sentence), so that articles about one entity share facts, rarely lines."""
    out = []
    for k, para in enumerate(paras):
        if isinstance(para, str):
            out.append(para)
            continue
        head = para[:1] if k == 0 else []
        rest = [x for x in para[len(head):] if rng.random() < 0.75]
        rng.shuffle(rest)
        out.append(head + rest)
    # a heading whose section lost every sentence goes too
    return [p for i, p in enumerate(out) if not (isinstance(p, str) and (i + 1 == len(out) or not out[i + 1]))
            and p != []]


def country_article(rng, index, cities, capitals):
    country, demonym, language, currency = COUNTRIES[index]
    towns = [c["name"] for c in cities if c["country"] == index]
    paras = [
        [f"{country} is a country whose capital is {capitals[index]}.",
         f"Its people are called {demonym}s, its official language is {language}, and its currency is the "
         f"{demonym} {currency}."],
        "Cities",
        [f"{t} is a city in {country}." for t in towns[:6]],
    ]
    return country, paras


def generate(num_articles, seed=0, people=None):
    """Yield `num_articles` dicts with `title` and `text`, deterministically from `seed`.

    people=None: every person article is about a new person, and a city's area, elevation and bridge are
    drawn anew in each article. people=N: a fixed population of N people, and fixed facts for every city,
    told again in each article about them (sentences reordered, some left out), so that every fact,
    numbers included, can be learnt from the other articles: a model that trains longer knows more."""
    rng = random.Random(seed)
    cities, capitals = build_world(random.Random(1234))  # one fixed world, whatever the seed
    if people:
        world = random.Random(4321)
        facts = {c["name"]: city_facts(world, c) for c in cities}
        names = set()
        population = []
        for _ in range(min(people, len(FIRST) * len(LAST))):
            population.append(new_person(world, cities, names))
            names.add(population[-1]["name"])
    for i in range(num_articles):
        kind = rng.random()
        if kind < 0.7:
            title, paras = person_article(rng.choice(population) if people else new_person(rng, cities), capitals)
        elif kind < 0.95:
            city = rng.choice(cities)
            title, paras = city_article(city, facts[city["name"]] if people else city_facts(rng, city), capitals)
        else:
            title, paras = country_article(rng, rng.randrange(len(COUNTRIES)), cities, capitals)
        if people:
            paras = reshuffle(rng, paras)
        text = "\n\n".join(p if isinstance(p, str) else " ".join(p) for p in paras)
        yield {"id": str(i), "title": title, "text": text}


def write(records, output):
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    records = list(records)
    if output.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), output)
    else:
        with open(output, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return len(records)


@reports_errors
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_articles", type=int, default=3000, help="articles to write")
    parser.add_argument("--output", default="data/synthetic_wiki.jsonl", help=".jsonl or .parquet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--people",
        type=int,
        default=0,
        help="0: a new person in every person article; N: a fixed population of N people and fixed city facts, "
        "retold across articles (facts a model can learn; the demo's corpus)",
    )
    args = parser.parse_args(argv)
    if args.num_articles < 1:
        raise InputError("--num_articles must be at least 1")
    n = write(generate(args.num_articles, args.seed, people=args.people or None), args.output)
    print(f"wrote {n} articles to {args.output}")


if __name__ == "__main__":
    main()
