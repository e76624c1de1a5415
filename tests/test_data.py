import http.server
import io
import json
import re
import tarfile
import threading
from pathlib import Path

import pytest

from conftest import LAB_DATA, SHARED_DATA, free_port, needs_lab_data
from loralab.data import (
    DataOptions,
    download_lab_sample,
    load_data,
    load_file,
    load_split,
    resolve_data_dir,
)
from loralab.errors import DataError


def write_csv(path: Path, rows, header=("review", "label"), sep=","):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=sep)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@needs_lab_data
def test_lab_sample_loads_with_its_sizes():
    data = load_data(LAB_DATA)
    assert len(data["train"]) == 2000 and len(data["eval"]) == 500
    assert sum(data["train"]["label"]) == 1040 and sum(data["eval"]["label"]) == 237
    assert data["train"][645]["text"].startswith("Brilliant execution in displaying once and for all")


@pytest.mark.skipif(not (SHARED_DATA / "imdb-extra").is_dir(), reason="no imdb-extra shards")
def test_four_shards_load_as_one_train_split():
    train = load_split(str(SHARED_DATA / "imdb-extra" / "aclimdb_train_*-of-04.csv"))
    assert len(train) == 25000
    assert sum(train["label"]) == 12500


@pytest.mark.parametrize("values,expected", [
    (["0", "1"], [0, 1]), (["neg", "pos"], [0, 1]), (["negative", "POSITIVE"], [0, 1]),
    (["false", "true"], [0, 1]), (["False", "True"], [0, 1]),
])
def test_label_spellings(tmp_path, values, expected):
    path = write_csv(tmp_path / "d.csv", [("bad film", values[0]), ("good film", values[1])])
    assert load_file(path)["label"] == expected


def test_every_format_gives_the_same_rows(tmp_path):
    import pandas as pd

    rows = [("a fine film, really", 1), ("dull\nand long", 0), ('"quoted" text', 1)]
    frame = pd.DataFrame(rows, columns=["review", "label"])
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_csv(tmp_path / "d.tsv", index=False, sep="\t")
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "d.parquet")
    for suffix in ("csv", "tsv", "jsonl", "parquet"):
        ds = load_file(tmp_path / f"d.{suffix}")
        assert list(zip(ds["text"], ds["label"])) == rows, suffix


def test_other_column_names(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("great", "pos")], header=("text", "sentiment"))
    ds = load_file(path, DataOptions(text_column="text", label_column="sentiment"))
    assert ds["label"] == [1]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="not found.*nope.csv"):
        load_file(tmp_path / "nope.csv")


def test_misspelt_column_lists_columns_found(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("x", 1)], header=("reviw", "label"))
    with pytest.raises(DataError) as err:
        load_file(path)
    assert "no column 'review'" in str(err.value) and "'reviw', 'label'" in str(err.value)
    assert "Did you mean 'reviw'" in str(err.value)


def test_a_label_training_never_saw_names_file_row_value_and_the_known_labels(tmp_path):
    train = write_csv(tmp_path / "train.csv", [("ok", 1), ("fine", 0)])
    evals = write_csv(tmp_path / "eval.csv", [("ok", 1), ("meh", "maybe")])
    with pytest.raises(DataError, match=r"eval\.csv: row 2: label 'maybe' in column 'label' is not one of the "
                                        r"training data's labels \('negative', 'positive'\)"):
        load_data(train=train, eval=evals)


@pytest.mark.parametrize("labels, names, ids", [
    ([1, 0, "pos", "Negative"], ("negative", "positive"), [1, 0, 1, 0]),  # the binary spellings
    ([3, 1, 4, 1, 2], ("1", "2", "3", "4"), [2, 0, 3, 0, 1]),           # integers, by value
    (["b", "a", "c", "a"], ("a", "b", "c"), [1, 0, 2, 0]),              # strings, alphabetically
])
def test_label_sets_and_their_order_come_from_the_training_data(tmp_path, labels, names, ids):
    path = write_csv(tmp_path / "d.csv", [(f"text {i}", label) for i, label in enumerate(labels)])
    ds = load_file(path)
    assert tuple(ds.features["label"].names) == names and ds["label"] == ids


def test_labels_option_fixes_the_order_of_ordinal_classes(tmp_path):
    order = ("very negative", "negative", "neutral", "positive", "very positive")
    rows = [(f"s{i}", name) for i, name in enumerate(reversed(order))]
    ds = load_file(write_csv(tmp_path / "d.csv", rows), DataOptions(labels=order))
    assert tuple(ds.features["label"].names) == order and ds["label"] == [4, 3, 2, 1, 0]


def test_one_class_is_an_error_and_a_rare_class_a_warning(tmp_path, caplog):
    one = write_csv(tmp_path / "one.csv", [("a", "x"), ("b", "x")])
    with pytest.raises(DataError, match="one.csv: every row has the label 'x'; a classifier needs at least two"):
        load_data(train=one, eval=one)
    rare = write_csv(tmp_path / "rare.csv", [(f"t{i}", "common") for i in range(20)] + [("r", "rare")])
    load_data(train=rare, eval=rare)
    assert "the class 'rare' has only 1 row(s)" in caplog.text


def test_empty_texts_are_named_and_can_be_dropped(tmp_path, caplog):
    path = write_csv(tmp_path / "d.csv", [("good", 1), ("   ", 0), ("bad", 0), ("", 1)])
    with pytest.raises(DataError, match=r"2 row\(s\) with empty or whitespace-only text.*rows 2, 4"):
        load_file(path)
    ds = load_file(path, DataOptions(drop_invalid=True))
    assert ds["text"] == ["good", "bad"] and ds["label"] == [1, 0]
    assert "dropped 2 row(s)" in caplog.text


def test_non_utf8_file_names_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("review,label\ngood,1\n".encode() + "caf\xe9,0\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"d\.csv: line 3 is not valid UTF-8"):
        load_file(path)


def test_empty_file_and_header_only(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match="empty.csv: the file is empty"):
        load_file(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("review,label\n")
    with pytest.raises(DataError, match="header.csv: the file has a header but no rows"):
        load_file(tmp_path / "header.csv")


def test_overlap_between_splits_warns_with_count(tmp_path, caplog):
    write_csv(tmp_path / "train.csv", [("same review", 1), ("only train", 0)])
    write_csv(tmp_path / "eval.csv", [("same review", 1), ("only eval", 0)])
    load_data(tmp_path)
    assert "1 eval row(s) also appear in the training data" in caplog.text


def test_data_source_order(tmp_path, monkeypatch):
    explicit, env, cache_home = tmp_path / "explicit", tmp_path / "env", tmp_path / "xdg"
    for folder in (explicit, env, cache_home / "loralab" / "imdb-lab"):
        folder.mkdir(parents=True)
        write_csv(folder / "train.csv", [("t", 1)])
        write_csv(folder / "eval.csv", [("e", 0)])
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    monkeypatch.setenv("LORALAB_DATA", str(env))
    assert resolve_data_dir(explicit) == explicit
    assert resolve_data_dir(None) == env
    monkeypatch.delenv("LORALAB_DATA")
    assert resolve_data_dir(None) == cache_home / "loralab" / "imdb-lab"


def _fake_archive(path: Path, pos: list[str], neg: list[str]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for label, texts in (("pos", pos), ("neg", neg)):
            for i, text in enumerate(texts):
                data = text.encode()
                info = tarfile.TarInfo(f"aclImdb/train/{label}/{i}_7.txt")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(f"aclImdb/test/{label}/0_1.txt")  # must be ignored
            info.size = 4
            tar.addfile(info, io.BytesIO(b"test"))


def test_download_rebuilds_the_sample_from_a_local_server(tmp_path, monkeypatch):
    # Names sort lexicographically: 0_7, 10_7, 11_7, 1_7, 2_7, ... as in aclImdb.
    pos = [f"positive review {i}" for i in range(12)]
    neg = [f"negative review {i}" for i in range(3)]
    served = tmp_path / "served"
    served.mkdir()
    _fake_archive(served / "aclImdb_v1.tar.gz", pos, neg)
    (tmp_path / "indices.json").write_text(json.dumps({"train": [1, 12], "eval": [3, 14]}))

    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/aclImdb_v1.tar.gz"
        dest = download_lab_sample(tmp_path / "cache", url=url, indices_file=tmp_path / "indices.json")
    finally:
        server.shutdown()
    train = load_file(dest / "train.csv")
    evals = load_file(dest / "eval.csv")
    # index 1 is the 2nd name in lexicographic order: 10_7.txt; index 3 is 1_7.txt
    assert train["text"] == ["positive review 10", "negative review 0"] and train["label"] == [1, 0]
    assert evals["text"] == ["positive review 1", "negative review 2"] and evals["label"] == [1, 0]
    assert not (dest / "aclImdb_v1.tar.gz").exists()


def test_download_failure_says_how_to_work_offline(tmp_path):
    with pytest.raises(DataError, match="LORALAB_DATA"):
        download_lab_sample(tmp_path, url=f"http://127.0.0.1:{free_port()}/none.tar.gz")


# ---------------------------------------------------------------------------------------
# Rows are 1-based data rows everywhere (#33)


def _csv(path, rows, header="review,label"):
    path.write_text(header + "\n" + "".join(f"{r}\n" for r in rows))
    return path


def test_after_drop_invalid_an_unseen_label_names_its_own_row(tmp_path, run_cli):
    train = _csv(tmp_path / "train.csv", ["good,1", "bad,0"])
    evals = _csv(tmp_path / "eval.csv", ["fine,1", '"",0', "odd,2"])  # row 2 dropped; the bad label is on row 3
    code, _, err = run_cli("data", "--train", train, "--eval", evals, "--drop-invalid")
    assert code == 2 and f"{evals}: row 3: label '2'" in err, err


@pytest.mark.parametrize("name, content, says", [
    ("bad.jsonl", '{"review": "a", "label": 1}\n{"review": "b", "label": 0\n{"review": "c", "label": 1}\n',
     "row 2 is not valid JSON"),
    ("list.jsonl", '{"review": "a", "label": 1}\n[1, 2]\n', "row 2 is a JSON list"),
    ("ragged.csv", "review,label\na,1\nb,0,extra\nc,1\n", "row 2 has 3 fields where the header has 2"),
    ("ragged.tsv", "review\tlabel\na\t1\nb\t0\nc\t1\textra\n", "row 3 has 3 fields"),
])
def test_a_malformed_row_is_named_once_by_its_data_row(tmp_path, run_cli, name, content, says):
    path = tmp_path / name
    path.write_text(content)
    code, _, err = run_cli("data", "--train", path, "--eval", path)
    assert code == 2 and f"{path}: {says}" in err, err
    assert err.count(str(path)) == 1, err  # loralab's message alone, not the parser's too


@pytest.mark.parametrize("label, says", [("[1]", "label [1] in column 'label' is not a class label"),
                                         ("0.5", "label 0.5 in column 'label' is not a class label")])
def test_a_jsonl_label_of_the_wrong_type_is_refused_not_a_new_class(tmp_path, label, says):
    path = tmp_path / "l.jsonl"
    path.write_text('{"review": "a", "label": 1}\n' f'{{"review": "b", "label": {label}}}\n')
    with pytest.raises(DataError, match=re.escape(f"{path}: row 2: {says}")):
        load_file(path)
    path.write_text('{"review": "a", "label": 1.0}\n{"review": "b", "label": 0}\n')  # a whole float is a label
    assert load_file(path)["label"] == [1, 0]


def test_a_numeric_review_is_said_not_to_be_text(tmp_path):
    path = tmp_path / "n.jsonl"
    path.write_text('{"review": "a", "label": 1}\n{"review": 5, "label": 0}\n')
    with pytest.raises(DataError, match=re.escape(f"{path}: row 2: the value 5 in column 'review' is not text")):
        load_file(path)


def test_limits_below_zero_or_leaving_one_class_are_refused(tmp_path, run_cli):
    train = _csv(tmp_path / "train.csv", [f"r{i},{int(i >= 38)}" for i in range(40)])
    evals = _csv(tmp_path / "eval.csv", ["a,0", "b,1"])
    code, _, err = run_cli("data", "--train", train, "--eval", evals, "--limit-train", -1)
    assert code == 2 and "argument --limit-train: must be at least 0, got -1" in err
    code, _, err = run_cli("data", "--train", train, "--eval", evals, "--limit-train", 2)
    assert code == 2 and "limited to 2 rows (--limit-train): every row has the label 'negative'" in err
    code, out, err = run_cli("data", "--train", train, "--eval", evals, "--limit-train", 0)
    assert code == 0 and "train: 40 rows" in out, err
