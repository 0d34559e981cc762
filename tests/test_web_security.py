"""No web page and no remote user can reach the machine through the app.

Everything here runs against the server the launcher starts (``build_server`` behind uvicorn,
the wizard mounted into FastAPI), with raw HTTP where a browser or an attacker would send what
gradio_client never does: a foreign Host (DNS rebinding), a foreign Origin (another site's
page), a forged file argument, a path outside the workspace of an exposed server.
"""
from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest
import tomli_w
from conftest import draw_shape_images, lora_job

USER, PASSWORD = "owner", "s3cret-pw"


def start(tmp_path_factory, **kwargs):
    from engine.system.hardware import pick_tier, probe
    from webapp.server import build_server, find_free_port, run_server

    port = find_free_port("127.0.0.1", 7800)
    api = build_server(tier=pick_tier(probe()), **kwargs)
    return run_server(api, "127.0.0.1", port, block=False), port


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The default server: 127.0.0.1, no login."""
    server, port = start(tmp_path_factory)
    yield port
    server.should_exit = True


@pytest.fixture(scope="module")
def private(tmp_path_factory) -> Path:
    """Files of the machine's owner that no web request may reach: notes, a dataset with
    captions, a model file, a preset."""
    root = tmp_path_factory.mktemp("private")
    (root / "notes.txt").write_text("bank pin 1234", encoding="utf-8")
    draw_shape_images(root / "photos" / "2_me", 3, caption="me, portrait")
    (root / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (root / "mine.toml").write_text('[metadata]\nname = "x"\nschema_version = 1\n', encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def exposed(tmp_path_factory, private):
    """An exposed server (what --listen makes): login required, web paths limited to one root,
    which holds a dataset and a link that leads out of it."""
    from webapp.security import Workspace

    root = tmp_path_factory.mktemp("workspace")
    draw_shape_images(root / "data" / "3_star", 2)
    (root / "escape").symlink_to(private)
    ws = Workspace([root.resolve()], exposed=True, served=[str(root / "out")])
    server, port = start(tmp_path_factory, credentials=(USER, PASSWORD), workspace=ws)
    yield port, root
    server.should_exit = True


def request(port: int, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    """(status, headers, body) of one raw request; ``headers`` may override Host."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for key, value in {"Host": f"127.0.0.1:{port}", **(headers or {})}.items():
        conn.putheader(key, value)
    if body is not None:
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def call(port: int, api_name: str, data: list, lang: str = "en") -> tuple[str, object]:
    """Call a named endpoint over raw HTTP: ("complete" | "error", payload)."""
    status, _, body = request(port, "POST", f"/{lang}/gradio_api/call/{api_name}",
                              body=json.dumps({"data": data}).encode())
    assert status == 200, (status, body)
    event = json.loads(body)["event_id"]
    _, _, stream = request(port, "GET", f"/{lang}/gradio_api/call/{api_name}/{event}")
    lines = stream.decode().splitlines()
    kind = next(line.split(": ", 1)[1] for line in lines if line.startswith("event: ") and "heartbeat" not in line)
    payload = json.loads(lines[lines.index(f"event: {kind}") + 1].split(": ", 1)[1])
    return kind, payload


def file_data(path: Path) -> dict:
    """What a forged request puts where Gradio expects an uploaded file."""
    return {"path": str(path), "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


# ---------------------------------------------------------------- who may talk to the server

def test_a_foreign_host_is_refused_everywhere(local):
    """DNS rebinding: the attacker's name resolves to 127.0.0.1, the browser sends its Host."""
    for method, path in (("GET", "/"), ("GET", "/en/"), ("GET", "/en/gradio_api/info"),
                         ("POST", "/en/gradio_api/call/check_job"), ("POST", "/en/gradio_api/upload")):
        status, _, body = request(local, method, path, {"Host": "evil.example"}, b"{}" if method == "POST" else None)
        assert status == 421, (path, status)
        assert b"does not answer for host" in body
    for host in (f"127.0.0.1:{local}", f"localhost:{local}"):
        assert request(local, "GET", "/en/", {"Host": host})[0] == 200


def test_another_sites_page_cannot_drive_the_app_and_no_cors_is_sent(local):
    evil = {"Origin": "http://evil.example"}
    job = json.dumps({"data": ["x"]}).encode()
    assert request(local, "POST", "/en/gradio_api/call/check_job", evil, job)[0] == 403
    assert request(local, "GET", "/en/gradio_api/info", evil)[0] == 403
    assert request(local, "OPTIONS", "/en/gradio_api/call/check_job",
                   {**evil, "Access-Control-Request-Method": "POST"})[0] == 403
    # another port on localhost is another origin too
    assert request(local, "POST", "/en/gradio_api/call/check_job", {"Origin": "http://127.0.0.1:1"}, job)[0] == 403
    assert request(local, "GET", "/en/gradio_api/info", {"Origin": "null"})[0] == 403
    # a cross-site <img>/<script> (no Origin header, but the browser says where it comes from)
    assert request(local, "GET", "/en/gradio_api/info", {"Sec-Fetch-Site": "cross-site",
                                                         "Sec-Fetch-Mode": "no-cors"})[0] == 403
    # the app's own page, and a link followed from elsewhere, still work; no CORS header at all
    status, headers, _ = request(local, "POST", "/en/gradio_api/call/check_job",
                                 {"Origin": f"http://127.0.0.1:{local}"}, job)
    assert status == 200 and "access-control-allow-origin" not in headers
    status, headers, _ = request(local, "GET", "/en/", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    assert status == 200 and "access-control-allow-origin" not in headers


def test_a_forged_upload_cannot_copy_a_server_file(local, private, tmp_path, monkeypatch):
    """import_dataset with a FileData that names a server file instead of an upload: Gradio's
    own upload check applies (it did not on the mounted app), nothing is copied."""
    monkeypatch.setenv("LORAFORGE_OUTPUT", str(tmp_path / "out"))
    for target in (private / "notes.txt", private / "photos" / "2_me" / "img_0.png"):
        kind, payload = call(local, "import_dataset", [[file_data(target)], "stolen", 1])
        assert kind == "error", payload
    assert not list((tmp_path / "out").rglob("*stolen*"))
    from webapp.wizard_logic import ROOT

    assert not list((ROOT / "output" / "datasets").glob("*stolen*"))


def test_a_forged_preset_file_cannot_read_a_server_file(local, private):
    """The preset-file handler (not a named endpoint: called the way the page calls it) gets a
    FileData naming a .toml on the server: refused before the handler runs."""
    status, _, body = request(local, "GET", "/en/config")
    config = json.loads(body)
    comp = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "preset-file")
    fn = next(i for i, d in enumerate(config["dependencies"]) if [comp, "upload"] in d["targets"])
    body = json.dumps({"data": [file_data(private / "mine.toml")], "fn_index": fn, "session_hash": "forge1",
                       "event_data": None, "trigger_id": comp}).encode()
    assert request(local, "POST", "/en/gradio_api/queue/join", body=body)[0] == 200
    _, _, stream = request(local, "GET", "/en/gradio_api/queue/data?session_hash=forge1")
    text = stream.decode()
    assert '"success": false' in text.replace('"success":false', '"success": false') and "not uploaded" in text
    assert "schema_version" not in text


def test_any_bind_beyond_loopback_needs_auth(capsys):
    from webapp.security import is_loopback
    from webapp.server import serve

    for host in ("0.0.0.0", "::", "192.168.1.20", "my-pc.lan"):
        assert serve(host=host, auth=None, open_browser=False, block=False) == 2
        assert "--auth" in capsys.readouterr().err
    assert serve(listen=True, auth=None, open_browser=False, block=False) == 2
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.2", "example.org"))


def test_the_exposed_server_asks_for_a_login(exposed):
    port, _ = exposed
    assert request(port, "POST", "/en/gradio_api/call/check_job", body=b'{"data": ["x"]}')[0] in (401, 403)
    assert request(port, "GET", "/en/gradio_api/info")[0] in (401, 403)


# ---------------------------------------------------------------- what an exposed server may touch

@pytest.fixture(scope="module")
def client(exposed):
    from gradio_client import Client

    port, _ = exposed
    return Client(f"http://127.0.0.1:{port}/en/", auth=(USER, PASSWORD), verbose=False)


def outside(text) -> bool:
    return "outside the folders this server may use" in str(text)


def test_exposed_dataset_routes_stay_inside_the_workspace(client, exposed, private):
    _, root = exposed
    photos = private / "photos"
    captions = {p: p.read_text(encoding="utf-8") for p in photos.rglob("*.txt")}
    report, gallery, _ = client.predict(str(photos), api_name="/check_dataset")
    assert outside(report) and not gallery
    # a link inside the workspace that leads out of it is resolved and refused too
    report, gallery, _ = client.predict(str(root / "escape" / "photos"), api_name="/check_dataset")
    assert outside(report) and not gallery
    assert outside(client.predict(str(photos), "zkz", api_name="/add_trigger"))
    message, *_ = client.predict(str(photos), 64, "center", False, api_name="/preprocess")
    assert outside(message)
    message, *_ = client.predict(str(photos), "wd14", "", 0.35, "overwrite", "", api_name="/auto_caption")
    assert outside(message)
    assert {p: p.read_text(encoding="utf-8") for p in photos.rglob("*.txt")} == captions
    assert sorted(p.name for p in private.iterdir()) == ["mine.toml", "model.safetensors", "notes.txt", "photos"]
    # inside the workspace the same routes work
    report, gallery, _ = client.predict(str(root / "data"), api_name="/check_dataset")
    assert len(gallery) == 2 and "2 images used for training, 6 per epoch" in report, report


def test_exposed_caption_editing_cannot_read_or_write_outside(client, exposed, private):
    img = private / "photos" / "2_me" / "img_1.png"
    for call_ in (lambda: client.predict(str(img), api_name="/load_caption"),
                  lambda: client.predict(str(img), "overwritten", api_name="/save_caption")):
        try:
            result = call_()
        except Exception as err:  # Gradio refuses a value that is not one of the dropdown's choices
            result = str(err)
        assert "portrait" not in str(result)
    assert img.with_suffix(".txt").read_text(encoding="utf-8") == "me, portrait"


def test_exposed_model_routes_stay_inside_the_workspace(client, private):
    _, note = client.predict(str(private), api_name="/scan_models")
    assert outside(note)
    assert outside(client.predict(str(private / "model.safetensors"), api_name="/detect_base"))
    assert "shapes-base" in client.predict("embedded", api_name="/detect_base")


def job_text(exposed, **paths) -> str:
    _, root = exposed
    job = lora_job(Path("embedded"), root / "data", root / "out")
    job["model"] = {"base": "embedded", "local_files_only": True}
    for dotted, value in paths.items():
        section, key = dotted.split("__")
        job[section][key] = str(value)
    return tomli_w.dumps(job)


def checked(client, text: str) -> str:
    """Paste a job into the expert view, press Check job: the verdict."""
    client.predict(text, api_name="/set_job_toml")
    return client.predict(api_name="/check_job")[0]


def test_exposed_jobs_name_no_path_outside(client, exposed, private):
    _, root = exposed
    assert checked(client, job_text(exposed)).startswith("Ready to train.")
    for field, value in (("model__base", private / "model.safetensors"), ("dataset__path", private / "photos"),
                         ("dataset__reg_path", private / "photos"), ("output__dir", private / "runs"),
                         ("output__logging_dir", private / "logs"), ("model__config_dir", private),
                         ("output__dir", root / "escape" / "runs")):
        text = job_text(exposed, **{field: value})
        assert outside(checked(client, text)), field
        assert outside(client.predict(api_name="/start_training")[0]), field
    assert not (private / "runs").exists() and not (private / "logs").exists()
    from engine.config.preset_share import to_code

    code = to_code('[metadata]\nname = "p"\nschema_version = 1\n')
    verdict = client.predict(code, "embedded", str(private / "photos"), api_name="/use_preset")[0]
    assert outside(verdict)
    summary = client.predict(str(private / "photos"), api_name="/set_dataset")[-1]  # typed into step 2
    assert outside(summary)


def test_exposed_compare_and_export_stay_inside_the_workspace(client, exposed, private, tmp_path_factory):
    from webapp.server import ROOT

    _, root = exposed
    lora = private / "model.safetensors"
    args = ["embedded", str(lora), "zkz", "0, 1", 42, 64, 2, 5.0, str(root / "grid"), 5, 1e-4, False, "", "", ""]
    assert outside(client.predict(*args, api_name="/make_grid")[2])
    args[1], args[8] = "", str(private / "grid")
    assert outside(client.predict(*args, api_name="/make_grid")[2])
    args[1], args[8] = str(root / "x.safetensors"), str(root / "grid")
    args[14] = str(private / "vae.safetensors")  # a VAE read from outside, checked before anything runs
    assert outside(client.predict(*args, api_name="/make_grid")[2])
    args[14] = ""
    args += [1, "a star", str(private)]  # training images for the likeness figure, read from outside
    assert outside(client.predict(*args, api_name="/make_grid")[2])
    _, message = client.predict(str(lora), 1.0, "stolen", api_name="/keep_pick")
    assert outside(message)
    message, readme, *_ = client.predict(str(lora), str(root / "card"), "", "", 0, api_name="/export_card")
    assert outside(message) and not readme
    message, *_ = client.predict(str(root / "x.safetensors"), str(private / "card"), "", "", 0,
                                 api_name="/export_card")
    assert outside(message)
    assert not (private / "grid").exists() and not (private / "card").exists()
    assert not list((ROOT / "output").glob("picked/stolen*"))


def test_exposed_file_route_serves_nothing_outside(exposed, private):
    """Logged in, the file route still serves nothing outside the folders in use."""
    import httpx

    port, root = exposed
    base = f"http://127.0.0.1:{port}/en"
    with httpx.Client() as web:
        assert web.post(f"{base}/login", data={"username": USER, "password": PASSWORD}).status_code == 200
        assert web.get(f"{base}/gradio_api/info").status_code == 200  # really logged in
        for target in (private / "notes.txt", root / "escape" / "notes.txt", Path("/etc/hostname")):
            resp = web.get(f"{base}/gradio_api/file={target}")
            assert resp.status_code == 403 and b"bank pin" not in resp.content, target


# ---------------------------------------------------------------- real uploads and bad input in the page's language

def test_real_uploads_still_work_and_bad_jobs_are_explained_in_the_pages_language(local, tmp_path, monkeypatch):
    from gradio_client import Client, handle_file

    from engine.config.preset_share import to_code

    monkeypatch.setenv("LORAFORGE_OUTPUT", str(tmp_path / "out"))
    draw_shape_images(tmp_path / "mine", 2)
    en = Client(f"http://127.0.0.1:{local}/en/", verbose=False)
    report, gallery, _, *views = en.predict(
        [handle_file(str(tmp_path / "mine" / "img_0.png")), handle_file(str(tmp_path / "mine" / "img_1.png"))],
        "mine", 3, api_name="/import_dataset")
    folder = views[1]  # the job's dataset box
    assert folder == str(tmp_path / "out" / "datasets" / "mine") and len(gallery) == 2, report
    assert "2 images used for training, 6 per epoch" in report
    deep = "[model]\nbase = " + "[" * 3000 + "]" * 3000
    assert "nested too deeply" in en.predict(deep, api_name="/set_job_toml")[-3]  # the expert view says so
    zh = Client(f"http://127.0.0.1:{local}/zh/", verbose=False)
    assert "嵌套太深" in zh.predict(deep, api_name="/set_job_toml")[-3]
    assert "嵌套太深" in zh.predict(to_code(deep), "embedded", folder, api_name="/use_preset")[0]
    bad = tomli_w.dumps(lora_job(Path("embedded"), Path(folder), tmp_path / "runs",
                                 dataset={"caption_extension": "/../../../etc/passwd"}))
    assert "dataset.caption_extension" in checked(zh, bad)
