"""The relevancy-method registry: one interface, looked up by name, looped over by the evaluation."""

import doctest

import numpy as np
import pytest

from fastrm_common.errors import InputError
from fastrm_common.records import read_vqa_jsonl
from fastrm_core.distill import methods
from fastrm_core.distill.evaluate import EvalConfig, evaluate_record
from fastrm_core.proxy import FastRMProxy


def test_docstring_examples():
    assert doctest.testmod(methods, optionflags=doctest.ELLIPSIS).failed == 0


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(InputError, match="expected one of: gradcam, gradient, per_step, proxy, random"):
        methods.get_method("lime")


def test_a_registered_method_is_evaluated_like_the_built_in_ones(distill_model, distill_world, trained_proxy):
    class Uniform:
        name, label = "uniform", "uniform"

        def rankings(self, x):
            return [np.ones(x.gradient.shape[1])]

    methods.register_method(Uniform())
    try:
        model, processor = distill_model
        proxy = FastRMProxy.from_pretrained(trained_proxy)
        record = read_vqa_jsonl(distill_world["data"], check_images=False)[0][0]  # q0 has an evidence mask
        cfg = EvalConfig(max_new_tokens=2, fractions=(0.0, 0.5), methods=("gradient", "per_step", "uniform"))
        result = evaluate_record(model, processor, proxy, record, cfg, base_dir=distill_world["root"])
    finally:
        methods.METHODS.remove("uniform")
    point = result["pointing"]
    assert set(point) == {"gradient", "per_step", "uniform"}
    # the per-step maps are the exact maps computed another way: same pointing figures
    assert point["per_step"]["hit"] == point["gradient"]["hit"]
    assert point["per_step"]["mass"] == pytest.approx(point["gradient"]["mass"], abs=1e-4)
    assert point["uniform"]["mass"] == pytest.approx(point["uniform"]["chance"])  # spread evenly
    assert set(result["perturbation"]["positive"]) == {"gradient", "per_step", "uniform"}
