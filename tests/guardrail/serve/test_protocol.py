"""Request parsing and image URLs: every refusal names what is wrong; nothing outside the image folder is read."""

import base64
import io

import pytest
from PIL import Image

pytest.importorskip("fastapi")

from fastrm_common.errors import InputError
from guardrail.serve.images import image_from_url
from guardrail.serve.protocol import RequestError, cut_at_stop, parse_chat_request


def data_url(size=(8, 6), fmt="PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def body(**over):
    b = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What color is the circle?"},
        {"type": "image_url", "image_url": {"url": data_url()}}]}]}
    b.update(over)
    return b


def parse(b, **kw):
    loader = kw.pop("loader", lambda url: image_from_url(url, max_pixels=10_000))
    args = dict(image_loader=loader, max_tokens=64, default_max_tokens=16, max_question_chars=200)
    args.update(kw)
    return parse_chat_request(b, **args)


def test_a_plain_request_becomes_one_guarded_call():
    call = parse(body(max_tokens=5, stop="."))
    assert call.question == "What color is the circle?" and call.image.size == (8, 6)
    assert call.generate_kwargs == {"max_new_tokens": 5} and call.stop == (".",) and not call.stream


def test_sampling_settings_and_default_tokens():
    call = parse(body(temperature=0.7, top_p=0.9, seed=3, max_completion_tokens=7))
    assert call.generate_kwargs == {"max_new_tokens": 7, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
    assert call.seed == 3
    assert parse(body(temperature=0)).generate_kwargs == {"max_new_tokens": 16}  # 0: greedy


@pytest.mark.parametrize("over, needle", [
    ({"frequency_penalty": 1, "tools": []}, "unsupported fields: frequency_penalty, tools"),
    ({"n": 2}, "n:"),
    ({"max_tokens": 65}, "above this server's limit of 64"),
    ({"max_tokens": 0}, "max_tokens:"),
    ({"temperature": 3}, "temperature:"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": []}, "messages:"),
    ({"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]},
     "exactly one user message"),
    ({"messages": [{"role": "user", "content": "no image here"}]}, "exactly one image_url part; it holds 0"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url()}}]}]},
     "no question text"),
    ({"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 201},
                                                {"type": "image_url", "image_url": {"url": data_url()}}]}]},
     "the limit is 200"),
])
def test_bad_requests_are_refused_with_the_reason(over, needle):
    with pytest.raises(RequestError) as err:
        parse(body(**over))
    assert needle in str(err.value) and err.value.status == 400


def test_the_image_is_decoded_last_so_a_bad_field_costs_no_decoding():
    calls = []
    with pytest.raises(RequestError):
        parse(body(n=3), loader=lambda url: calls.append(url))
    assert calls == []


def test_cut_at_stop():
    assert cut_at_stop("a red square.", (".", " sq")) == ("a red", True)
    assert cut_at_stop("red", ("x",)) == ("red", False)


# ------------------------------------------------------------------------------------------ image URLs
def test_remote_urls_are_never_fetched():
    for url in ("http://127.0.0.1:1/x.png", "https://example.com/a.png", "ftp://h/a.png", "//h/a.png"):
        with pytest.raises(InputError, match="not fetched"):
            image_from_url(url, max_pixels=100)


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(InputError, match="8x6 = 48 pixels; the limit is 47"):
        image_from_url(data_url(), max_pixels=47)
    assert image_from_url(data_url(), max_pixels=48).size == (8, 6)


def test_bad_data_urls():
    with pytest.raises(InputError, match="base64"):
        image_from_url("data:image/png,rawbytes", max_pixels=100)
    with pytest.raises(InputError, match="not valid base64"):
        image_from_url("data:image/png;base64,@@@", max_pixels=100)
    with pytest.raises(InputError, match="could not be decoded"):
        image_from_url("data:image/png;base64," + base64.b64encode(b"not an image").decode(), max_pixels=100)


def test_file_urls_only_inside_the_allowed_folder(tmp_path):
    allowed = tmp_path / "images"
    allowed.mkdir()
    Image.new("RGB", (5, 4)).save(allowed / "ok.png")
    secret = tmp_path / "secret.png"
    Image.new("RGB", (5, 4)).save(secret)
    (allowed / "link.png").symlink_to(secret)
    assert image_from_url(f"file://{allowed}/ok.png", max_pixels=100, image_dir=allowed).size == (5, 4)
    with pytest.raises(InputError, match="disabled"):
        image_from_url(f"file://{allowed}/ok.png", max_pixels=100)
    for url in (f"file://{secret}", f"file://{allowed}/../secret.png", f"file://{allowed}/link.png",
                f"file://{allowed}/%2e%2e/secret.png"):
        with pytest.raises(InputError, match="outside the server's image folder") as err:
            image_from_url(url, max_pixels=100, image_dir=allowed)
        assert str(secret) not in str(err.value)
    with pytest.raises(InputError, match="names no file"):
        image_from_url(f"file://{allowed}/missing.png", max_pixels=100, image_dir=allowed)
    with pytest.raises(InputError, match="local path"):
        image_from_url(f"file://otherhost{allowed}/ok.png", max_pixels=100, image_dir=allowed)
