import onnx
import pytest

from lungseg import export, io
from conftest import SOURCES, TINY_SIZE, real_pair_names


def real_images(count: int):
    names = real_pair_names("shenzhen", count)
    return [io.read_grayscale(SOURCES / "shenzhen" / "images" / f"{n}.png") for n in names]


def test_onnx_file_passes_the_checker_with_a_dynamic_batch(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [1, TINY_SIZE, TINY_SIZE]


def test_onnx_runtime_matches_pytorch_on_real_images(tiny_onnx, tiny_model):
    session = export.create_session(tiny_onnx)
    result = export.parity(session, tiny_model, real_images(2), TINY_SIZE, threshold=0.5, postprocess=True)
    assert result["export/max_logit_diff"] < 1e-3
    assert result["export/mask_agreement"] > 0.9999
    export.check_parity(result, max_logit_diff=1e-3, min_mask_agreement=0.9999)


def test_parity_check_fails_beyond_tolerance():
    with pytest.raises(export.ExportParityError, match="max logit difference"):
        export.check_parity({"export/max_logit_diff": 0.5, "export/mask_agreement": 1.0}, 1e-3, 0.9999)
    with pytest.raises(export.ExportParityError, match="mask agreement"):
        export.check_parity({"export/max_logit_diff": 0.0, "export/mask_agreement": 0.99}, 1e-3, 0.9999)


def test_model_card_has_every_field(tiny_onnx):
    card = io.read_json(export.card_path_for(tiny_onnx))
    assert set(card) >= {"input", "output", "training_params", "test_metrics", "code_version"}
    assert set(card["input"]) >= {"name", "shape", "dtype", "value_range", "normalisation", "preprocessing", "resize"}
    assert card["input"]["name"] == export.INPUT_NAME and card["input"]["dtype"] == "float32"
    assert card["input"]["shape"][1:] == [1, TINY_SIZE, TINY_SIZE]
    assert set(card["output"]) >= {"name", "meaning", "threshold", "postprocess", "postprocessing"}
    assert 0 < card["output"]["threshold"] < 1
    assert set(card["input"]["normalisation"]) >= {"mean", "std"}
    assert len(card["code_version"]["git_commit"]) == 40
