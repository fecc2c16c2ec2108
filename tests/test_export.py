"""ONNX export: a checked graph with a dynamic batch, parity with PyTorch, and the card inside the file."""
import dataclasses
import json

import numpy as np
import onnx
import pytest

from lungseg import export
from lungseg.runtime import files, imaging
from lungseg.runtime.decode import read_grayscale
from lungseg.runtime.model_file import CARD_FORMAT, CARD_KEY, INPUT_NAME, card_path_for, load_model
from conftest import REPO, TINY_SIZE, real_pair_names, shipped_image, tiny_inference


def real_images(count: int):
    names = real_pair_names("shenzhen", count)
    return [read_grayscale(shipped_image("shenzhen", n)) for n in names]


def test_onnx_file_passes_the_checker_with_a_dynamic_batch(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [1, TINY_SIZE, TINY_SIZE]


def test_onnx_runtime_matches_pytorch_on_real_images(tiny_onnx, tiny_model):
    result = export.parity(tiny_onnx, tiny_inference(tiny_model), real_images(2))
    assert result["export/max_logit_diff"] < 1e-3
    assert result["export/mask_agreement"] > 0.9999
    export.check_parity(result, max_logit_diff=1e-3, min_mask_agreement=0.9999)


@pytest.fixture
def bright_is_lung(tmp_path):
    """A stand-in model exported to ONNX (lung wherever the input is bright), its PyTorch inference with a second
    pass, and a film whose small thorax the second pass changes: (onnx path, inference, film)."""
    import torch

    from lungseg.evaluation import Inference
    from lungseg.model import torch_runner

    class BrightIsLung(torch.nn.Module):
        def forward(self, x):
            return (x - 0.5) * 8.0

    onnx_path = tmp_path / "bright.onnx"
    export.write_model(onnx_path, export.export_graph(BrightIsLung(), 32, 1, opset=18))
    film = np.zeros((400, 320), np.uint8)
    film[150:250, 100:150] = film[150:250, 170:220] = 230
    return onnx_path, Inference(torch_runner(BrightIsLung()), 32, "none", 0.5, True, 8, lung_crop_margin=0.1), film


def test_parity_runs_onnx_with_the_same_second_pass_as_pytorch(bright_is_lung):
    onnx_path, inference, film = bright_is_lung
    one_pass = dataclasses.replace(inference, lung_crop_margin=None)
    assert (inference.segment([film])[0] != one_pass.segment([film])[0]).mean() > 0.001
    assert export.parity(onnx_path, inference, [film, film[::-1]])["export/mask_agreement"] > 0.9999


def test_parity_check_fails_beyond_tolerance():
    with pytest.raises(export.ExportParityError, match="max logit difference"):
        export.check_parity({"export/max_logit_diff": 0.5, "export/mask_agreement": 1.0}, 1e-3, 0.9999)
    with pytest.raises(export.ExportParityError, match="mask agreement"):
        export.check_parity({"export/max_logit_diff": 0.0, "export/mask_agreement": 0.99}, 1e-3, 0.9999)


def test_the_card_travels_inside_the_onnx_file_and_beside_it(tiny_onnx):
    props = {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    inside = json.loads(props[CARD_KEY])
    assert inside == files.read_json(card_path_for(tiny_onnx))  # the sidecar is the same card, for people
    assert load_model(tiny_onnx).card == inside


def test_model_card_has_every_field(tiny_onnx):
    card = load_model(tiny_onnx).card
    assert card["format"] == CARD_FORMAT
    assert set(card) >= {"intended_use", "input", "output", "training_data", "training_params", "test_metrics",
                         "code_version"}
    assert "not for clinical use" in card["intended_use"]
    assert set(card["input"]) >= {"name", "shape", "dtype", "value_range", "normalisation", "preprocessing", "resize",
                                  "intensity"}
    assert card["input"]["name"] == INPUT_NAME and card["input"]["dtype"] == "float32"
    assert card["input"]["shape"][1:] == [1, TINY_SIZE, TINY_SIZE]
    assert set(card["output"]) >= {"name", "meaning", "threshold", "postprocess", "postprocessing"}
    assert 0 < card["output"]["threshold"] < 1
    assert set(card["input"]["normalisation"]) >= {"mean", "std"}
    assert card["training_data"]["sources"][0]["licence"].startswith("CC BY-NC-SA")
    provenance = card["code_version"]
    assert len(provenance["git_commit"]) == 40 and len(provenance["weights_sha256"]) == 64
    assert {"torch", "onnx", "onnxruntime", "lungseg", "python"} <= set(provenance["exported_with"])


def test_parity_compares_logits_on_the_second_pass_inputs_too(bright_is_lung):
    onnx_path, inference, film = bright_is_lung
    seen = []
    run = inference.run_model
    inference = dataclasses.replace(inference, run_model=lambda inputs: seen.append(len(inputs)) or run(inputs))
    export.parity(onnx_path, inference, [film])
    assert 2 in seen  # the whole film and its lung box, compared in one batch


def test_the_card_keeps_only_the_params_that_shaped_the_weights(tiny_model):
    """The threshold and the lung crop margin live in the card's output and input (the export stage's params);
    the checkpoint's own evaluate section, stale after `-S evaluate.lung_crop_margin=...`, is not repeated."""
    from lungseg.config import load_params

    params = load_params(REPO / "params.yaml").model_dump(mode="json")
    card = export.model_card(tiny_inference(tiny_model), 1, 0.5, 0.25, {}, params, {}, "0" * 40, "f" * 64)
    assert set(card["training_params"]) == {"seed", "prepare", "augment", "model", "train"}
    assert card["training_params"]["train"] == params["train"]
