"""Each family's image regions, on the processor's real output: every image token accounted for, grids that
match their counts, a two-image prompt and non-square images, and row-major order checked against the
family's own code (its packing, merging, pooling or tags), not against our arithmetic."""

import pytest
import torch

from fastrm_core.families import gemma3, idefics3, internvl, llava_next, llava_onevision, mistral3, paligemma
from fastrm_core.regions import flat_positions

FAMILIES = ["llava_next", "llava_onevision", "gemma3", "paligemma", "paligemma2", "idefics3", "smolvlm", "mistral3",
            "pixtral", "internvl"]


def structure_ids(tiny) -> set[int]:
    """Every token id that is part of an image's layout (placeholders, separators, tags)."""
    cfg = tiny.model.config
    if tiny.family in {"idefics3", "smolvlm"}:
        tok = tiny.tokenizer
        return {cfg.image_token_id, *idefics3.tag_ids(tok),
                tok.convert_tokens_to_ids("<fake_token_around_image>"), tok.convert_tokens_to_ids("<global-img>")}
    if tiny.family == "gemma3":
        return {cfg.image_token_id, cfg.boi_token_id, cfg.eoi_token_id}
    if tiny.family == "internvl":
        return {cfg.image_token_id, tiny.tokenizer.start_image_token_id, tiny.tokenizer.end_image_token_id}
    if tiny.family in {"mistral3", "pixtral"}:
        tok = tiny.extra["tokenizer"]
        return {cfg.image_token_id, *(tok.convert_tokens_to_ids(t) for t in ("[IMG_BREAK]", "[IMG_END]"))}
    return {cfg.image_token_id}


def layouts(tiny, inputs, known_ids: bool = True):
    """The family's regions; ``known_ids``: also check the separators' ids, which the parsers infer otherwise."""
    cfg = tiny.model.config
    if tiny.family == "llava_next":
        return llava_next.batch_images(cfg, inputs)
    if tiny.family == "llava_onevision":
        return llava_onevision.batch_images(cfg, inputs)
    if tiny.family == "gemma3":
        return gemma3.batch_images(cfg, inputs)
    if tiny.family in {"paligemma", "paligemma2"}:
        return paligemma.batch_images(cfg, inputs)
    if tiny.family == "internvl":
        return internvl.batch_images(cfg, inputs)
    if tiny.family in {"idefics3", "smolvlm"}:
        return idefics3.batch_images(cfg, inputs, idefics3.tag_ids(tiny.tokenizer) if known_ids else None)
    tok = tiny.extra["tokenizer"]
    if not known_ids:
        return mistral3.batch_images(cfg, inputs)
    return mistral3.batch_images(cfg, inputs, tok.convert_tokens_to_ids("[IMG_BREAK]"),
                                 tok.convert_tokens_to_ids("[IMG_END]"))


@pytest.fixture(params=FAMILIES)
def family_batch(request, tiny_family):
    tiny = tiny_family(request.param)
    inputs = tiny.make_inputs(tiny.two_rows())
    return tiny, inputs, layouts(tiny, inputs)


def test_regions_account_for_every_image_token(family_batch):
    tiny, inputs, rows = family_batch
    structure = torch.tensor(sorted(structure_ids(tiny)))
    image_id = tiny.model.config.image_token_id
    assert [len({r.image for r in row.regions}) for row in rows] == [1, 2]
    for b, row in enumerate(rows):
        ids = inputs["input_ids"][b]
        pos = flat_positions(row.regions)
        assert bool((ids[pos] == image_id).all())  # a region holds image tokens only
        covered = torch.cat([pos, row.separators]).sort().values
        assert torch.equal(covered, torch.isin(ids, structure).nonzero(as_tuple=True)[0])  # ... and nothing is left out
        for region in row.regions:
            assert region.grid[0] * region.grid[1] == region.positions.numel()
    if rows[0].images is not None:  # batch-flattened images: row 0 owns the first, row 1 the next ones
        assert [(r.images.start, r.images.stop) for r in rows] == [(0, rows[0].images.stop), (rows[0].images.stop,
                                                                                              rows[1].images.stop)]


@pytest.mark.parametrize("family", ["idefics3", "smolvlm", "mistral3", "pixtral"])
def test_structure_read_without_separator_ids(tiny_family, family):
    """The configs do not name break/end/tag ids: the layout read from the structure alone is the same."""
    tiny = tiny_family(family)
    inputs = tiny.make_inputs(tiny.two_rows())
    for known, inferred in zip(layouts(tiny, inputs), layouts(tiny, inputs, known_ids=False)):
        assert [(r.image, r.kind, r.grid) for r in known.regions] == [(r.image, r.kind, r.grid) for r in inferred.regions]
        assert all(torch.equal(a.positions, b.positions) for a, b in zip(known.regions, inferred.regions))
        assert torch.equal(known.separators, inferred.separators)


def test_broken_layouts_are_refused(tiny_family):
    from fastrm_common.errors import InputError

    tiny = tiny_family("mistral3")
    inputs = tiny.make_inputs(tiny.two_rows())
    ids = inputs["input_ids"].clone()
    img = tiny.model.config.image_token_id
    first = int((ids[0] == img).nonzero()[0])
    ids[0, first + 1] = tiny.extra["tokenizer"].pad_token_id  # a row of the grid loses a token
    with pytest.raises(InputError):
        layouts(tiny, {**inputs, "input_ids": ids})
    tiny = tiny_family("llava_next")
    inputs = tiny.make_inputs(tiny.two_rows())
    with pytest.raises(InputError, match="image tokens"):
        llava_next.batch_images(tiny.model.config, {**inputs, "image_sizes": inputs["image_sizes"].flip(-1)})


def test_non_square_images_give_non_square_grids(family_batch):
    tiny, inputs, rows = family_batch
    if tiny.family == "internvl":  # square tiles: a wide picture is two of them side by side, a tall one two stacked
        assert [r.kind for r in rows[0].regions] == ["tile", "tile", "global"]
        assert [r.kind for r in rows[1].regions if r.image == 1] == ["tile", "tile", "global"]
        return
    if tiny.family in {"gemma3", "paligemma", "paligemma2"}:  # every image is resized to one fixed square
        assert {r.grid for row in rows for r in row.regions} == {r.grid for r in rows[0].regions}
        return
    wide = [r for r in rows[0].regions if r.kind in {"hires", "full"}][0]
    if tiny.family == "llava_onevision":  # several images in a prompt: each is its base grid alone (square)
        assert [(r.image, r.kind, r.grid) for r in rows[1].regions] == [(0, "full", (4, 4)), (1, "full", (4, 4))]
        alone = tiny.make_inputs([(f"user {tiny.image_placeholder} ? assistant :", [tiny.image((tiny.tile, 2 * tiny.tile))])])
        tall = [r for r in layouts(tiny, alone)[0].regions if r.kind == "hires"][0]
    else:
        tall = [r for r in rows[1].regions if r.image == 1 and r.kind in {"hires", "full"}][0]
    assert wide.grid[1] > wide.grid[0] and tall.grid[0] > tall.grid[1]


def _coords(n_rows: int, n_cols: int, dim: int) -> torch.Tensor:
    """(n_rows * n_cols, dim) features whose channels 0 and 1 are each patch's row and column."""
    y, x = torch.meshgrid(torch.arange(n_rows), torch.arange(n_cols), indexing="ij")
    feats = torch.zeros(n_rows * n_cols, dim)
    feats[:, 0], feats[:, 1] = y.reshape(-1).float(), x.reshape(-1).float()
    return feats


def _tiles(size, cfg):
    """(rows, cols) of high-resolution tiles, by transformers' own function."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    return get_anyres_image_grid_shape(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_llava_next_order_matches_pack_image_features(tiny_family, family):
    """Features that encode (tile, row, col) go through the model's own pack_image_features; each region position
    must receive the feature of its grid cell, each newline the image_newline."""
    tiny = tiny_family(family)
    inputs = tiny.make_inputs(tiny.two_rows())
    rows = layouts(tiny, inputs)
    inner = tiny.model.model
    cfg = tiny.model.config
    side = cfg.vision_config.image_size // cfg.vision_config.patch_size
    dim = cfg.text_config.hidden_size
    newline = torch.full((dim,), -7.0)
    for b, row in enumerate(rows):
        sizes = inputs["image_sizes"][row.images]
        per_image = []
        for img, size in enumerate(sizes):
            n_tiles = 1 + _tiles(size, cfg)[0] * _tiles(size, cfg)[1] if len(sizes) == 1 or family == "llava_next" else 1
            feats = torch.zeros(n_tiles, side * side, dim)
            for t in range(n_tiles):
                feats[t] = _coords(side, side, dim)
                feats[t, :, 2] = t  # tile 0: the base view, then the high-resolution tiles row-major
            per_image.append(feats)
        kwargs = {"image_newline": newline}
        if family == "llava_next":
            kwargs["vision_feature_select_strategy"] = "default"
        else:
            kwargs["vision_aspect_ratio"] = cfg.vision_aspect_ratio
        packed, _ = inner.pack_image_features(per_image, sizes, **kwargs)
        seq = torch.zeros(inputs["input_ids"].shape[1], dim)
        image_pos = (inputs["input_ids"][b] == cfg.image_token_id).nonzero(as_tuple=True)[0]
        seq[image_pos] = torch.cat(packed)  # masked_scatter: the k-th image token gets the k-th feature
        assert bool((seq[row.separators] == -7.0).all())
        for region in row.regions:
            cells = seq[region.positions].reshape(*region.grid, dim)
            if region.kind in {"base", "full"}:  # the whole image resized to one tile: tile 0, cells in order
                assert torch.equal(cells[..., 2], torch.zeros(region.grid))
                assert torch.equal(cells[..., :2], _coords(*region.grid, dim)[:, :2].reshape(*region.grid, 2))
            else:  # hires: rows go down the image, columns across (strictly, up to the interpolation's blur)
                tile_cols = _tiles(sizes[region.image], cfg)[1]
                tile = cells[..., 2] - 1  # feature tile 0 is the base
                gy = torch.div(tile, tile_cols, rounding_mode="floor") * side + cells[..., 0]
                gx = tile % tile_cols * side + cells[..., 1]
                assert bool((gy.diff(dim=0) > 0).all()) and bool((gx.diff(dim=1) > 0).all())


def test_onevision_shrinks_large_images(tiny_family):
    tiny = tiny_family("llava_onevision")
    inputs = tiny.make_inputs([(f"user {tiny.image_placeholder} what ? assistant :", [tiny.image((100, 100))])])
    (row,) = layouts(tiny, inputs)
    hires = [r for r in row.regions if r.kind == "hires"][0]
    assert hires.grid == (5, 5)  # 3x3 tiles of 4x4 patches = 12x12, shrunk by sqrt(144 / (2 * 16)) to 5x5
    tiny.model(**inputs)  # the model agrees with the count (it raises on a mismatch)


def test_mistral3_order_matches_patch_merger(tiny_family):
    tiny = tiny_family("mistral3")
    inputs = tiny.make_inputs(tiny.two_rows())
    rows = layouts(tiny, inputs)
    merger = tiny.model.model.multi_modal_projector.patch_merger
    patch, m = merger.patch_size, merger.spatial_merge_size
    dim = tiny.model.config.vision_config.hidden_size
    tok = tiny.extra["tokenizer"]
    brk, end = tok.convert_tokens_to_ids("[IMG_BREAK]"), tok.convert_tokens_to_ids("[IMG_END]")
    selector = torch.zeros_like(merger.merging_layer.weight)  # output channel c = channel c of the top-left patch
    selector[0, 0 * m * m], selector[1, 1 * m * m] = 1.0, 1.0
    old = merger.merging_layer.weight.data.clone()
    try:
        merger.merging_layer.weight.data.copy_(selector)
        for b, row in enumerate(rows):
            sizes = inputs["image_sizes"][row.images]
            feats = torch.cat([_coords(int(h) // patch, int(w) // patch, dim) for h, w in sizes])
            with torch.no_grad():
                merged = merger(feats, sizes)  # (n_tokens, dim), in the order they fill the [IMG] tokens
            img_pos = (inputs["input_ids"][b] == tiny.model.config.image_token_id).nonzero(as_tuple=True)[0]
            for region in row.regions:
                rank = torch.searchsorted(img_pos, region.positions)
                cells = merged[rank, :2].reshape(*region.grid, 2)
                y, x = torch.meshgrid(torch.arange(region.grid[0]), torch.arange(region.grid[1]), indexing="ij")
                assert torch.equal(cells, torch.stack([y * m, x * m], -1).float())
                last_of_rows = region.positions.view(region.grid)[:, -1]
                after = inputs["input_ids"][b][last_of_rows + 1]
                assert after[:-1].eq(brk).all() and after[-1] == end
    finally:
        merger.merging_layer.weight.data.copy_(old)


@pytest.mark.parametrize("family", ["mistral3", "pixtral"])
def test_mistral3_rows_end_at_breaks(tiny_family, family):
    tiny = tiny_family(family)
    inputs = tiny.make_inputs(tiny.two_rows())
    tok = tiny.extra["tokenizer"]
    brk, end = tok.convert_tokens_to_ids("[IMG_BREAK]"), tok.convert_tokens_to_ids("[IMG_END]")
    for b, row in enumerate(layouts(tiny, inputs, known_ids=False)):
        for region in row.regions:
            grid = region.positions.view(region.grid)
            assert bool((grid.diff(dim=1) == 1).all())  # a row is consecutive [IMG] tokens
            after = inputs["input_ids"][b][grid[:, -1] + 1]
            assert after[:-1].eq(brk).all() and after[-1] == end
            assert bool((grid[1:, 0] == grid[:-1, -1] + 2).all())  # the next row starts right after the break


def test_idefics3_tiles_follow_tags_and_pixel_shuffle(tiny_family):
    tiny = tiny_family("idefics3")
    t = tiny.tile
    img = tiny.image((2 * t, 2 * t))
    for (r, c), color in {(0, 1): (250, 0, 0), (1, 0): (0, 250, 0), (1, 1): (0, 0, 250)}.items():
        img.paste(color, (c * t, r * t, (c + 1) * t, (r + 1) * t))
    inputs = tiny.make_inputs([(f"user {tiny.image_placeholder} what ? assistant :", [img])])
    (row,) = layouts(tiny, inputs)
    hires, glob = row.regions
    side = glob.grid[0]
    assert (hires.kind, hires.grid, glob.kind) == ("hires", (2 * side, 2 * side), "global")
    ids = inputs["input_ids"][0]
    tags = idefics3.tag_ids(tiny.processor.tokenizer)
    big = hires.positions.view(hires.grid)
    block_starts = sorted({int(p) for p in big[::side, ::side].reshape(-1)})
    for r in range(2):
        for c in range(2):
            first = int(big[r * side, c * side])
            assert tags[int(ids[first - 1])] == (r, c)  # the tile's tag says where it goes
            # the tile's pixels (block k of pixel_values, k in sequence order) are that quadrant of the image
            k = block_starts.index(first)
            mean = inputs["pixel_values"][0, k].mean(dim=(1, 2))
            expected = {(0, 0): None, (0, 1): 0, (1, 0): 1, (1, 1): 2}[(r, c)]
            if expected is not None:
                assert int(mean.argmax()) == expected
    shuffle = tiny.model.model.connector.pixel_shuffle
    n = tiny.model.config.vision_config.image_size // tiny.model.config.vision_config.patch_size
    scale = tiny.model.config.scale_factor
    out = shuffle(_coords(n, n, 2)[None], scale)[0]  # (k*k, 2 * scale**2): sub-patch 0's channels first
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    assert torch.equal(out[:, :2].reshape(side, side, 2), torch.stack([y * scale, x * scale], -1).float())


def test_gemma3_blocks_between_markers_and_pooled_row_major(tiny_family):
    tiny = tiny_family("gemma3")
    inputs = tiny.make_inputs(tiny.two_rows())
    rows = layouts(tiny, inputs)
    cfg = tiny.model.config
    for b, row in enumerate(rows):
        ids = inputs["input_ids"][b]
        for region in row.regions:
            assert ids[region.positions[0] - 1] == cfg.boi_token_id and ids[region.positions[-1] + 1] == cfg.eoi_token_id
            assert torch.equal(region.positions, torch.arange(region.positions[0], region.positions[0] + region.size))
    proj = tiny.model.model.multi_modal_projector
    n = proj.patches_per_image
    grid = _coords(n, n, 2).T.reshape(1, 2, n, n)
    pooled = proj.avg_pool(grid).flatten(2).transpose(1, 2)[0]  # as Gemma3MultiModalProjector.forward
    side = proj.tokens_per_side
    assert bool((pooled[:, 0].view(side, side).diff(dim=0) > 0).all())
    assert bool((pooled[:, 1].view(side, side).diff(dim=1) > 0).all())


def test_gemma3_pan_and_scan_crops(tiny_family):
    tiny = tiny_family("gemma3")
    cfg = tiny.model.config
    inputs = tiny.make_inputs(tiny.two_rows())
    (_, row1) = gemma3.batch_images(cfg, inputs, num_crops=[0, 0, 0])
    assert [r.kind for r in row1.regions] == ["full", "full"]
    (_, row1) = gemma3.batch_images(cfg, inputs, num_crops=[0, 1])  # row 1's two blocks: one image and a crop
    assert [(r.image, r.kind) for r in row1.regions] == [(0, "global"), (0, "crop")]


def test_internvl_tiles_in_pixel_order_and_pixel_shuffle_row_major(tiny_family):
    tiny = tiny_family("internvl")
    t = tiny.tile
    img = tiny.image((2 * t, t), (250, 0, 0))
    img.paste((0, 0, 250), (t, 0, 2 * t, t))  # left half red, right half blue
    inputs = tiny.make_inputs([(f"user {tiny.image_placeholder} what ? assistant :", [img])])
    (row,) = layouts(tiny, inputs)
    assert [r.kind for r in row.regions] == ["tile", "tile", "global"]
    ids = inputs["input_ids"][0]
    assert ids[row.regions[0].positions[0] - 1] == tiny.tokenizer.start_image_token_id
    assert ids[row.regions[-1].positions[-1] + 1] == tiny.tokenizer.end_image_token_id
    # block k fills the k-th run of context tokens (masked_scatter); its pixels: left tile, right tile, thumbnail
    means = inputs["pixel_values"][row.images].mean(dim=(2, 3))  # (3, C)
    assert int(means[0].argmax()) == 0 and int(means[1].argmax()) == 2
    thumb = inputs["pixel_values"][row.images][2]  # (C, H, W): the whole picture, red left, blue right
    half = thumb.shape[-1] // 2
    assert int(thumb[..., :half].mean(dim=(1, 2)).argmax()) == 0 and int(thumb[..., half:].mean(dim=(1, 2)).argmax()) == 2
    n = tiny.model.config.vision_config.image_size[0] // tiny.model.config.vision_config.patch_size[0]
    out = tiny.model.model.pixel_shuffle(_coords(n, n, 2).reshape(1, n, n, 2), 0.5).reshape(-1, 8)
    side = n // 2
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    assert torch.equal(out[:, :2].reshape(side, side, 2), torch.stack([y * 2, x * 2], -1).float())


def test_paligemma_image_first(tiny_family):
    tiny = tiny_family("paligemma")
    inputs = tiny.make_inputs(tiny.two_rows())
    rows = layouts(tiny, inputs)
    for b, row in enumerate(rows):
        first = int(inputs["attention_mask"][b].nonzero()[0])
        assert int(row.regions[0].positions[0]) == first
        side = tiny.model.config.vision_config.image_size // tiny.model.config.vision_config.patch_size
        assert row.regions[0].grid == (side, side)


# --------------------------------------------------------------------------------------
# real checkpoints' geometry (no weights needed): LLaVA-v1.6 at 336 px / 14, OneVision at 384 px / 14

SIZES = [(336, 336), (480, 640), (640, 480), (1024, 300), (300, 1024), (1080, 1920), (37, 911), (2048, 2048), (500, 501)]


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_real_geometry_matches_processor_and_packing(family):
    """For the real checkpoints' tile size, patch size and pinpoints, our grids give the token count the family's
    processor writes and the one its pack_image_features produces, with every newline where ours are."""
    from types import SimpleNamespace

    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaOnevisionConfig, SiglipVisionConfig
    from transformers.models.llava_next.modeling_llava_next import LlavaNextModel
    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

    if family == "llava_next":
        tile, cfg = 336, LlavaNextConfig(vision_config=CLIPVisionConfig(image_size=336, patch_size=14))
        proc = SimpleNamespace(image_processor=SimpleNamespace(image_grid_pinpoints=cfg.image_grid_pinpoints),
                               patch_size=14, num_additional_image_tokens=1)
        from transformers import LlavaNextProcessor as P

        def expected(h, w):  # "default" drops CLS: the processor subtracts it again
            return P._get_number_of_features(proc, h, w, tile, tile) - 1
    else:
        tile, cfg = 384, LlavaOnevisionConfig(vision_config=SiglipVisionConfig(image_size=384, patch_size=14))
        proc = SimpleNamespace(image_processor=SimpleNamespace(image_grid_pinpoints=cfg.image_grid_pinpoints),
                               num_image_tokens=27 * 27, vision_aspect_ratio=cfg.vision_aspect_ratio)
        from transformers import LlavaOnevisionProcessor as P

        def expected(h, w):
            return P._get_number_of_features(proc, h, w, tile, tile)
    # the processor's own arithmetic, run on a stand-in holding just what it reads
    proc._get_unpadded_features = lambda *a: P._get_unpadded_features(proc, *a)
    side = tile // 14
    max_n = llava_onevision.max_patches(cfg.vision_aspect_ratio) if family == "llava_onevision" else None
    dim, newline = 3, torch.full((3,), -1.0)
    model = SimpleNamespace(config=cfg)
    pack = LlavaNextModel.pack_image_features if family == "llava_next" else LlavaOnevisionModel.pack_image_features
    for h, w in SIZES:
        grid = llava_next.hires_grid((h, w), cfg.image_grid_pinpoints, tile, side, max_n)
        n = llava_next.image_token_count(grid, side)
        assert n == expected(h, w), (h, w)
        rows, cols = _tiles((h, w), cfg)
        feats = torch.zeros(1 + rows * cols, side * side, dim)
        kwargs = {"vision_feature_select_strategy": "default"} if family == "llava_next" else {}
        packed, lens = pack(model, [feats], torch.tensor([[h, w]]), image_newline=newline, **kwargs)
        assert int(lens[0]) == n, (h, w)
        ids = torch.full((n,), 4)
        row = llava_next.row_images(ids, 4, [grid], side)
        assert torch.equal((packed[0] == -1).all(-1).nonzero(as_tuple=True)[0], row.separators), (h, w)
        assert llava_next.hires_from_features(packed[0], newline, side) == grid


def test_idefics3_pixel_shuffle_row_major_for_every_scale(tiny_family):
    """SmolVLM shuffles by 4 (Idefics3 by 2): the shuffled grid stays row-major."""
    shuffle = tiny_family("idefics3").model.model.connector.pixel_shuffle
    n = 8
    for scale in (2, 4):
        out = shuffle(_coords(n, n, 2)[None], scale)[0]
        side = n // scale
        y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        assert torch.equal(out[:, :2].reshape(side, side, 2), torch.stack([y * scale, x * scale], -1).float())


def test_mistral3_single_row_and_adjacent_images():
    """Pure parsing: a one-row picture ends at [IMG_END] at once; two pictures back to back are told apart by it."""
    IMG, BRK, END = 10, 12, 13
    ids = torch.tensor([1, IMG, IMG, END, IMG, BRK, IMG, END, IMG, IMG, IMG, END, 7])
    for known in (True, False):
        row = mistral3.mistral3_row_images(ids, IMG, *((BRK, END) if known else (None, None)))
        assert [(r.image, r.grid, r.positions.tolist()) for r in row.regions] == [
            (0, (1, 2), [1, 2]), (1, (2, 1), [4, 6]), (2, (1, 3), [8, 9, 10])]
        assert row.separators.tolist() == [3, 5, 7, 11]
    with pytest.raises(Exception, match="rows of"):
        mistral3.mistral3_row_images(torch.tensor([IMG, IMG, BRK, IMG, END]), IMG)


def test_idefics3_unsplit_pictures_are_full(tiny_family):
    tiny = tiny_family("idefics3")
    rows = tiny.two_rows()
    inputs = dict(tiny.processor(images=[imgs for _, imgs in rows], text=[t for t, _ in rows], return_tensors="pt",
                                 padding=True, padding_side="left", do_image_splitting=False))
    layout = layouts(tiny, inputs)
    assert [[(r.image, r.kind, r.grid) for r in row.regions] for row in layout] == [
        [(0, "full", (3, 3))], [(0, "full", (3, 3)), (1, "full", (3, 3))]]
    with torch.no_grad():
        tiny.model(**inputs)  # the model agrees: it raises when image tokens and features differ in number
