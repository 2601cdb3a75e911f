"""Feature labels: importing JSON and CSV label sets (and refusing bad ones), exporting them in the same shapes,
the user's labels winning over imported ones, atlases that hold labels only, old atlases loading, text search."""
from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import factories
import numpy as np
import pytest
import torch

from sae_core import SAEFormatError, SAEInputError, SparseAutoencoder, SparseCode, load_sae, save_sae
from sae_core.atlas import label_search
from sae_core.atlas.feature_atlas import Example, FeatureAtlas, update_label
from sae_core.atlas.label_files import MAX_LABEL_FILE_BYTES, read_label_file
from sae_core.atlas.label_import import atlas_labels, export_labels, import_label_file, import_labels
from sae_core.atlas.labels import IMPORTED_FILE, USER_FILE, ImportedLabel

REPO = Path(__file__).resolve().parents[1]
N = 64
CATEGORIES = ["object", "scene", "character", "composition", "color", "mood"]
WORDS = ["office", "supplies", "sunset", "river", "portrait", "grid", "neon", "calm", "dog", "tree", "glass", "sky"]


def tiny_sae(seed=0, hookpoint="unet.down_blocks.2.attentions.1") -> SparseAutoencoder:
    return factories.tiny_sae(16, N, 4, hookpoint=hookpoint, seed=seed, name=f"tiny{seed}")


@pytest.fixture
def saved_sae(tmp_path):
    save_sae(tiny_sae(), tmp_path / "sae" / "tiny.safetensors")
    return load_sae(tmp_path / "sae" / "tiny.safetensors")


def public_rows(seed=0, n=N) -> list[dict]:
    """A label set in the public shape, with random words, categories, confidences and mean activations."""
    rng = random.Random(seed)
    return [{"id": f, "label": " ".join(rng.sample(WORDS, 2)), "category": rng.choice(CATEGORIES),
             "confidence": rng.choice(["high", "medium", "low"]), "meanActivation": round(rng.uniform(1, 30), 2)}
            for f in rng.sample(range(n), n // 2)]


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------- import / export
def test_json_import_export_round_trip_keeps_every_field(tmp_path, saved_sae):
    rows = public_rows()
    report = import_label_file(tmp_path / "sae" / "tiny.atlas", saved_sae, write_json(tmp_path / "set.json", rows))
    assert report.created and report.merge.imported == len(rows) and report.labelled == len(rows)
    exported = json.loads(export_labels(tmp_path / "sae" / "tiny.atlas", "json"))
    assert exported == sorted(rows, key=lambda r: r["id"])
    # the labels remember where they came from
    imported = FeatureAtlas.load(tmp_path / "sae" / "tiny.atlas").imported
    assert {label.source for label in imported.values()} == {"file set.json"}


def test_csv_import_export_round_trip(tmp_path, saved_sae):
    rows = public_rows(seed=1)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "label", "category", "confidence"])
    for r in rows:
        writer.writerow([r["id"], r["label"] + ", with a comma", r["category"], r["confidence"]])
    (tmp_path / "mine.csv").write_text(out.getvalue())
    import_label_file(tmp_path / "sae" / "tiny.atlas", saved_sae, tmp_path / "mine.csv")
    text = export_labels(tmp_path / "sae" / "tiny.atlas", "csv")
    assert list(csv.reader(io.StringIO(text))) == list(csv.reader(io.StringIO(out.getvalue())))[:1] + sorted(
        list(csv.reader(io.StringIO(out.getvalue())))[1:], key=lambda r: int(r[0]))
    # and the exported CSV imports again to the same labels
    (tmp_path / "again.csv").write_text(text)
    again = read_label_file(tmp_path / "again.csv", N)
    first = read_label_file(tmp_path / "mine.csv", N)
    assert {f: (x.text, x.category, x.confidence) for f, x in again.items()} == \
        {f: (x.text, x.category, x.confidence) for f, x in first.items()}


def test_csv_without_header_and_with_two_columns(tmp_path):
    (tmp_path / "short.csv").write_text("3,fur\n\n7,\"tiger, stripes\"\n9,\n")
    labels = read_label_file(tmp_path / "short.csv", N)
    assert {f: x.text for f, x in labels.items()} == {3: "fur", 7: "tiger, stripes"}  # empty label: skipped
    (tmp_path / "two.csv").write_text("id,label\n5,sky\n")
    assert read_label_file(tmp_path / "two.csv", N)[5].category == ""


def test_an_atlas_labels_json_imports_too(tmp_path):
    labels = read_label_file(write_json(tmp_path / "labels.json", {"4": "sunset", "8": "river"}), N)
    assert {f: x.text for f, x in labels.items()} == {4: "sunset", 8: "river"}


@pytest.mark.parametrize("name, content, message", [
    ("ids.json", json.dumps([{"id": 64, "label": "x"}]), "id 64 exceeds the SAE's 64 features"),
    ("neg.json", json.dumps([{"id": -1, "label": "x"}]), "id -1 exceeds"),
    ("float.json", json.dumps([{"id": 1.5, "label": "x"}]), "id 1.5 is not a feature number"),
    ("bool.json", json.dumps([{"id": True, "label": "x"}]), "id True is not a feature number"),
    ("broken.json", '[{"id": 1, "label": "x"', "is not valid JSON \\(line 1"),
    ("nan.json", '[{"id": 1, "label": "x", "meanActivation": NaN}]', "not valid JSON"),
    ("object.json", json.dumps({"labels": [{"id": 1}]}), "must hold a JSON list"),
    ("items.json", json.dumps([{"id": 1, "label": "x"}, 5]), "item 1: must be an object"),
    ("twice.json", json.dumps([{"id": 1, "label": "a"}, {"id": 1, "label": "b"}]), "feature 1 is labelled twice"),
    ("long.json", json.dumps([{"id": 2, "label": "x" * 500}]), "item 0 \\(feature 2\\): a label has at most 120"),
    ("lines.json", json.dumps([{"id": 2, "label": "a\nb"}]), "control characters or line breaks"),
    ("conf.json", json.dumps([{"id": 2, "label": "a", "confidence": "sure"}]), "confidence 'sure' is not valid"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ("ids.csv", "id,label\n70,x\n", "line 2: id 70 exceeds the SAE's 64 features"),
    ("word.csv", "seven,x\n", "line 1: id 'seven' is not a feature number"),
    ("header.csv", "id,label,colour\n1,x,red\n", "the header must be id,label,category,confidence"),
    ("wide.csv", "1,a,b,c,d\n", "5 columns, at most 4"),
    ("nul.csv", "1,a\x00b\n", "contains NUL bytes"),
    ("labels.txt", "1,a\n", "must be a .json or .csv file"),
])
def test_bad_label_files_are_refused_with_a_clear_error(tmp_path, saved_sae, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(SAEInputError, match=message):
        import_label_file(tmp_path / "sae" / "tiny.atlas", saved_sae, path)
    assert not (tmp_path / "sae" / "tiny.atlas").exists()  # nothing was written


def test_binary_and_oversized_files_are_refused_before_parsing(tmp_path):
    (tmp_path / "bin.json").write_bytes(bytes(range(256)))
    with pytest.raises(SAEInputError, match="is not UTF-8 text"):
        read_label_file(tmp_path / "bin.json", N)
    big = tmp_path / "big.json"
    with open(big, "wb") as handle:
        handle.truncate(MAX_LABEL_FILE_BYTES + 1)
    with pytest.raises(SAEInputError, match="at most 8 MB"):
        read_label_file(big, N)
    with pytest.raises(SAEInputError, match="does not exist"):
        read_label_file(tmp_path / "gone.csv", N)


# ---------------------------------------------------------------- precedence
def test_a_label_the_user_wrote_wins_over_an_imported_one(tmp_path, saved_sae):
    folder = tmp_path / "sae" / "tiny.atlas"
    import_labels(folder, saved_sae, {3: ImportedLabel("office supplies", "object", "high", None, "set A")}, "set A")
    update_label(folder, 3, "stationery")
    atlas = FeatureAtlas.load(folder)
    assert atlas.label(3).text == "stationery" and atlas.label(3).source == "user"
    assert atlas.label(3).imported.text == "office supplies" and atlas.label(3).category == "object"
    # a later import of the same feature does not replace the user's label, and says so
    report = import_labels(folder, saved_sae, {3: ImportedLabel("desk", "object", "low", None, "set B"),
                                               4: ImportedLabel("pen", "object", "low", None, "set B")}, "set B")
    assert report.merge.shadowed == 1 and report.merge.replaced == 1
    assert "1 stay behind labels you wrote" in report.summary("tiny.atlas")
    atlas = FeatureAtlas.load(folder)
    assert atlas.label(3).text == "stationery" and atlas.label(4).text == "pen"
    assert json.loads(export_labels(folder, "json"))[0]["label"] == "stationery"
    # clearing the user's label shows the imported one again
    update_label(folder, 3, "")
    assert FeatureAtlas.load(folder).label(3).text == "desk"
    # the sidebar's labels and the imports live in separate files
    assert json.loads((folder / USER_FILE).read_text()) == {}
    assert set(json.loads((folder / IMPORTED_FILE).read_text())["labels"]) == {"3", "4"}


def test_replace_drops_earlier_imports_but_never_the_users(tmp_path, saved_sae):
    folder = tmp_path / "sae" / "tiny.atlas"
    import_labels(folder, saved_sae, {1: ImportedLabel("a", source="s1"), 2: ImportedLabel("b", source="s1")}, "s1")
    update_label(folder, 5, "mine")
    report = import_labels(folder, saved_sae, {2: ImportedLabel("c", source="s2")}, "s2", replace=True)
    assert report.merge.dropped == 1
    atlas = FeatureAtlas.load(folder)
    assert {f: x.text for f, x in atlas.shown_labels().items()} == {2: "c", 5: "mine"}


def test_labels_of_another_sae_are_refused(tmp_path, saved_sae):
    folder = tmp_path / "sae" / "tiny.atlas"
    import_labels(folder, saved_sae, {1: ImportedLabel("a")}, "s")
    with pytest.raises(SAEInputError, match="was made for another SAE"):
        import_labels(folder, tiny_sae(seed=5), {1: ImportedLabel("b")}, "s")
    with pytest.raises(SAEInputError, match="its labels do not describe this one"):
        atlas_labels(folder, tiny_sae(seed=5))


# ---------------------------------------------------------------- atlases
def test_an_atlas_with_labels_only_grows_with_recorded_runs(tmp_path, saved_sae):
    folder = tmp_path / "sae" / "tiny.atlas"
    import_labels(folder, saved_sae, {3: ImportedLabel("fur", source="s")}, "s")
    atlas = FeatureAtlas.load(folder)
    assert atlas.next_id == 0 and atlas.summary()["total"] == 1 and atlas.feature(3)["recorded"] is False
    # SAE Build Atlas may choose top_n on an atlas that holds labels only
    grown = FeatureAtlas.open_for(folder, saved_sae, top_n=2)
    assert grown.top_n == 2 and grown.label(3).text == "fur"
    grown.add(Example(SparseCode(torch.tensor([[[2.0]]]), torch.tensor([[[9]]])), prompt="p",
                      thumbnail=np.zeros((8, 8, 3), np.uint8)))
    grown.save(folder)
    again = FeatureAtlas.load(folder)
    assert again.next_id == 1 and again.label(3).text == "fur" and [r["id"] for r in again.summary()["features"]] == [
        9, 3]
    with pytest.raises(SAEInputError, match="keeps the top 2 examples per feature, not 4"):
        FeatureAtlas.open_for(folder, saved_sae, top_n=4)


def test_saving_a_built_atlas_keeps_labels_written_meanwhile(tmp_path, saved_sae):
    """SAE Build Atlas loads, adds and saves; a label saved in the sidebar in between must survive."""
    folder = tmp_path / "sae" / "tiny.atlas"
    atlas = FeatureAtlas.open_for(folder, saved_sae, top_n=2)
    atlas.save(folder)
    building = FeatureAtlas.open_for(folder, saved_sae, top_n=2)
    update_label(folder, 7, "written meanwhile")
    building.add(Example(SparseCode(torch.tensor([[[2.0]]]), torch.tensor([[[9]]]))))
    building.save(folder)
    assert FeatureAtlas.load(folder).labels == {7: "written meanwhile"}


def test_an_atlas_written_before_labels_could_be_imported_still_loads(tmp_path):
    folder = tmp_path / "old.atlas"
    atlas = FeatureAtlas(N, top_n=1)
    atlas.add(Example(SparseCode(torch.tensor([[[1.0]]]), torch.tensor([[[3]]]))))
    atlas.save(folder)
    (folder / USER_FILE).write_text(json.dumps({"3": "stripes", "12": "fur"}))  # the old layout, as written before
    loaded = FeatureAtlas.load(folder)
    assert loaded.labels == {3: "stripes", 12: "fur"} and loaded.imported == {}
    assert loaded.feature(12)["label"] == "fur" and loaded.label(3).source == "user"
    assert json.loads(export_labels(folder, "json")) == [
        {"id": 3, "label": "stripes", "category": "", "confidence": ""},
        {"id": 12, "label": "fur", "category": "", "confidence": ""}]


@pytest.mark.parametrize("content", ['{"3": 5}', "[1]", '{"x": "a"}', '{"99": "a"}', "{nope"])
def test_a_damaged_labels_file_is_a_clear_format_error(tmp_path, content):
    folder = tmp_path / "x.atlas"
    FeatureAtlas(N).save(folder)
    (folder / USER_FILE).write_text(content)
    with pytest.raises(SAEFormatError, match="labels"):
        FeatureAtlas.load(folder)


# ---------------------------------------------------------------- search
PLANTED = {
    11: ("tiger stripes", "object", "high"),
    12: ("orange tiger stripes on fur", "object", "medium"),
    13: ("tiger", "character", "high"),
    14: ("striped shirt", "object", "high"),
    15: ("cartoon style drawing", "composition", "high"),
    16: ("cartoonish characters", "character", "low"),
    17: ("zebra stripes", "object", "low"),
}


def planted_atlas(tmp_path, saved_sae, noise: int = 40):
    """The planted labels among random ones built from words that never match the queries below."""
    rng = random.Random(3)
    rows = {f: ImportedLabel(" ".join(rng.sample(WORDS, 2)), rng.choice(["texture", "lighting"]), "high", None,
                             "noise")
            for f in rng.sample([f for f in range(N) if f not in PLANTED], noise)}
    rows.update({f: ImportedLabel(t, c, conf, None, "planted") for f, (t, c, conf) in PLANTED.items()})
    folder = tmp_path / "sae" / "tiny.atlas"
    import_labels(folder, saved_sae, rows, "planted")
    return folder


def test_text_search_ranks_the_planted_labels(tmp_path, saved_sae):
    labels = atlas_labels(planted_atlas(tmp_path, saved_sae), saved_sae)
    ranked = label_search.rank(labels, "tiger stripes")
    # both words as a phrase (6, high) > the same at medium confidence (5.1) > one whole word (2) > one whole word at
    # low confidence (1.4) > a word that only begins with a query word ("striped": 1)
    assert [m.feature for m in ranked] == [11, 12, 13, 17, 14]
    assert ranked[0].score > ranked[1].score > ranked[2].score > ranked[3].score > ranked[4].score > 0
    assert [m.feature for m in label_search.rank(labels, "cartoon", top_n=1)] == [15]
    assert [m.feature for m in label_search.rank(labels, "Cartoons")] == [15, 16]  # plural and case ignored
    # a word of the label and the category (3 x 0.7) > the category alone (1)
    assert [m.feature for m in label_search.rank(labels, "character")] == [16, 13]
    assert label_search.rank(labels, "submarine") == []
    with pytest.raises(SAEInputError, match="the query has no words"):
        label_search.rank(labels, " ,; ")
    table = label_search.matches_table(label_search.rank(labels, "tiger stripes"), "t")
    assert "tiger stripes (object, high)" in table.splitlines()[2]
    chart = np.asarray(label_search.matches_chart(label_search.rank(labels, "tiger"), "t"))
    assert chart.shape[0] > 60 and chart.std() > 0


def test_sidebar_search_matches_labels_categories_and_ids(tmp_path, saved_sae):
    atlas = FeatureAtlas.load(planted_atlas(tmp_path, saved_sae))
    search = lambda q, **kw: [r["id"] for r in atlas.summary(query=q, sort="id", **kw)["features"]]  # noqa: E731
    assert search("tiger stripes") == [11, 12]         # every word, as words of the label
    assert search("strip") == [11, 12, 14, 17]         # beginnings of words
    assert search("composition") == [15]               # category
    assert search("#13") == search("13") == [13]       # id
    assert search("cartoon char") == [16]
    assert [r["id"] for r in atlas.summary(query="tiger", sort="relevance")["features"]] == [11, 13, 12]
    rows = atlas.summary(query="cartoon")["features"]
    assert rows[0]["category"] == "composition" and rows[0]["source"] == "planted"
    assert atlas.summary(all_features=True)["total"] == N


# ---------------------------------------------------------------- command line
def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "sae_core", "labels", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def test_command_line_imports_labels_for_every_sae_of_a_folder_and_exports_them(tmp_path):
    from checkpoint_writers import write_unbox

    repo = tmp_path / "models" / "sae" / "surokpro2__sdxl-saes"
    hooks = {"down.2.1": "unet.down_blocks.2.attentions.1", "up.0.1": "unet.up_blocks.0.attentions.1"}
    for i, hook in enumerate(hooks.values()):
        write_unbox(repo, hook=hook, d=16, n=N, k=4, seed=i)
    labels = tmp_path / "labels"
    labels.mkdir()
    for i, block in enumerate(hooks):
        write_json(labels / f"{block}.json", public_rows(seed=10 + i))
    result = _cli("import", "--sae", str(repo), "--file", str(labels / "{block}.json"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(f"{N // 2} labels imported") == 2 and "previews: none" in result.stdout
    for i, hook in enumerate(hooks.values()):
        run = next(repo.glob(f"{hook}_*")) / "final"
        out = tmp_path / f"{i}.json"
        result = _cli("export", "--sae", str(run), "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert json.loads(out.read_text()) == sorted(public_rows(seed=10 + i), key=lambda r: r["id"])
    # errors are one line, naming what is wrong
    write_json(labels / "bad.json", [{"id": 9999, "label": "x"}])
    result = _cli("import", "--sae", str(next(repo.glob("unet.down*")) / "final"), "--file", str(labels / "bad.json"))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "id 9999 exceeds" in result.stderr


def _fill_cache(cache: Path, repo_id: str, files: dict[str, str], kind: str = "datasets") -> None:
    """A Hugging Face cache entry laid out by hand: refs/main -> snapshots/<commit>/..."""
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    entry = cache / f"{kind}--{repo_id.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    for name, text in files.items():
        target = entry / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def test_command_line_imports_a_hub_file_from_the_offline_cache(tmp_path):
    save_sae(tiny_sae(), tmp_path / "tiny.safetensors")
    rows = public_rows(seed=4)
    _fill_cache(tmp_path / "hf", "someone/feature-labels", {"sets/down.2.1.json": json.dumps(rows)})
    env = {"HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = _cli("import", "--sae", str(tmp_path / "tiny.safetensors"), "--hub-repo", "someone/feature-labels",
                  "--hub-path", "sets/{block}.json", env=env)
    assert result.returncode == 0, result.stderr
    assert "from hub someone/feature-labels/sets/down.2.1.json" in result.stdout
    assert json.loads(export_labels(tmp_path / "tiny.atlas", "json")) == sorted(rows, key=lambda r: r["id"])
    result = _cli("import", "--sae", str(tmp_path / "tiny.safetensors"), "--hub-repo", "someone/feature-labels",
                  "--hub-path", "sets/missing.json", env=env)
    assert result.returncode == 2 and "could not get sets/missing.json" in result.stderr and "offline" in result.stderr
