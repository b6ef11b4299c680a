"""app.py as a real process on loopback, reached by gradio_client (/predict) and httpx (/classify)."""
from __future__ import annotations

import base64
import json
import math
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from serving.model import Classifier
from serving.settings import Settings
from serving.web import MESSAGES
from tests.live_app import ROOT, LiveApp, gradio_call
from tests.tiny_model import half_transparent

# (name, bytes from the image server or a literal, the reason both the page and /classify give).
BAD = [
    ("notes.txt", b"just some text, not a picture", "not_image"),
    ("drawing.svg", "/svg/image.svg", "not_image"),
    ("page.jpg", "/bad/html-as-image.jpg", "not_image"),
    ("empty.jpg", b"", "empty"),
    ("cut.jpg", "/bad/truncated.jpg", "truncated"),
    ("bomb.png", "/img/bomb.png", "too_many_pixels"),
]


@pytest.fixture(scope="module")
def live(tiny_model):
    with LiveApp({"MODEL_DIR": str(tiny_model.folder), "MAX_UPLOAD_MB": "1"}) as app:
        yield app


@pytest.fixture(scope="module")
def client(live):
    return Client(live.url, verbose=False)


@pytest.fixture
def example(tiny_model):
    return sorted((tiny_model.folder / "examples").glob("*"))[0]


def _bad_file(tmp_path, image_server, name, body):
    path = tmp_path / name
    path.write_bytes(image_server.static(body) if isinstance(body, str) else body)
    return path


def test_predict_through_gradio_client(client, example, tiny_model):
    out = client.predict(handle_file(str(example)), api_name="/predict")
    expected = Classifier.from_folder(tiny_model.folder).classify(example)
    assert out["label"] == max(expected, key=expected.get)
    got = {c["label"]: c["confidence"] for c in out["confidences"]}
    assert math.isclose(sum(got.values()), 1.0, abs_tol=1e-6)  # 3 labels: the top 3 are all of them
    assert all(math.isclose(got[k], expected[k], abs_tol=1e-6) for k in expected)


def _sixteen_bit(rgba: Image.Image) -> np.ndarray:
    """The picture's grey as 16-bit values that use a quarter of their range, as many scanners' files do."""
    return np.asarray(rgba.convert("L"), dtype=np.uint16) * 64 + 1000


def _by_hand(rgba: Image.Image, mode: str) -> Image.Image:
    """What the model should see, made with Pillow and numpy directly: transparency on white; 16-bit grey with the
    range it uses stretched to 0..255."""
    if mode == "I;16":
        grey = _sixteen_bit(rgba).astype(np.float64)
        grey = np.floor((grey - grey.min()) * 255 / (grey.max() - grey.min()) + 0.5)
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    source = rgba if mode == "RGBA" else rgba.convert("LA").convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), source).convert("RGB")


def _done_wrong(rgba: Image.Image, mode: str) -> Image.Image:
    """What Gradio's own conversion made of it: the alpha dropped (black underneath), 16 bits divided by 257."""
    if mode == "I;16":
        return Image.fromarray((_sixteen_bit(rgba) // 257).astype(np.uint8)).convert("RGB")
    return rgba.convert("RGB")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "I;16"])
def test_the_page_prepares_any_image_as_training_did(client, example, tmp_path, mode):
    """Transparency blended onto white, 16-bit scaled: serving.imaging's rules, not Gradio's own conversion
    (which turned transparent pixels black before the model saw them). The expected answer is the page's for
    the same picture prepared by hand, and differs from its answer for the picture prepared the wrong way."""
    rgba = half_transparent(example)
    sent = {"RGBA": rgba, "LA": rgba.convert("LA"), "I;16": Image.fromarray(_sixteen_bit(rgba))}[mode]
    paths = {name: tmp_path / f"{mode.replace(';', '')}_{name}.png" for name in ("sent", "by_hand", "wrong")}
    sent.save(paths["sent"])
    _by_hand(rgba, mode).save(paths["by_hand"])
    _done_wrong(rgba, mode).save(paths["wrong"])
    got = {name: _as_dict(client.predict(handle_file(str(path)), api_name="/predict"))
           for name, path in paths.items()}
    assert all(math.isclose(got["sent"][k], got["by_hand"][k], abs_tol=1e-6) for k in got["by_hand"])
    assert any(abs(got["sent"][k] - got["wrong"][k]) > 1e-4 for k in got["sent"])


def served_precision(config: dict) -> str:
    """What SERVE_PRECISION=auto should serve here, read independently of serving/loader.py: int8 when training's
    check let it and this CPU has VNNI (or AMX), else float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        flags = []
    fast = any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    return "int8" if fast and config.get("int8", {}).get("serve") else "float32"


def novelty_threshold(config: dict, precision: str) -> float:
    return config["novelty"]["threshold"] if precision == "float32" else config["novelty"][precision]["threshold"]


def _as_dict(out: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in out["confidences"]}


def test_classify_json_endpoint(live, example, tiny_model):
    r = httpx.post(live.url + "/classify", files={"file": example.open("rb")}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["confidences"]) == {"circle", "square", "triangle"}  # tests/tiny_model.py's SHAPES
    assert math.isclose(sum(body["confidences"].values()), 1.0, abs_tol=1e-9)
    assert body["label"] == max(body["confidences"], key=body["confidences"].get)
    # The model auto chose, and the "none of these" check with the threshold training wrote for it into config.json.
    config = json.loads((tiny_model.folder / "config.json").read_text())
    assert body["precision"] == served_precision(config)
    threshold = novelty_threshold(config, body["precision"])
    assert body["novelty_threshold"] == threshold and isinstance(body["novelty"], float)
    assert body["in_domain"] is (body["novelty"] <= threshold)


def test_a_folder_without_the_check_still_serves_and_says_so(tiny_model, example, tmp_path):
    """An older folder, or an export.pkl converted without --data: in_domain null, and a sentence on the page."""
    from starlette.testclient import TestClient

    import app
    from serving.page import NO_CHECK

    folder = tmp_path / "older"
    shutil.copytree(tiny_model.folder, folder, ignore=shutil.ignore_patterns("novelty_features.npy"))
    config = json.loads((folder / "config.json").read_text())
    del config["novelty"]
    (folder / "config.json").write_text(json.dumps(config))
    client = TestClient(app.build_app(Settings(model_dir=folder, ort_cache_dir=tmp_path / "ort")))
    body = client.post("/classify", files={"file": example.open("rb")}).json()
    assert (body["in_domain"], body["novelty"], body["novelty_threshold"]) == (None, None, None)
    assert json.dumps(NO_CHECK)[1:-1] in client.get("/config").text


def test_the_check_is_in_the_openapi_schema_and_the_gradio_api(live, client):
    schema = httpx.get(live.url + "/openapi.json", timeout=10).json()["components"]["schemas"]["Prediction"]
    assert {"in_domain", "novelty", "novelty_threshold", "precision"} <= set(schema["properties"])
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/predict", "/check"} <= set(endpoints)
    assert [r["component"] for r in endpoints["/predict"]["returns"]] == ["Label"]  # unchanged for old clients
    assert [r["component"] for r in endpoints["/check"]["returns"]] == ["Label", "Json"]


def test_check_through_gradio_client(client, example, tiny_model):
    label, verdict = client.predict(handle_file(str(example)), api_name="/check")
    config = json.loads((tiny_model.folder / "config.json").read_text())
    threshold = novelty_threshold(config, served_precision(config))
    assert verdict["novelty_threshold"] == threshold and verdict["in_domain"] is (verdict["novelty"] <= threshold)
    assert label == client.predict(handle_file(str(example)), api_name="/predict")


def test_classify_is_described_in_openapi(live):
    spec = httpx.get(live.url + "/openapi.json", timeout=10).json()
    post = spec["paths"]["/classify"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"]
    assert {"200", "413", "415", "422"} <= set(post["responses"])


@pytest.mark.parametrize("request_", [{"files": {"image": b"x"}}, {"content": b"raw bytes"}, {}])
def test_a_request_without_a_file_field_gets_the_documented_error_body(live, request_):
    r = httpx.post(live.url + "/classify", timeout=30, **request_)
    assert r.status_code == 400
    assert r.json() == {"error": MESSAGES["no_file"], "reason": "no_file"}


def test_a_url_instead_of_a_file_is_named_as_such(live):
    r = httpx.post(live.url + "/classify", data={"file": "https://example.org/bear.jpg"}, timeout=30)
    assert (r.status_code, r.json()) == (400, {"error": MESSAGES["url"], "reason": "url"})


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
def test_other_methods_on_classify_are_told_to_post(live, method):
    r = httpx.request(method, live.url + "/classify", timeout=30)
    assert (r.status_code, r.headers["allow"]) == (405, "POST")
    if method != "HEAD":
        assert r.json() == {"error": MESSAGES["method"], "reason": "method"}


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary=xyz"])
def test_a_malformed_multipart_body_gets_the_documented_error_body(live, example, content_type):
    r = httpx.post(live.url + "/classify", content=example.read_bytes(), headers={"content-type": content_type},
                   timeout=30)
    assert (r.status_code, r.json()) == (400, {"error": MESSAGES["no_file"], "reason": "no_file"})


def _answer_to_an_unfinished_upload(url: str, path: str, declared: int | None, sent: int, wait: float) -> str:
    """Start a POST of a `sent`-byte file (or declare `declared` bytes and send none), never finish it, and
    return what the server answers meanwhile: "" if nothing within `wait` seconds."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    with socket.create_connection((host, port), timeout=wait) as s:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
        s.sendall((head + (f"Content-Length: {declared}" if declared else "Transfer-Encoding: chunked")
                   + "\r\n\r\n").encode())
        if not declared:
            part = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n' + b"\0" * sent
            s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
                s.settimeout(1)  # once it answers, the rest of the answer follows at once
        except (socket.timeout, ConnectionResetError):
            pass
        return answer.decode(errors="replace")


def test_a_body_over_the_cap_is_refused_as_it_arrives_not_after(live):
    """MAX_UPLOAD_MB=1 here: refused from its Content-Length, or once ~1.4 MB of a chunked body has come,
    while the client is still sending (before, /classify spooled a 2 GB body to disk before refusing it)."""
    for path in ("/classify", "/gradio_api/upload"):  # the page's uploads: Gradio's own 1 MB check may come first
        for declared, sent in ((2_000_000_000, 0), (None, 1_600_000)):
            answer = _answer_to_an_unfinished_upload(live.url, path, declared, sent, wait=10)
            assert answer.startswith("HTTP/1.1 413"), (path, declared, answer[:300])
            if path == "/classify":
                assert answer.endswith(json.dumps({"error": MESSAGES["too_large"], "reason": "too_large"},
                                                  separators=(",", ":"))), answer
    # Under the cap, the server waits for the rest of the body, as it would for any size without the cap.
    assert _answer_to_an_unfinished_upload(live.url, "/classify", None, 500_000, wait=2) == ""


def test_an_upload_cut_off_at_the_cap_leaves_no_files_behind(tiny_model, tmp_path):
    """Three files, each under Gradio's own 1 MB limit but over the cap together, sent without a length: cut off
    midway, and the files Gradio had begun to write are deleted (nothing else would ever delete them)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()

    def body():
        for n in range(3):
            yield (f'--xyz\r\nContent-Disposition: form-data; name="files"; filename="{n}.jpg"\r\n'
                   "Content-Type: image/jpeg\r\n\r\n").encode() + b"\0" * 600_000 + b"\r\n"
        yield b"--xyz--\r\n"

    with LiveApp({"MODEL_DIR": str(tiny_model.folder), "MAX_UPLOAD_MB": "1", "TMPDIR": str(scratch)}) as app:
        before = {p for p in scratch.rglob("*") if p.is_file()}
        r = httpx.post(app.url + "/gradio_api/upload", content=body(), timeout=30,
                       headers={"content-type": "multipart/form-data; boundary=xyz"})
        assert (r.status_code, r.json()["reason"]) == (413, "too_large")
        assert {p for p in scratch.rglob("*") if p.is_file()} == before


def test_an_inline_image_over_the_cap_is_refused(live, example):
    inline = "data:image/jpeg;base64," + base64.b64encode(example.read_bytes() + b"\0" * 1_100_000).decode()
    r = httpx.post(f"{live.url}/gradio_api/call/predict", timeout=30,
                   json={"data": [{"url": inline, "meta": {"_type": "gradio.FileData"}}]})
    assert (r.status_code, r.json()) == (413, {"error": MESSAGES["too_large"], "reason": "too_large"})


def test_urls_are_not_fetched(live, client, example):
    """An API call naming a URL gets a sentence; the server downloads nothing (the address does not exist)."""
    tracebacks = live.log.count("Traceback")
    with pytest.raises(AppError, match="doesn't fetch images from links"):
        client.predict(handle_file("http://images.invalid/bear.jpg"), api_name="/predict")
    assert live.log.count("Traceback") == tracebacks
    assert "refused to fetch a URL" in live.log


@pytest.mark.parametrize("name,body,reason", BAD)
def test_bad_uploads_get_a_sentence_and_the_app_keeps_serving(client, live, tmp_path, image_server, example,
                                                               name, body, reason):
    path = _bad_file(tmp_path, image_server, name, body)
    tracebacks = live.log.count("Traceback")
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(path)), api_name="/predict")
    assert str(caught.value).strip('"') == MESSAGES[reason]
    assert "/tmp" not in str(caught.value) and "Traceback" not in str(caught.value)
    assert live.log.count("Traceback") == tracebacks  # a visitor's bad file is not a server fault to log

    r = httpx.post(live.url + "/classify", files={"file": (name, path.read_bytes())}, timeout=30)
    assert 400 <= r.status_code < 500
    assert r.json() == {"error": MESSAGES[reason], "reason": reason}

    assert httpx.post(live.url + "/classify", files={"file": example.open("rb")}, timeout=30).status_code == 200
    assert client.predict(handle_file(str(example)), api_name="/predict")["label"]


def _call_predict(url: str, file_data: dict) -> str:
    """Gradio's plain HTTP API with a hand-made FileData: the result stream, as text."""
    with httpx.Client(timeout=30) as c:
        return gradio_call(c, url, file_data)


def _confidences(stream: str) -> dict[str, float]:
    assert "event: complete" in stream, stream
    label = json.loads(stream.split("data:", 1)[1])[0]
    return {c["label"]: c["confidence"] for c in label["confidences"]}


def test_inline_images_through_gradios_http_api_are_classified_as_sent(live, tiny_model, example, tmp_path):
    """A data: URL instead of an upload: the same probabilities as the file itself, transparency included."""
    half_transparent(example).save(tmp_path / "clear.png")
    # The model the app serves: int8 where training's check and this CPU allow it (SERVE_PRECISION=auto).
    served = served_precision(json.loads((tiny_model.folder / "config.json").read_text()))
    clf = Classifier.from_folder(tiny_model.folder, precision=served)
    for path, mime in ((example, "image/jpeg"), (tmp_path / "clear.png", "image/png")):
        inline = f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()
        got = _confidences(_call_predict(live.url, {"url": inline, "meta": {"_type": "gradio.FileData"}}))
        expected = clf.classify(path)
        assert all(math.isclose(got[k], expected[k], abs_tol=1e-6) for k in expected), path


@pytest.mark.parametrize("url", ["data:image/jpeg;base64," + base64.b64encode(b"not a picture").decode(),
                                 "data:image/jpeg;base64,%%%not-base64%%%"])
def test_inline_junk_gets_a_sentence(live, url):
    tracebacks = live.log.count("Traceback")
    stream = _call_predict(live.url, {"url": url, "meta": {"_type": "gradio.FileData"}})
    assert "event: error" in stream and json.dumps(MESSAGES["not_image"]) in stream, stream
    assert live.log.count("Traceback") == tracebacks


def test_files_on_the_server_are_not_taken_as_input(live, client, example, tiny_model):
    """Only uploads: naming a file on the server, even an image, gets an error, not a prediction."""
    for path in ("/etc/hostname", "/dev/zero", str(example.resolve()), "no-such-photo.jpg"):
        stream = _call_predict(live.url, {"path": path, "meta": {"_type": "gradio.FileData"}})
        assert "event: error" in stream and "confidences" not in stream, (path, stream)
    assert client.predict(handle_file(str(example)), api_name="/predict")["label"]


def test_uploads_over_the_cap_are_refused(client, live, tmp_path, example):
    big = tmp_path / "big.jpg"
    big.write_bytes(example.read_bytes() + b"\0" * 1_100_000)  # MAX_UPLOAD_MB=1 for this app
    r = httpx.post(live.url + "/classify", files={"file": big.open("rb")}, timeout=30)
    assert (r.status_code, r.json()["reason"]) == (413, "too_large")
    with pytest.raises(ValueError, match=r"exceeds the maximum file size of \d+ bytes"):  # gradio_client's own check
        client.predict(handle_file(str(big)), api_name="/predict")
    r = httpx.post(live.url + "/gradio_api/upload", files={"files": big.open("rb")}, timeout=30)  # and the server's
    assert r.status_code == 413, r.text
    assert httpx.post(live.url + "/classify", files={"file": example.open("rb")}, timeout=30).status_code == 200


def test_page_names_the_labels_error_rate_and_source(live, tiny_model):
    config = httpx.get(live.url + "/config", timeout=10).text
    for label in ("circle", "square", "triangle"):
        assert label in config
    assert "Validation error rate" in config and str(tiny_model.folder) in config
    served = served_precision(json.loads((tiny_model.folder / "config.json").read_text()))
    assert f"`{tiny_model.folder}` ({served})" in config  # which model serves: float32 or int8


def test_internal_details_stay_in_the_server_log(live, tmp_path, image_server):
    """The visitor reads our sentence; what exactly was wrong with the file goes to the log, and only there."""
    path = _bad_file(tmp_path, image_server, "cut.jpg", "/bad/truncated.jpg")
    r = httpx.post(live.url + "/classify", files={"file": path.open("rb")}, timeout=30)
    assert r.json() == {"error": MESSAGES["truncated"], "reason": "truncated"}
    deadline = time.monotonic() + 10  # the log is another process's, written as it goes
    while "refused an upload: truncated (" not in live.log and time.monotonic() < deadline:
        time.sleep(0.1)
    detail = live.log.split("refused an upload: truncated (")[-1].splitlines()[0].rpartition(")")[0]
    assert detail.startswith("the image data is cut short") and detail not in r.text, detail


def test_serving_path_imports_neither_torch_nor_fastai(tiny_model):
    code = ("import sys, app; api = app.build_app(); bad = {'torch', 'fastai'} & set(sys.modules); "
            "assert not bad, bad; print(api.description)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**LiveApp({}).env, "MODEL_DIR": str(tiny_model.folder)})
    assert out.returncode == 0, out.stderr
    assert "circle" in out.stdout


def test_importing_app_only_defines_things(tmp_path):
    """No model, no Gradio, no thread and no environment read until build_app() or main() is called."""
    code = ("import sys, threading, app; assert 'gradio' not in sys.modules, 'gradio imported'; "
            "assert threading.active_count() == 1, threading.enumerate(); print(app.build_app.__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**LiveApp({}).env, "MODEL_DIR": str(tmp_path / "nowhere"), "MAX_UPLOAD_MB": "abc"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "build_app"


def test_build_app_serves_with_the_settings_it_is_given(tiny_model, example, tmp_path, monkeypatch):
    """Passed down, never re-read: what the environment says meanwhile changes nothing."""
    from starlette.testclient import TestClient

    import app

    settings = Settings(model_dir=tiny_model.folder, max_upload_mb=1, ort_cache_dir=tmp_path / "ort")
    for name in ("MODEL_DIR", "MAX_UPLOAD_MB", "ORT_CACHE_DIR", "APP_CONCURRENCY"):
        monkeypatch.setenv(name, "not used")
    client = TestClient(app.build_app(settings))
    r = client.post("/classify", files={"file": example.open("rb")})
    assert r.status_code == 200 and set(r.json()["confidences"]) == {"circle", "square", "triangle"}
    big = example.read_bytes() + b"\0" * 1_100_000  # over 1 MB, under the 10 MB default
    assert client.post("/classify", files={"file": ("big.jpg", big)}).json()["reason"] == "too_large"
    assert list((tmp_path / "ort").glob("*.onnx"))  # the optimized copy went where the settings said


def test_no_model_exits_with_what_to_do(tmp_path):
    out = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**LiveApp({}).env, "MODEL_DIR": str(tmp_path / "nowhere")})
    assert out.returncode != 0
    assert "python -m training all" in out.stderr and "MODEL_REPO" in out.stderr


@pytest.mark.parametrize("name, value", [("MAX_UPLOAD_MB", "abc"), ("GRADIO_SERVER_PORT", "70000"),
                                         ("APP_CONCURRENCY", "0")])
def test_a_bad_setting_exits_with_a_sentence(tiny_model, name, value):
    out = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**LiveApp({}).env, "MODEL_DIR": str(tiny_model.folder), name: value})
    assert out.returncode == 1
    assert out.stderr.strip().startswith(f"app.py: {name}={value!r} is not usable: it takes ")
    assert "Traceback" not in out.stderr


def test_uvicorn_runs_the_app_factory_with_several_workers(tiny_model, example):
    """`uvicorn app:build_app --factory --workers 2`: each worker builds the app; /classify answers."""
    command = [sys.executable, "-m", "uvicorn", "app:build_app", "--factory", "--workers", "2"]
    app = LiveApp({"MODEL_DIR": str(tiny_model.folder)}, command=command)
    app.command += ["--host", "127.0.0.1", "--port", str(app.port)]
    with app:  # ready once one worker answers; the other may still be building its app
        deadline = time.monotonic() + 120
        while app.log.count("Application startup complete") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert app.log.count("Application startup complete") == 2, app.log[-3000:]
        for _ in range(4):
            r = httpx.post(app.url + "/classify", files={"file": example.open("rb")}, timeout=30)
            assert r.status_code == 200, r.text
        assert app.log.count("loaded ") == 2  # each worker logs, as `python app.py` does: build_app() set it up


def test_uvicorn_serves_app_app(tiny_model, example):
    """`uvicorn app:app` (and so `uvicorn app:app --reload`): the module's `app`, built when uvicorn asks for it."""
    command = [sys.executable, "-m", "uvicorn", "app:app"]
    app = LiveApp({"MODEL_DIR": str(tiny_model.folder), "MAX_UPLOAD_MB": "1"}, command=command)
    app.command += ["--host", "127.0.0.1", "--port", str(app.port)]
    with app:
        r = httpx.post(app.url + "/classify", files={"file": example.open("rb")}, timeout=30)
        assert r.status_code == 200 and set(r.json()["confidences"]) == {"circle", "square", "triangle"}
        big = httpx.post(app.url + "/classify", files={"file": ("big.jpg", b"\0" * 1_500_000)}, timeout=30)
        assert big.status_code == 413  # the body cap: the same app as `python app.py`'s


def test_the_api_page_says_what_predict_takes_and_what_sgd_returns(client):
    """view_api(): /predict takes an uploaded file (the app refuses URLs); /sgd's result has its keys, not Any."""
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/predict", "/check"):
        photo = api[name]["parameters"][0]["python_type"]["description"]
        assert "uploaded" in photo and "A URL is refused" in photo and "publicly available" not in photo, photo
    [fit] = api["/sgd"]["returns"]
    for key in ("a1", "a2", "loss", "best_loss", "true_a1", "true_a2", "steps", "verdict", "message"):
        assert f"{key}:" in fit["python_type"]["type"], fit
    assert fit["python_type"]["type"] != "Any" and "converged" in fit["python_type"]["type"]
