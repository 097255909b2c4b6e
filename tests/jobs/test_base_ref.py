"""The one reading of a job's base_model (the API's checks and the worker share it)."""

from app.registry.base_models import BaseRef, parse_ref


def test_parse_ref_reads_each_kind():
    assert parse_ref("model:mdl_1") == BaseRef("model", "mdl_1")
    assert parse_ref("upload:bm_2") == BaseRef("upload", "bm_2")
    assert parse_ref("efficientnet_lite0") == BaseRef("builtin", "efficientnet_lite0")
    # Only a leading prefix counts.
    assert parse_ref("tiny_cnn:model:x") == BaseRef("builtin", "tiny_cnn:model:x")
