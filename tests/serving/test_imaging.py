"""serving/imaging.py: the one normalisation shared by the clean stage and the app."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from serving.imaging import ImageRejected, open_upright_rgb, resize_longest, sniff_non_image

# (image-server path, reason it is refused)
REFUSED = [
    ("/bad/html.jpg", "not_image"),
    ("/svg/image.svg", "not_image"),
    ("/bad/empty.jpg", "empty"),
    ("/bad/truncated.jpg", "truncated"),
    ("/img/bomb.png", "too_many_pixels"),
]


@pytest.mark.parametrize("path,reason", REFUSED)
def test_refused_inputs_carry_a_reason(image_server, path, reason):
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(image_server.static(path))
    assert caught.value.reason == reason


@pytest.mark.parametrize("head,kind", [
    (b"%PDF-1.7\n", "PDF"), (b"  <?xml version='1.0'?><svg xmlns=", "SVG"), (b"<!DOCTYPE html><html>", "HTML"),
    (b"<?xml version='1.0'?><root/>", "XML"), (b"\xff\xd8\xff\xe0", None), (b"\x89PNG\r\n", None),
])
def test_sniff_non_image(head, kind):
    assert sniff_non_image(head) == kind


def test_pdf_and_eps_are_refused_without_being_parsed():
    with pytest.raises(ImageRejected, match="PDF"):
        open_upright_rgb(b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    with pytest.raises(ImageRejected) as caught:  # Pillow could hand EPS to Ghostscript; we never let it
        open_upright_rgb(eps)
    assert caught.value.reason == "not_image"


def test_pixel_cap_is_checked_from_the_header(image_server):
    with pytest.raises(ImageRejected, match="pixel cap"):
        open_upright_rgb(image_server.good_image("x", 0, "png"), max_pixels=100 * 100)


@pytest.mark.parametrize("path,size", [
    ("/img/cmyk.jpg", (200, 150)), ("/img/16bit.png", (200, 150)), ("/img/rgba.png", (200, 150)),
    ("/img/animated.gif", (200, 150)), ("/img/exif-rotated.jpg", (100, 200)), ("/img/tiny.png", (1, 1)),
])
def test_every_accepted_input_comes_out_upright_rgb(image_server, path, size):
    img = open_upright_rgb(image_server.static(path))
    assert (img.mode, img.size) == ("RGB", size)


def test_min_side(image_server):
    with pytest.raises(ImageRejected) as caught:
        open_upright_rgb(image_server.static("/img/tiny.png"), min_side=64)
    assert caught.value.reason == "too_small"


def test_sixteen_bit_grey_is_rescaled_not_clipped(image_server):
    grey = np.asarray(open_upright_rgb(image_server.static("/img/16bit.png")))[..., 0]
    assert grey[:, 0].max() < 5 and grey[:, -1].min() > 250 and 100 < grey.mean() < 155


def test_sources_can_be_bytes_paths_files_or_pil(image_server, tmp_path):
    data = image_server.static("/img/exif-rotated.jpg")
    (tmp_path / "p.jpg").write_bytes(data)
    outs = [open_upright_rgb(s) for s in (data, tmp_path / "p.jpg", str(tmp_path / "p.jpg"), io.BytesIO(data),
                                            Image.open(io.BytesIO(data)))]
    assert {o.size for o in outs} == {(100, 200)}
    assert len({o.tobytes() for o in outs}) == 1


def test_draft_mode_decodes_large_jpegs_smaller_but_not_below_the_asked_size():
    big = io.BytesIO()
    Image.new("RGB", (4032, 3024), (120, 90, 60)).save(big, "JPEG")
    img = open_upright_rgb(big.getvalue(), draft_size=(512, 512))
    assert img.size == (1008, 756)  # 1/4 scale: the smallest DCT scale still >= 512 on both sides
    assert open_upright_rgb(big.getvalue()).size == (4032, 3024)


@pytest.mark.parametrize("size,max_side,expected", [((1000, 500), 512, (512, 256)), ((300, 200), 512, (300, 200)),
                                                     ((500, 2000), 512, (128, 512))])
def test_resize_longest_never_enlarges(size, max_side, expected):
    assert resize_longest(Image.new("RGB", size), max_side).size == expected
