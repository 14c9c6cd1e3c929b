"""The evaluation on the tiny model: report structure, consistency between figures, bad inputs."""

import numpy as np
import pytest
import torch

from fastrm_core.distill.evaluate import EvalConfig, evaluate_record
from fastrm_core.distill.runner import evaluate_proxy
from fastrm_core.distill.metrics import curve_auc
from fastrm_common.errors import ConfigMismatchError, InputError
from fastrm_core.proxy import FastRMProxy, ProxyConfig

FAST = dict(max_new_tokens=2, fractions=(0.0, 0.25, 0.5), random_seeds=2)


@pytest.fixture(scope="module")
def report(distill_world, trained_proxy):
    return evaluate_proxy(distill_world["data"], model_name=distill_world["model_dir"], proxy_path=trained_proxy,
                          config=EvalConfig(**FAST), n=5)


def test_report_has_every_figure(report):
    assert report["n_records"] == 4 and report["n_skipped"] == 2
    assert report["skipped"][0]["line"] == 9 and "invalid JSON" in report["skipped"][0]["reason"]
    assert report["skipped"][1]["id"] == "missing" and "image not found" in report["skipped"][1]["reason"]
    assert len(report["classification"]["thresholds"]) == 9
    assert [r["threshold"] for r in report["classification"]["thresholds"]] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert report["classification"]["label_threshold"] == 0.3
    assert report["n_tokens"] == 8
    pert = report["perturbation"]
    assert pert["fractions"] == [0.0, 0.25, 0.5]
    for direction in ("positive", "negative"):
        assert set(pert[direction]) == {"proxy", "gradient", "gradcam", "random"}
        for curve in pert[direction].values():
            assert curve["accuracy"][0] == report["answer_accuracy"]  # nothing removed: the plain answers
            assert curve["agreement"][0] == 1.0
            assert curve["auc"] == pytest.approx(curve_auc(pert["fractions"], curve["accuracy"]), abs=1e-4)
    point = report["pointing"]
    assert point["n"] == 2  # q0 and q2 have evidence masks among the first 5 lines
    assert set(point["all"]) == {"proxy", "gradient", "gradcam", "random"}
    assert point["all"]["proxy"]["chance"] == pytest.approx(1 / 16)
    corr = report["correlation"]
    assert corr["n_tokens"] <= 8 and (corr["pearson"] is None or -1 <= corr["pearson"] <= 1)
    assert report["data_hash"] and report["proxy_distilled_from"] == report["model_id"]


def test_record_figures_are_the_metrics_of_the_captured_and_exact_maps(distill_model, distill_world, trained_proxy):
    from fastrm_common.records import read_vqa_jsonl

    from fastrm_core.capturing import capture
    from fastrm_core.distill.generation import build_prompt, content_mask, greedy_kwargs, load_image, prepare_inputs
    from fastrm_core.distill.metrics import confusion_counts, correlations, mask_to_grid, pointing
    from fastrm_core.distill.metrics import binarize_maps
    from fastrm_core.adapters import get_adapter
    from fastrm_core.relevancy import gradient_relevancy

    model, processor = distill_model
    proxy = FastRMProxy.from_pretrained(trained_proxy)
    records, _ = read_vqa_jsonl(distill_world["data"], check_images=False)
    record = records[0]  # q0 has an evidence mask
    result = evaluate_record(model, processor, proxy, record, EvalConfig(**FAST, perturbation=False),
                             base_dir=distill_world["root"])
    inputs = prepare_inputs(model, processor, load_image(record.image), build_prompt(processor, record.question)[0])
    with torch.no_grad(), capture(model, proxy) as cap:
        out = model.generate(**inputs, **greedy_kwargs(get_adapter(model), 2))
    rel = gradient_relevancy(model, inputs, out)
    probs, grad = cap.maps[0].reshape(2, 16), rel.maps.reshape(2, 16)
    content = content_mask(model, processor, rel.token_ids)
    assert result["content"] == content.tolist()
    assert result["family"] == "attribute"  # carried from the record for the per-family figures
    labels = binarize_maps(grad, 0.3)
    assert result["counts"] == confusion_counts(probs[content].numpy(), labels[content].numpy()).tolist()
    assert result["counts_all"] == confusion_counts(probs.numpy(), labels.numpy()).tolist()
    assert result["pearson"][0] == pytest.approx(correlations(probs[0].numpy(), grad[0].numpy())[0], nan_ok=True)
    from PIL import Image

    target = mask_to_grid(np.asarray(Image.open(distill_world["root"] / "masks" / "0.png")) > 127, (4, 4))
    assert result["pointing"]["gradient"] == pointing(grad[0].numpy() / grad[0].sum().item(), target)
    assert result["pointing"]["proxy"] == pointing(probs[0].numpy(), target)
    assert "perturbation" not in result


def test_a_proxy_for_another_model_is_a_clear_error(distill_world, tmp_path):
    FastRMProxy(ProxyConfig(hidden_size=32, n_image_tokens=16, grid=(4, 4))).save_pretrained(tmp_path / "p")
    with pytest.raises(ConfigMismatchError, match=r"hidden size 32 \(proxy\) != 64 \(model\)"):
        evaluate_proxy(distill_world["data"], model_name=distill_world["model_dir"], proxy_path=tmp_path / "p", n=1)


def test_config_is_validated():
    with pytest.raises(InputError, match="bootstrap must be >= 0"):
        EvalConfig(bootstrap=-1)
    with pytest.raises(InputError, match="confidence must be in"):
        EvalConfig(confidence=1.5)
    with pytest.raises(InputError, match="unknown method"):
        EvalConfig(methods=("proxy", "lime"))
    with pytest.raises(InputError, match="fractions must start at 0"):
        EvalConfig(fractions=(0.1, 0.5))


def test_a_proxy_that_does_not_fit_is_refused_before_the_data_is_read(distill_world, tmp_path):
    # the data file does not even exist: the refusal must come first, and name the proxy's own model
    cfg = ProxyConfig(hidden_size=32, n_image_tokens=16, grid=(4, 4), distilled_from="my-org/other-llava")
    FastRMProxy(cfg).save_pretrained(tmp_path / "p")
    started = []
    with pytest.raises(ConfigMismatchError) as info:
        evaluate_proxy(tmp_path / "no-such-data.jsonl", model_name=distill_world["model_dir"],
                       proxy_path=tmp_path / "p", on_start=started.append)
    assert started == []
    message = str(info.value)
    assert "hidden size 32 (proxy) != 64 (model)" in message
    assert "distilled from 'my-org/other-llava'" in message and "--model my-org/other-llava" in message


def test_eval_cli_refuses_before_its_progress_bar(distill_world, tmp_path, capsys):
    from fastrm_core.cli import main

    cfg = ProxyConfig(hidden_size=32, n_image_tokens=16, grid=(4, 4), distilled_from="my-org/other-llava")
    FastRMProxy(cfg).save_pretrained(tmp_path / "p")
    code = main(["distill", "eval", "--data", str(tmp_path / "no-such-data.jsonl"), "--out", str(tmp_path / "r.json"),
                 "--model", str(distill_world["model_dir"]), "--proxy", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and "--model my-org/other-llava" in err
    assert err.startswith("error:") and "━" not in err  # the refusal, and no progress bar drawn before it
