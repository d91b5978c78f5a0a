"""scripts/extract_wikipedia.py: splitting, filtering, sampling, packing, the dump and its stats, bad input.

All offline: sources are synthetic articles written by make_synthetic_wiki or small in-memory datasets.
"""

import collections
import json

import datasets
import pytest

from conftest import run_main, run_script
from scripts import extract_wikipedia as ew, make_synthetic_wiki

SCRIPT = "scripts/extract_wikipedia.py"


@pytest.fixture(autouse=True)
def offline_cache(tmp_path, monkeypatch):
    """Scripts run by a test cache their Arrow files under tmp_path and never try the network."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The same 300 synthetic articles as JSON lines and as parquet."""
    folder = tmp_path_factory.mktemp("corpus")
    records = list(make_synthetic_wiki.generate(300, seed=1))
    for name in ("wiki.jsonl", "wiki.parquet"):
        make_synthetic_wiki.write(records, folder / name)
    return folder


def in_memory(texts):
    return datasets.Dataset.from_list([{"title": f"Article {i}", "text": t} for i, t in enumerate(texts)])


def read_lines(path):
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return text.splitlines()


# ---- splitting and filtering ----


@pytest.mark.parametrize(
    "text, sentences",
    [
        ("Dr. Smith went to Paris. He stayed a week.", ["Dr. Smith went to Paris.", "He stayed a week."]),
        ("She worked for the U.S. Navy for years. Then she retired.",
         ["She worked for the U.S. Navy for years.", "Then she retired."]),
        ("He moved to the U.S. He later returned.", ["He moved to the U.S.", "He later returned."]),
        ("The talk began at 4 p.m. on Friday. It ran late.", ["The talk began at 4 p.m. on Friday.", "It ran late."]),
        ("The river is 3.5 km long. It is 0.25 km wide.", ["The river is 3.5 km long.", "It is 0.25 km wide."]),
        ("J. R. R. Tolkien wrote it. He was born in 1892.", ["J. R. R. Tolkien wrote it.", "He was born in 1892."]),
        ("Is it true? Yes! It is.", ["Is it true?", "Yes!", "It is."]),
        # sentencex alone keeps "499 m. The" together ("m." as in "m. 1950", married); the script splits it.
        ("The peak rises to 499 m. The river starts there.", ["The peak rises to 499 m.", "The river starts there."]),
        ("Anna (m. 1950) had two sons. Both were poets.", ["Anna (m. 1950) had two sons.", "Both were poets."]),
        ("The wall is 3 m. high in parts.", ["The wall is 3 m. high in parts."]),
    ],
)
def test_splitter_keeps_abbreviations_decimals_and_initials_whole(text, sentences):
    assert ew.split_sentences(text) == sentences


def test_headings_blank_lines_and_stray_whitespace_are_dropped():
    text = (
        "Anna Abbot was a chemist. She lived in Oakford.\n\n"
        "Early life\n\n"
        "  See also  \r\n"
        "one two three four five six seven eight nine ten\n"  # 10 words, unpunctuated: a heading
        "one two three four five six seven eight nine ten eleven\n"  # 11 words: prose
        'He said "It is over."\n'  # ends like a sentence inside its quotes
        "The city\tlies\u00a0on the  river.\n\n\n"
    )
    assert ew.split_sentences(text) == [
        "Anna Abbot was a chemist.",
        "She lived in Oakford.",
        "one two three four five six seven eight nine ten eleven",
        'He said "It is over."',
        "The city lies on the river.",
    ]
    assert ew.is_heading("Early life") and ew.is_heading("See also")
    assert not ew.is_heading("He died in 1990.")


def test_min_words_filter_is_exact():
    text = "Two words. Now three words. This has four words."
    assert ew.article_sentences(text, min_words=3) == ["Now three words.", "This has four words."]
    assert ew.article_sentences(text, min_words=4) == ["This has four words."]
    assert ew.article_sentences(text, min_words=1) == ["Two words.", "Now three words.", "This has four words."]


# ---- sampling ----


def test_sampling_is_seeded_and_without_replacement():
    a = ew.sample_indices(10_000, 500, seed=0)
    assert len(a) == 500 and len(set(a.tolist())) == 500
    assert a.min() >= 0 and a.max() < 10_000
    assert list(a) == sorted(a)
    assert list(a) == list(ew.sample_indices(10_000, 500, seed=0))
    assert list(a) != list(ew.sample_indices(10_000, 500, seed=1))
    assert list(ew.sample_indices(7, 20, seed=0)) == list(range(7))  # fewer than asked: all of them


# ---- packing ----


def test_pack_respects_the_word_limit():
    sentences = ["a b c.", "d e f.", "g h i j.", "k l m.", "n o p q r s t u v w x y.", "z."]  # 3 3 4 3 12 1 words
    lines = ew.pack(sentences, max_words=6)
    # 3 + 3 fills a line exactly; 4 + 3 would be one too many; the 12-word sentence stays alone.
    assert lines == ["a b c. d e f.", "g h i j.", "k l m.", "n o p q r s t u v w x y.", "z."]
    assert " ".join(lines) == " ".join(sentences)  # nothing lost, order kept
    assert ew.pack(sentences, max_words=100) == [" ".join(sentences)]


def test_packing_never_crosses_articles(tmp_path):
    # Each article repeats its own marker word; a packed line holding two markers crossed an article boundary.
    markers = ("alpha", "beta", "gamma")
    texts = [" ".join(f"Sentence {j} of {marker} is here." for j in range(7)) for marker in markers]
    output = tmp_path / "packed.txt"
    stats = ew.extract(in_memory(texts), [0, 1, 2], output, min_words=3, pack_words=12)
    lines = read_lines(output)
    assert all(sum(marker in line for marker in markers) == 1 for line in lines)
    assert all(ew.n_words(line) <= 12 for line in lines)
    # 7 sentences of 6 words per article pack two to a line: 4 lines each.
    assert stats["lines"] == len(lines) == 12 and stats["sentences_kept"] == 21
    assert stats["words"] == sum(map(ew.n_words, lines)) == 126


# ---- the dump and its stats ----


def test_jsonl_and_parquet_give_the_same_dump_and_stats_match_it(corpus, tmp_path):
    runs = {}
    for ext in ("jsonl", "parquet"):
        output = tmp_path / ext / "dump.txt"
        run_main(ew.main, "--source", corpus / f"wiki.{ext}", "--num_articles", 120, "--seed", 3,
                   "--output", output, "--num_proc", 1, check=True)
        runs[ext] = output
    dump = runs["jsonl"].read_bytes()
    assert dump == runs["parquet"].read_bytes()

    lines = read_lines(runs["jsonl"])
    stats = json.loads(ew.stats_path(runs["jsonl"]).read_text())
    assert ew.stats_path(runs["jsonl"]).name == "dump.stats.json"
    assert stats["articles"] == 120 and stats["articles_available"] == 300
    assert stats["lines"] == stats["sentences_kept"] == len(lines) == dump.count(b"\n")
    assert stats["sentences_seen"] >= stats["sentences_kept"]
    assert stats["words"] == sum(len(line.split()) for line in lines)
    histogram = collections.Counter(len(line.split()) for line in lines)
    assert {int(k): v for k, v in stats["sentence_length_histogram"].items()} == histogram
    assert all(line and line == " ".join(line.split()) and len(line.split()) >= 3 for line in lines)
    assert stats["args"]["num_articles"] == 120 and stats["args"]["seed"] == 3


def test_a_different_seed_takes_different_articles(corpus, tmp_path):
    dumps = []
    for seed in (3, 4):
        output = tmp_path / f"dump{seed}.txt"
        run_main(ew.main, "--source", corpus / "wiki.jsonl", "--num_articles", 50, "--seed", seed,
                   "--output", output, check=True)
        dumps.append(output.read_bytes())
    assert dumps[0] != dumps[1]


def test_cli_packs_and_filters_as_asked(corpus, tmp_path):
    output = tmp_path / "packed.txt"
    run_script(SCRIPT, "--source", corpus / "wiki.parquet", "--num_articles", 40, "--min_words", 6,
               "--pack_words", 30, "--output", output, "--num_proc", 2, check=True)
    lines = read_lines(output)
    stats = json.loads(ew.stats_path(output).read_text())
    assert stats["lines"] == len(lines) < stats["sentences_kept"]  # sentences were joined
    assert min(map(int, stats["sentence_length_histogram"])) >= 6
    assert stats["words"] == sum(len(line.split()) for line in lines)
    assert max(len(line.split()) for line in lines) <= max(30, max(map(int, stats["sentence_length_histogram"])))
    assert stats["args"]["pack_words"] == 30 and stats["args"]["min_words"] == 6


def test_several_sources_and_fewer_articles_than_asked(corpus, tmp_path):
    output = tmp_path / "dump.txt"
    proc = run_main(ew.main, "--source", corpus / "wiki.jsonl", corpus / "wiki.parquet",
                      "--output", output, check=True)  # default --num_articles: far more than the 600 given
    assert "fewer than --num_articles" in proc.stderr
    stats = json.loads(ew.stats_path(output).read_text())
    assert stats["articles"] == stats["articles_available"] == 600


def test_two_processes_write_what_one_does(tmp_path):
    articles = in_memory([r["text"] for r in make_synthetic_wiki.generate(400, seed=2)])
    indices = ew.sample_indices(len(articles), 300, seed=0)
    one = ew.extract(articles, indices, tmp_path / "one.txt", num_proc=1, batch_size=16)
    two = ew.extract(articles, indices, tmp_path / "two.txt", num_proc=2, batch_size=16)
    assert one == two and one["articles"] == 300
    assert (tmp_path / "one.txt").read_bytes() == (tmp_path / "two.txt").read_bytes()


def test_line_breaks_of_any_kind_end_a_line(tmp_path):
    # Whatever str.splitlines() takes for a line break splits the article's lines, so none can end up
    # inside a sentence of the dump; each fragment is then judged like any other line.
    text = (
        "It began in Oakford.\rIt went on to Ashfield.\u0085It ended\u2028in Millport by the river."
        "\x0cA tab\tis a space."
    )
    stats = ew.extract(in_memory([text, None]), [0, 1], tmp_path / "dump.txt")
    raw = (tmp_path / "dump.txt").read_text(encoding="utf-8")
    expected = ["It began in Oakford.", "It went on to Ashfield.", "in Millport by the river.", "A tab is a space."]
    assert raw.splitlines() == expected  # "It ended" went as a heading
    assert raw.count("\n") == stats["lines"] == 4 and stats["articles"] == 2


def test_a_failure_while_writing_leaves_no_output(tmp_path, monkeypatch):
    articles = in_memory([f"Article number {i} is here." for i in range(10)])
    calls = []

    def split_then_fail(text):
        calls.append(text)
        if len(calls) == 6:
            raise RuntimeError("disk on fire")
        return [text]

    monkeypatch.setattr(ew, "split_sentences", split_then_fail)
    with pytest.raises(RuntimeError):
        ew.extract(articles, range(10), tmp_path / "dump.txt", batch_size=2)
    assert len(calls) == 6  # five articles were already written out when it failed
    assert list(tmp_path.iterdir()) == []


# ---- bad input: one line on stderr, exit status 2, no output ----


def test_hub_names_and_paths_are_told_apart():
    assert not ew._is_local("wikimedia/wikipedia")
    assert ew._is_local("data/wiki.jsonl") and ew._is_local("wiki.csv")


@pytest.mark.parametrize(
    "name, content, extra, message",
    [
        ("missing.jsonl", None, [], "does not exist"),
        ("empty.jsonl", "", [], "is empty"),
        ("blank.jsonl", "\n\n", [], "holds no articles"),
        ("broken.jsonl", '{"title": "A", "text": \n', [], "not readable as .jsonl"),
        ("wiki.csv", "title,text\nA,Hello there.\n", [], "unsupported file type '.csv'"),
        ("fields.jsonl", '{"name": "A", "body": "Text."}\n', [], "no title or text field (its fields: name, body)"),
        ("wiki.jsonl", '{"title": "A", "text": "One two three."}\n', ["--num_articles", 0], "--num_articles must be"),
    ],
)
def test_bad_input_fails_with_one_line_and_no_output(tmp_path, name, content, extra, message):
    source = tmp_path / name
    if content is not None:
        source.write_text(content)
    output = tmp_path / "out" / "dump.txt"
    proc = run_main(ew.main, "--source", source, "--output", output, *extra)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("extract_wikipedia.py: error: ") and message in last, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not output.parent.exists() or list(output.parent.iterdir()) == []


def test_unwritable_output_fails_with_one_line(corpus, tmp_path):
    (tmp_path / "a_file").write_text("")
    output = tmp_path / "a_file" / "dump.txt"  # its folder would have to be a file
    proc = run_main(ew.main, "--source", corpus / "wiki.jsonl", "--num_articles", 5, "--output", output)
    assert proc.returncode == 2
    expected = f"extract_wikipedia.py: error: cannot write --output {output}: {output.parent} is a file, not a folder"
    assert proc.stderr.strip().splitlines()[-1] == expected
    assert "Traceback" not in proc.stderr


def test_unreachable_hub_dataset_fails_with_a_hint(tmp_path):
    output = tmp_path / "dump.txt"
    proc = run_main(ew.main, "--source", "someone/no-such-dataset", "--output", output)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("extract_wikipedia.py: error: could not load dataset 'someone/no-such-dataset'")
    assert "network" in last
    assert "Traceback" not in proc.stderr and not output.exists()
