"""Maps over several image regions in results, traces and the viewer (#16)."""

import numpy as np

from guardrail.result import GuardResult, MapRegion
from guardrail.traces.calls import _regions, _split


def _result(maps, regions):
    return GuardResult(question="q", answer="a", text="a", token_ids=[1, 2], tokens=["a", "b"], maps=maps,
                       regions=regions, action="allow", rule="r", reason="x", policy_id="p", policy_version="1")


def test_region_maps_cut_a_flat_line_into_grids():
    flat = np.arange(2 * 14, dtype=np.float32).reshape(2, 1, 14)  # (T, 1, N_img): a base 2x3 and a hires 4x2
    r = _result(flat, [MapRegion(image=0, kind="base", grid=(2, 3)), MapRegion(image=0, kind="hires", grid=(4, 2))])
    base, hires = r.region_maps()
    assert base.shape == (2, 2, 3) and hires.shape == (2, 4, 2)
    assert base[1].tolist() == [[14, 15, 16], [17, 18, 19]] and hires[0, 3].tolist() == [12, 13]
    back = GuardResult.model_validate_json(r.model_dump_json())
    assert back.regions == r.regions and [m.shape for m in back.region_maps()] == [(2, 2, 3), (2, 4, 2)]
    one = _result(np.zeros((2, 3, 4), np.float32), [])
    assert [m.shape for m in one.region_maps()] == [(2, 3, 4)]


def test_trace_maps_split_into_one_panel_per_region():
    regions = _regions({"fastrm.map.regions": '[{"image": 0, "kind": "full", "grid": [2, 3]},'
                                              ' {"image": 1, "kind": "full", "grid": [4, 2]}]'})
    panels = _split(np.arange(14, dtype=np.float32).reshape(1, 14), regions)
    assert [(r["image"], m.shape) for r, m in panels] == [(0, (2, 3)), (1, (4, 2))]
    assert panels[1][1][0].tolist() == [6, 7]
    assert _split(np.zeros((4, 4)), None)[0][0] is None  # no regions recorded: the map as it is
    assert _regions({"fastrm.map.regions": "not json"}) is None
