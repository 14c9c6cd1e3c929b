"""The Ray backend on a local cluster of 2 CPU workers: the same dataset and the same report as a local run."""

import pytest

pytestmark = pytest.mark.slow  # starts a Ray cluster and runs build + eval twice (make test-fast skips the module)
ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'fastrm-guard[distributed]'")

from fastrm_core.distill.dataset import BuildSettings, load_manifest  # noqa: E402
from fastrm_core.distill.evaluate import EvalConfig  # noqa: E402
from fastrm_core.distill.runner import build_dataset, evaluate_proxy  # noqa: E402

SETTINGS = dict(max_new_tokens=3, records_per_shard=2)  # as in conftest.py


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_build_and_eval_match_the_local_run(ray_cluster, distill_world, trained_proxy, tmp_path,
                                                assert_same_dataset):
    out = tmp_path / "ds"
    manifest = build_dataset(distill_world["data"], out, model_name=distill_world["model_dir"],
                             settings=BuildSettings(**SETTINGS), backend="ray", workers=2)
    local = load_manifest(distill_world["dataset"])
    assert manifest.complete and manifest.n_records == local.n_records and manifest.n_tokens == local.n_tokens
    assert [s.records for s in manifest.shards] == [s.records for s in local.shards]
    assert [s.model_dump(exclude={"seconds", "sha256"}) for s in manifest.shards] == [
        s.model_dump(exclude={"seconds", "sha256"}) for s in local.shards]
    assert manifest.model_dump(exclude={"shards", "data"}) == local.model_dump(exclude={"shards", "data"})
    assert_same_dataset(out, distill_world["dataset"], exact=False)

    config = EvalConfig(max_new_tokens=2, fractions=(0.0, 0.5), random_seeds=2)
    kwargs = dict(model_name=distill_world["model_dir"], proxy_path=trained_proxy, config=config, n=4)
    remote = evaluate_proxy(distill_world["data"], backend="ray", workers=2, **kwargs)
    plain = evaluate_proxy(distill_world["data"], **kwargs)
    for key in ("n_records", "skipped", "answer_accuracy", "n_tokens", "classification", "perturbation", "pointing",
                "records"):
        assert remote[key] == plain[key], key
    for corr_remote, corr_plain in ((remote["correlation"], plain["correlation"]),
                                    (remote["correlation"]["all_tokens"], plain["correlation"]["all_tokens"])):
        for key in ("pearson", "spearman", "n_tokens"):
            assert corr_remote[key] == pytest.approx(corr_plain[key], abs=1e-3), key
