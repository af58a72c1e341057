"""The model store: versions, aliases, manifests, checksums and signatures, on real files and memory://."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest

from conveyor.errors import ConveyorError, IntegrityError, InvalidInput, NotFound
from conveyor.store import ModelStore, Ref

FUNC = """
import pandas as pd
SIGNATURE = {"inputs": [{"name": "x", "type": "float"}], "outputs": [{"name": "y", "type": "float"}]}
def predict(frame):
    return pd.DataFrame({"y": frame["x"] * %s})
"""


@pytest.fixture
def func_file(tmp_path) -> Path:
    p = tmp_path / "double.py"
    p.write_text(FUNC % 2)
    return p


@pytest.fixture(params=["file", "memory"])
def store(request, tmp_path) -> ModelStore:
    uri = str(tmp_path / "store") if request.param == "file" else f"memory://{uuid.uuid4().hex}"
    return ModelStore(uri, signing_key="")


def test_add_load_predict_roundtrip(store, func_file):
    ref = store.add("double", f"{func_file}:predict", flavor="function")
    assert ref == Ref("double", 1)
    model = store.load("double")
    assert (model.name, model.version, model.flavor) == ("double", 1, "function")
    out = model.predict_records([{"x": 1.5}, {"x": -2}])
    assert out["y"].tolist() == [3.0, -4.0]


def test_versions_aliases_and_references(store, func_file):
    for _ in range(3):
        store.add("double", f"{func_file}:predict", flavor="function")
    assert store.versions("double") == [1, 2, 3]
    assert store.resolve("double").version == 3  # no production alias: the latest
    store.promote("double:2", "production")
    store.promote("double:1", "staging")
    assert store.resolve("double").version == 2
    assert store.resolve("double@staging").version == 1
    assert store.resolve("double:3").version == 3
    assert store.aliases("double") == {"production": 2, "staging": 1}
    assert store.names() == ["double"]


@pytest.mark.parametrize(
    ("ref", "error", "text"),
    [
        ("nosuch", NotFound, "no model named 'nosuch'"),
        ("double:9", NotFound, "has no version 9; versions: 1"),
        ("double@canary", NotFound, "has no alias 'canary'"),
        ("double:x", InvalidInput, "bad version"),
        ("dou ble", InvalidInput, "bad model reference"),
        ("double:0", InvalidInput, "bad version"),
    ],
)
def test_bad_references_are_precise(store, func_file, ref, error, text):
    store.add("double", f"{func_file}:predict", flavor="function")
    with pytest.raises(error, match=text):
        store.load(ref)


def test_manifest_is_written_last_and_a_version_without_it_does_not_exist(tmp_path, func_file):
    store = ModelStore(tmp_path / "s")
    store.add("double", f"{func_file}:predict", flavor="function")
    (tmp_path / "s" / "double" / "2").mkdir()  # a crashed add: files but no manifest
    (tmp_path / "s" / "double" / "2" / "model.py").write_text("garbage")
    assert store.versions("double") == [1]
    assert store.add("double", f"{func_file}:predict", flavor="function").version == 3
    m = store.manifest("double:3")
    assert set(m["files"]) == {"model.py"}
    assert len(m["files"]["model.py"]["sha256"]) == 64
    assert {"python", "pandas", "numpy"} <= set(m["libraries"])
    assert m["signature"]["inputs"] == [{"name": "x", "type": "float", "required": True}]


def test_corrupted_artifact_is_refused(tmp_path, func_file):
    store = ModelStore(tmp_path / "s")
    store.add("double", f"{func_file}:predict", flavor="function")
    artifact = tmp_path / "s" / "double" / "1" / "model.py"
    artifact.write_text(FUNC % 3)  # someone edits the code after registration
    with pytest.raises(IntegrityError, match="does not match its manifest checksum"):
        store.load("double:1")


def test_signing_refuses_unsigned_and_tampered(tmp_path, func_file):
    unsigned = ModelStore(tmp_path / "s", signing_key="")
    unsigned.add("double", f"{func_file}:predict", flavor="function")
    keyed = ModelStore(tmp_path / "s", signing_key="s3cret")
    with pytest.raises(IntegrityError, match="not signed"):
        keyed.load("double:1")
    keyed.add("double", f"{func_file}:predict", flavor="function")
    assert keyed.load("double:2").version == 2
    # tamper: point the manifest at other code and fix the checksum, as an attacker who can write the store would
    vdir = tmp_path / "s" / "double" / "2"
    (vdir / "model.py").write_text(FUNC % 3)
    manifest = json.loads((vdir / "manifest.json").read_text())
    from conveyor.store import sha256_file

    manifest["files"]["model.py"]["sha256"] = sha256_file(vdir / "model.py")
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    assert unsigned.load("double:2").predict_records([{"x": 1}])["y"][0] == 3.0  # without a key it verifies
    with pytest.raises(IntegrityError, match="signature does not match"):
        keyed.load("double:2")
    with pytest.raises(IntegrityError, match="signature does not match"):
        ModelStore(tmp_path / "s", signing_key="other-key").load("double:2")


def test_signing_key_from_environment(tmp_path, func_file, monkeypatch):
    ModelStore(tmp_path / "s", signing_key="").add("double", f"{func_file}:predict", flavor="function")
    monkeypatch.setenv("CONVEYOR_SIGNING_KEY", "k")
    with pytest.raises(IntegrityError):
        ModelStore(tmp_path / "s").load("double")


def test_concurrent_promotes_never_expose_a_broken_alias(tmp_path, func_file):
    store = ModelStore(tmp_path / "s")
    for _ in range(4):
        store.add("double", f"{func_file}:predict", flavor="function")
    stop = threading.Event()
    seen: set[int] = set()
    errors: list[BaseException] = []

    def promoter(version: int) -> None:
        s = ModelStore(tmp_path / "s")
        for _ in range(200):
            s.promote(f"double:{version}", "production")

    def reader() -> None:
        s = ModelStore(tmp_path / "s")
        while not stop.is_set():
            try:
                seen.add(s.resolve("double@production").version)
            except NotFound:
                continue  # before the first promote lands
            except BaseException as exc:
                errors.append(exc)
                return

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=promoter, args=(v,)) for v in (1, 2, 3, 4)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors
    assert seen <= {1, 2, 3, 4} and seen
    assert store.resolve("double@production").version in {1, 2, 3, 4}
    assert not [p for p in (tmp_path / "s" / "double" / "aliases").iterdir() if p.name.startswith(".")]


def test_concurrent_adds_get_distinct_versions(tmp_path, func_file):
    results: list[int] = []

    def add() -> None:
        results.append(ModelStore(tmp_path / "s").add("double", f"{func_file}:predict", flavor="function").version)

    threads = [threading.Thread(target=add) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [1, 2, 3, 4, 5, 6]


def test_remove_refuses_aliased_version_without_force(store, func_file):
    store.add("double", f"{func_file}:predict", flavor="function")
    store.add("double", f"{func_file}:predict", flavor="function")
    store.promote("double:1", "production")
    with pytest.raises(ConveyorError, match="aliased as production"):
        store.remove("double:1")
    store.remove("double:2")
    assert store.versions("double") == [1]
    store.remove("double:1", force=True)
    assert store.versions("double") == []
    with pytest.raises(NotFound):
        store.load("double")


def test_bad_names_are_refused(store, func_file):
    with pytest.raises(InvalidInput, match="bad model name"):
        store.add("../evil", f"{func_file}:predict", flavor="function")
    store.add("double", f"{func_file}:predict", flavor="function")
    with pytest.raises(InvalidInput, match="bad alias"):
        store.promote("double:1", "pro/duction")


def test_example_rows_that_do_not_fit_are_refused_in_one_line(store, func_file, tmp_path):
    import pandas as pd

    with pytest.raises(InvalidInput) as exc:
        store.add("double", f"{func_file}:predict", flavor="function", example=pd.DataFrame({"x": ["a lot"]}))
    assert str(exc.value) == (
        "the example rows do not fit the model's signature: 'x' must be a finite number, got 'a lot'"
    )
    crashing = tmp_path / "crash.py"
    crashing.write_text("def predict(frame):\n    return 1 / 0\n")
    with pytest.raises(InvalidInput) as exc:
        store.add("crash", f"{crashing}:predict", flavor="function", example=pd.DataFrame({"x": [1.0]}))
    assert str(exc.value) == "the model cannot predict the example rows: ZeroDivisionError: division by zero"
    assert store.names() == []  # nothing registered
