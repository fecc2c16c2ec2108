"""One file is the model: the card is read from the ONNX metadata and checked against the graph; anything
unusable is refused with one line naming the file."""
import json

import onnx
import pytest

from lungseg import export
from lungseg.cli import main
from lungseg.runtime.model_file import CARD_KEY, DEFAULT_MODEL_PATH, ModelError, load_model
from conftest import export_tiny, tiny_card


def test_a_good_model_loads_with_its_card(tiny_onnx):
    model = load_model(tiny_onnx)
    assert model.image_size == 64 and 0 < model.threshold < 1 and model.provider == "CPUExecutionProvider"


@pytest.fixture(scope="module")
def graph(tiny_model):
    return export.export_graph(tiny_model, 64, 1, opset=18)


def write(path, graph, card_text):
    copy = onnx.ModelProto()
    copy.CopyFrom(graph)
    if card_text is not None:
        onnx.helper.set_model_props(copy, {CARD_KEY: card_text})
    export.write_model(path, copy)
    return path


@pytest.mark.parametrize("case, card_text, message", [
    ("no card", None, "no lungseg model card"),
    ("not json", "{not json", "not valid JSON"),
    ("old format", json.dumps({"format": "lungseg-model-card/1"}), "format 'lungseg-model-card/1'"),
])
def test_missing_or_malformed_cards_are_refused(tmp_path, graph, case, card_text, message):
    path = write(tmp_path / "m.onnx", graph, card_text)
    with pytest.raises(ModelError, match=message):
        load_model(path)


@pytest.mark.parametrize("change, message", [
    ({"input": {"shape": ["batch", 1, 128, 128]}}, "does not match the card"),
    ({"input": {"name": "pixels"}}, "do not match the card's input"),
    ({"output": {"threshold": 1.5}}, "threshold 1.5 is not between 0 and 1"),
    ({"input": {"intensity": "magic"}}, "input.intensity 'magic'"),
    ({"input": {"lung_crop_margin": 1.5}}, "input.lung_crop_margin 1.5 is not null or a number in 0..1"),
    ({"input": {"lung_crop_margin": "0.1"}}, "input.lung_crop_margin '0.1' is not null or a number"),
    ({"input": {"lung_crop_margin": True}}, "input.lung_crop_margin True is not null or a number"),
    ({"input": {"lung_crop_margin": float("nan")}}, "input.lung_crop_margin nan is not null or a number"),
    ({"training_data": {"lung_box_share_range": [0.5, 0.2]}}, r"lung_box_share_range \[0.5, 0.2\] is not an ordered"),
    ({"training_data": {"lung_box_share_range": "wide"}}, "malformed field"),
])
def test_a_card_that_disagrees_with_the_graph_is_refused(tmp_path, tiny_model, graph, change, message):
    card = tiny_card(tiny_model, **change)
    path = write(tmp_path / "m.onnx", graph, json.dumps(card))
    with pytest.raises(ModelError, match=message):
        load_model(path)


def test_pass_count_and_qa_range_come_from_the_card_and_older_cards_keep_their_meaning(tmp_path, tiny_model, graph):
    with_margin = tiny_card(tiny_model, input={"lung_crop_margin": 0.1})
    model = load_model(write(tmp_path / "two.onnx", graph, json.dumps(with_margin)))
    assert model.lung_crop_margin == 0.1 and model.lung_box_share_range == (0.21, 0.46)
    older = tiny_card(tiny_model, format="lungseg-model-card/2")
    del older["input"]["lung_crop_margin"]  # /2 cards, written before the second pass existed: one pass
    del older["training_data"]["lung_box_share_range"]  # ... and QA on the lungs' share of the film
    model = load_model(write(tmp_path / "one.onnx", graph, json.dumps(older)))
    assert model.lung_crop_margin is None and model.lung_box_share_range is None


def test_truncated_and_non_onnx_files_are_refused_in_one_line(tmp_path, tiny_onnx, capsys):
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(tiny_onnx.read_bytes()[:5000])
    text = tmp_path / "notes.onnx"
    text.write_text("hello")
    for path in (truncated, text):
        code = main(["predict", str(tiny_onnx), "--model", str(path), "--output", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 3 and err.count("\n") == 1 and f"{path}: not a loadable ONNX model" in err
        assert "Traceback" not in err


def test_the_model_runs_from_its_file_alone(tmp_path, tiny_model, real_xray):
    from PIL import Image

    lone = export_tiny(tiny_model, tmp_path / "m.onnx", tiny_card(tiny_model))
    (tmp_path / "m.card.json").unlink()  # the readable copy is for people; the model does not need it
    Image.fromarray(real_xray[0]).save(tmp_path / "x.png")
    code = main(["predict", str(tmp_path / "x.png"), "--model", str(lone), "--output", str(tmp_path / "out"),
                 "--quiet"])
    assert code == 0 and (tmp_path / "out" / "x.png").is_file()


def test_a_registry_uri_without_a_store_fails_without_creating_one(tmp_path, monkeypatch):
    from lungseg.runtime import registry

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ModelError, match=r"mlflow.db does not exist; run in the repository that trained it"):
        registry.local_model_path("models:/lungseg@champion")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_default_model_says_where_it_looked_and_how_to_name_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match=rf"looked for {tmp_path}/models/model.onnx\); name one with --model"):
        load_model(DEFAULT_MODEL_PATH)
