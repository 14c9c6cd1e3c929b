"""fastrm_core.inputs.prepare_inputs: the one input preparation of the Guard, calibration and distillation."""

import copy
import sys
import threading

import pytest
import torch

from fastrm_core.inputs import prepare_inputs
from fastrm_core.testing import blank_image, llava_prompt
from guardrail.limits import Limits, check_question


def test_a_batch_is_left_padded_on_the_models_device_and_dtype(tiny_llava):
    model, processor = tiny_llava
    size = processor.image_processor.crop_size["height"]
    images = [blank_image(size, (200, 30, 30)), blank_image(size, (30, 200, 30))]
    prompts = [llava_prompt("What color?"), llava_prompt("What color is the big circle on the left?")]
    processor.tokenizer.padding_side = "right"
    half = copy.deepcopy(model).to(torch.bfloat16)  # the session's model stays as it is
    inputs = prepare_inputs(half, processor, images, prompts)
    assert processor.tokenizer.padding_side == "right"  # not mutated
    mask = inputs["attention_mask"]
    assert mask.shape[0] == 2 and not mask[0, 0] and mask[0, -1] and mask[1].all()  # left padding
    assert inputs["pixel_values"].dtype == torch.bfloat16 and inputs["input_ids"].dtype == torch.long
    one = prepare_inputs(model, processor, images[1:], prompts[1:])
    assert one["pixel_values"].dtype == torch.float32
    assert torch.equal(one["input_ids"], inputs["input_ids"][1:])  # the longest row needs no padding


def test_images_and_prompts_must_pair_up(tiny_llava):
    model, processor = tiny_llava
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        prepare_inputs(model, processor, [None, None], ["a"])


def test_concurrent_calls_through_one_processor_do_not_see_each_others_padding(tiny_llava):
    # a padded batch in one thread, the question-length check in another: the fast tokenizer's shared
    # padding state used to flip mid-call ("Unable to create tensor ... activate padding")
    model, processor = tiny_llava
    size = processor.image_processor.crop_size["height"]
    images = [blank_image(size, (200, 30, 30)), blank_image(size, (30, 200, 30))]
    prompts = [llava_prompt("What color?"), llava_prompt("What color is the big circle on the left?")]
    errors: list[BaseException] = []
    done = threading.Event()

    def batches() -> None:
        try:
            for _ in range(400):
                assert prepare_inputs(model, processor, images, prompts)["input_ids"].shape[0] == 2
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()

    def questions() -> None:  # the Guard's question-length check tokenises on the same tokenizer
        try:
            for _ in range(100_000):
                if done.is_set():
                    break
                check_question("What color is the big circle on the left?", Limits(), processor.tokenizer)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=batches), threading.Thread(target=questions)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race shows within a few hundred calls
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[0]
