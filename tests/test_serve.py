"""`convirt serve` through a real socket on 127.0.0.1, as a script or a browser would call it: every route, every
refusal (4xx JSON, one line, never a traceback), the token, CORS, the Host and Origin checks, the upload cap while
the body is read, no patient data in a response or the log, SIGTERM draining, and an index appended while served.

One server (conftest's search_server) answers most tests; the token / CORS server and the `--no-auth` server
start once each here, and each is also the SIGTERM test: drained (exit 0) and killed mid-drain (exit 143)."""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serving import call, multipart, start
from typer.testing import CliRunner

from convirt_cli.cli.main import app
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.serve.searcher import Query, Searcher
from convirt_cli.torchfree.serve.web.app import build_app

TOKEN = "t0ken-for-tests-0123456789"


@pytest.fixture(scope="module")
def port(search_server) -> int:
    return search_server.port


@pytest.fixture(scope="module")
def local(search_indexes, tiny_export) -> Searcher:
    """The same indexes in this process: what the server must answer."""
    return Searcher(dict(search_indexes), tiny_export, backend="onnx", device="cpu")


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def get(port: int, path: str, **kw):
    r = call(port, "GET", path, **kw)
    assert r.status == 200, (path, r.status, r.body[:300])
    return r.json()


def ids(result: dict) -> list[int]:
    return [h["id"] for h in result["hits"]]


def test_health_indexes_and_the_openapi_document_name_every_route(port, search_indexes):
    assert get(port, "/api/health")["status"] == "ok"
    listed = {ix["name"]: ix for ix in get(port, "/api/indexes")["indexes"]}
    assert listed["images"]["kind"] == "image" and listed["reports"]["kind"] == "text"
    assert listed["images"]["count"] == 40 and set(listed["images"]["columns"]) == {"view", "sex"}
    assert "pa" in listed["images"]["columns"]["view"]  # few values: listed for the page's filters
    assert "/" not in listed["images"]["model"]  # a name, never the server's path
    doc = get(port, "/api/openapi.json")
    routes = {r.path.replace("{item_id:int}", "{id}") for r in build_app(None).routes} - {"/"}
    assert routes == set(doc["paths"]), routes ^ set(doc["paths"])


def test_text_search_is_the_searchers(port, local):
    res = get(port, "/api/search?q=bilateral+opacities&k=5")
    (want,) = local.search(Query(text="bilateral opacities"), k=5)
    assert ids(res) == [h["item"]["id"] for h in want["hits"]] and res["more"] is True
    np.testing.assert_allclose([h["score"] for h in res["hits"]], [h["score"] for h in want["hits"]], atol=1e-5)
    hit = res["hits"][0]
    assert set(hit) == {"rank", "score", "id", "index", "kind", "columns", "url", "thumbnail", "image"}
    assert set(hit["columns"]) == {"view", "sex"} and hit["thumbnail"] == f"/api/items/{hit['id']}/thumbnail"
    assert "path" not in json.dumps(res) and "source" not in json.dumps(res)  # no server path leaves


def test_pages_join_to_one_search_and_where_filters(port, local):
    whole = get(port, "/api/search?q=effusion&k=9")
    pages = [get(port, f"/api/search?q=effusion&k=3&offset={o}") for o in (0, 3, 6)]
    assert [i for p in pages for i in ids(p)] == ids(whole)
    assert get(port, "/api/search?q=effusion&k=10&offset=40")["hits"] == []
    assert get(port, "/api/search?q=effusion&k=40")["more"] is False  # 40 items: no next page
    pa = get(port, "/api/search?q=effusion&k=40&where=view=PA")
    (want,) = local.search(Query(text="effusion"), k=40, where=["view=PA"])
    assert ids(pa) == [h["item"]["id"] for h in want["hits"]] and {h["columns"]["view"] for h in pa["hits"]} == {"PA"}
    both = get(port, "/api/search?q=effusion&k=40&where=view!=PA&where=sex=F")
    assert all(h["columns"]["view"] != "PA" and h["columns"]["sex"] == "F" for h in both["hits"])


def test_more_like_an_item_in_its_index_and_across(port, local):
    res = get(port, "/api/search?like=3&k=5")
    assert 3 not in ids(res) and ids(res) == [h["item"]["id"] for h in local.search(Query(like=3), k=5)[0]["hits"]]
    reports = get(port, "/api/search?like=3&from=images&index=reports&k=4")  # reports like image 3
    (want,) = local.search(Query(like=3, like_index="images"), k=4, index="reports")
    assert ids(reports) == [h["item"]["id"] for h in want["hits"]]
    assert all(h["kind"] == "text" and h["text"] and h["thumbnail"] is None for h in reports["hits"])
    item = get(port, f"/api/items/{reports['hits'][0]['id']}?index=reports")
    assert item["text"] == reports["hits"][0]["text"] and item["url"].endswith("?index=reports")


def test_image_uploads_png_jpeg_16bit_and_dicom(port, search_server, local, tmp_path):
    """Each kind finds the indexed image it shows first; the DICOM's patient name and id leave in no response and
    no log line, nor does the upload's file name."""
    from test_dicom import SECRETS, write_dicom

    path = local.item(5)["path"]
    with Image.open(path) as im:
        gray = np.asarray(im.convert("L"))
    body, head = multipart({"k": "3"}, Path(path).read_bytes(), filename="Doe^Jane.png")
    res = call(port, "POST", "/api/search", body, head).json()
    assert res["hits"][0]["id"] == 5 and res["hits"][0]["score"] == pytest.approx(1, abs=1e-4)
    assert res["query"] == {"image": "upload"} and "Doe" not in json.dumps(res)
    jpeg = io.BytesIO()
    Image.fromarray(gray).save(jpeg, format="JPEG", quality=95)
    raw = call(port, "POST", "/api/search?k=3&index=images", jpeg.getvalue(), {"Content-Type": "image/jpeg"})
    assert raw.status == 200 and raw.json()["hits"][0]["id"] == 5
    sixteen = png(gray.astype(np.uint16) * 257)  # 16-bit: windowed as `embed` windows it (the library's answer)
    wide = call(port, "POST", "/api/search?k=3", sixteen, {"Content-Type": "image/png"})
    assert wide.status == 200 and ids(wide.json()) == [h["item"]["id"] for h in local.search(Query(image=sixteen),
                                                                                             k=3)[0]["hits"]]
    dcm = write_dicom(tmp_path / "scan.dcm", gray).read_bytes()
    body, head = multipart({"k": "3"}, dcm, filename=f"{SECRETS['name']}.dcm")
    r = call(port, "POST", "/api/search", body, head)
    assert r.status == 200 and ids(r.json()) == [h["item"]["id"] for h in local.search(Query(image=dcm), k=3)[0]["hits"]]
    log = search_server.log_text()
    for secret in (*SECRETS.values(), "Doe", "MRN"):
        assert secret not in r.body.decode() and secret not in log


def test_thumbnails_and_images_load_by_id_only(port):
    hit = get(port, "/api/search?q=opacity&k=1")["hits"][0]
    r = call(port, "GET", hit["thumbnail"])
    assert r.status == 200 and r.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(r.body)) as im:
        im.load()
        assert im.format == "JPEG" and 0 < max(im.size) <= 256
    big = call(port, "GET", hit["image"])
    with Image.open(io.BytesIO(big.body)) as im:
        assert big.headers["content-type"] == "image/png" and im.format == "PNG" and max(im.size) >= 256
    again = call(port, "GET", hit["thumbnail"], headers={"If-None-Match": r.headers["etag"]})
    assert again.status == 304 and again.body == b""
    text = call(port, "GET", "/api/items/0/thumbnail?index=reports")
    assert text.status == 404 and "is a text" in text.json()["error"]


def _bomb() -> bytes:
    """A PNG whose header says 30000 x 30000 grey pixels (900 MP) in a few bytes: refused before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


OCTET = {"Content-Type": "application/octet-stream"}
REFUSALS = [  # method, path, body, headers, status, what the message says
    ("GET", "/api/search?query=x", None, {}, 400, "unknown parameter 'query'"),
    ("GET", "/api/search?q=x&q=y", None, {}, 400, "given 2 times"),
    ("GET", "/api/search?q=x&k=0", None, {}, 400, "k '0': a whole number from 1 to 100"),
    ("GET", "/api/search?q=x&k=101", None, {}, 400, "from 1 to 100"),
    ("GET", "/api/search?q=x&k=ten", None, {}, 400, "k 'ten'"),
    ("GET", "/api/search?q=x&offset=-1", None, {}, 400, "offset '-1'"),
    ("GET", "/api/search?q=%20", None, {}, 400, "q is empty"),
    ("GET", "/api/search", None, {}, 400, "(got none)"),
    ("GET", "/api/search?q=x&like=1", None, {}, 400, "(got q and like)"),
    ("GET", "/api/search?q=x&from=images", None, {}, 400, "give like too"),
    ("GET", "/api/search?q=x&where=view", None, {}, 400, "is not COLUMN=VALUE"),
    ("GET", "/api/search?q=x&where=finding=covid", None, {}, 400, "no column 'finding'"),
    ("GET", "/api/search?like=99999", None, {}, 404, "index 'images' has no item 99999"),
    ("GET", "/api/search?q=x&index=nope", None, {}, 404, "no index named 'nope'"),
    ("GET", "/api/items/99999", None, {}, 404, "has no item 99999"),
    ("GET", "/api/items/3?index=nope", None, {}, 404, "no index named 'nope'"),
    ("GET", "/api/items/3?path=/etc/passwd", None, {}, 400, "unknown parameter 'path'"),
    ("GET", "/api/items/abc", None, {}, 404, "no such route"),
    ("GET", "/api/items/..%2F..%2Fetc%2Fpasswd/image", None, {}, 404, "no such route"),
    ("GET", "/api/items/-1/image", None, {}, 404, "no such route"),
    ("GET", "/api/", None, {}, 404, "no such route"),
    ("GET", "/static/", None, {}, 404, "no such route"),
    ("PUT", "/api/search?q=x", b"", {}, 405, "method not allowed"),
    ("DELETE", "/api/items/3", None, {}, 405, "method not allowed"),
    ("POST", "/api/search", b"hello, not an image", OCTET, 415, "not a PNG, JPEG, TIFF or DICOM image"),
    ("POST", "/api/search", b"%!PS-Adobe-3.0 EPSF" + b" " * 200, OCTET, 415, "not a PNG, JPEG, TIFF or DICOM"),
    ("POST", "/api/search", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, OCTET, 400, "query image upload: cannot read it"),
    ("POST", "/api/search", _bomb(), OCTET, 400, "over the 100 MP limit"),
    ("POST", "/api/search", b"", OCTET, 400, "the image is empty"),
    ("POST", "/api/search", b"q=x", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "multipart"),
    ("POST", "/api/search?q=x", png(np.full((40, 40), 90, np.uint8)), OCTET, 400, "(got q and image)"),
    ("GET", "/api/indexes", None, {"Host": "attacker.example"}, 403, "Host 'attacker.example' is not a name"),
    ("GET", "/api/search?q=x", None, {"Host": "attacker.example:80"}, 403, "is not a name of this server"),
    ("GET", "/api/indexes", None, {"Origin": "https://attacker.example"}, 403, "page of another site"),
    ("OPTIONS", "/api/search", None, {"Origin": "https://attacker.example", "Access-Control-Request-Method": "GET"},
     403, "page of another site"),
    ("OPTIONS", "/api/search", None, {}, 405, "preflight"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "message"), REFUSALS,
                         ids=[f"{m} {p[:40]} {s}" for m, p, _, _, s, _ in REFUSALS])
def test_refusals_are_one_line_json(port, method, path, body, headers, status, message):
    r = call(port, method, path, body, headers)
    assert r.status == status, (r.status, r.body[:300])
    err = r.json()
    assert err["status"] == status and message in err["error"] and "\n" not in err["error"], err
    assert "Traceback" not in r.body.decode() and "/tmp" not in err["error"]  # no traceback, no server path


def test_multipart_refusals(port):
    body, head = multipart({"k": "2"}, None)
    r = call(port, "POST", "/api/search", body, head)
    assert r.status == 400 and "no image: send the file as multipart field 'image'" in r.json()["error"]
    body, head = multipart({"k": "2"}, b"\x89PNG\r\n\x1a\n", name="picture")
    assert call(port, "POST", "/api/search", body, head).status == 400
    body, head = multipart({"k": "2", "k ": "x"}, png(np.zeros((8, 8), np.uint8)))
    assert "unknown parameter 'k '" in call(port, "POST", "/api/search", body, head).json()["error"]


def _raw(port: int, head: bytes, body_chunks=(), pause: float = 0.0) -> bytes:
    """Send raw HTTP (head, then chunks) and read the reply; the server may answer before the body is sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        for chunk in body_chunks:
            try:
                s.sendall(chunk)
            except OSError:  # the server answered and closed: the cap held
                break
            time.sleep(pause)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and b'"status"' in data:
                break
    return data


def test_upload_cap_holds_while_the_body_is_read(port):
    """Over 1 MiB: refused by Content-Length before any body byte, and, sent chunked (no length), at the cap."""
    head = (b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 50000000\r\n\r\n")
    reply = _raw(port, head)
    assert reply.startswith(b"HTTP/1.1 413") and b"over the 1 MiB upload cap" in reply
    head = (b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"\x89PNG\r\n\x1a\n" + b"\x00" * (256 << 10)
    chunks = [f"{len(piece):x}\r\n".encode() + piece + b"\r\n"] * 40  # 10 MiB offered
    reply = _raw(port, head, chunks)
    assert reply.startswith(b"HTTP/1.1 413") and b"--max-upload-mb" in reply


def test_headers_page_and_no_cors_by_default(port):
    page = call(port, "GET", "/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    text = page.body.decode()
    assert "http://" not in text and "https://" not in text and "src=\"//" not in text  # nothing from outside
    for r in (page, call(port, "GET", "/api/health"), call(port, "GET", "/nope"),
              call(port, "GET", "/api/indexes", headers={"Origin": f"http://127.0.0.1:{port}"})):
        assert r.headers["x-content-type-options"] == "nosniff" and "server" not in r.headers
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert not any(h.startswith("access-control-") for h in r.headers)
    assert call(port, "GET", "/api/health", host="localhost").status == 200  # loopback names are this server's


def test_log_has_no_query_words(port, search_server):
    get(port, "/api/search?q=zanzibar+quux&k=1")
    log = search_server.log_text()
    assert "GET /api/search 200" in log and "zanzibar" not in log and "Traceback" not in log


def test_bind_policy_refuses_an_open_address_without_a_token(search_indexes):
    for args, message in [(["--host", "0.0.0.0"], "--host 0.0.0.0 is reachable from other machines"),
                          (["--token", "short"], "shorter than 16 characters"),
                          (["--host", "0.0.0.0", "--token", TOKEN, "--no-auth"], "contradict"),
                          (["--cors-origin", "*"], "is not an origin")]:
        r = CliRunner().invoke(app, ["serve", str(search_indexes["images"]), *args])
        assert isinstance(r.exception, ConvirtError) and message in str(r.exception), r.output


def _slow_request(port: int, host: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    """A search upload whose head is sent and whose body is not yet: a request in flight."""
    body = png(np.full((64, 64), 120, np.uint8))
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(b"POST /api/search?k=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
              + f"Content-Length: {len(body)}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode() + body[:10])
    time.sleep(0.3)
    return s, body[10:]


def test_off_loopback_the_server_warns_and_takes_any_host():
    """--no-auth on another address is a warning, a token there a note about TLS, loopback neither; only a loopback
    server checks Host headers (a test server itself listens on 127.0.0.1 only)."""
    from convirt_cli.torchfree.config import ServeConfig
    from convirt_cli.torchfree.serve.web.server import allowed_hosts, exposure_line

    assert exposure_line(ServeConfig(host="0.0.0.0", no_auth=True)).startswith("warning: --no-auth on 0.0.0.0")
    assert "TLS" in exposure_line(ServeConfig(host="10.1.2.3", token=TOKEN))
    assert exposure_line(ServeConfig()) is None and exposure_line(ServeConfig(host="::1", no_auth=True)) is None
    assert allowed_hosts("0.0.0.0") is None and "localhost" in allowed_hosts("127.0.0.1")


def test_sigterm_drains_requests_in_flight(search_indexes, tiny_export, tmp_path):
    """SIGTERM mid-request: the request is answered, new connections are refused, exit 0."""
    served = start([search_indexes["images"], "--model", tiny_export], tmp_path / "log")
    try:
        s, rest = _slow_request(served.port)
        served.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", served.port), timeout=5).close()
        s.sendall(rest)
        reply = b""
        while chunk := s.recv(65536):  # the server closes the connection after its answer: it is stopping
            reply += chunk
        s.close()
        assert reply.startswith(b"HTTP/1.1 200") and b'"hits"' in reply, reply[:300]
        assert served.proc.wait(timeout=30) == 0, served.log_text()
    finally:
        served.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def guarded(search_indexes, tiny_export, tmp_path_factory):
    """A server with a token (from CONVIRT_TOKEN) and one CORS origin; stopped by two SIGTERMs mid-request (143)."""
    tmp = tmp_path_factory.mktemp("guarded")
    served = start([search_indexes["images"], "--model", tiny_export, "--cors-origin", "https://ris.example.org"],
                   tmp / "log", env={"CONVIRT_TOKEN": TOKEN})
    yield served
    s, _ = _slow_request(served.port)
    served.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    code = served.stop(signal.SIGTERM)
    s.close()
    assert code == 143, served.log_text()[-2000:]
    assert "stopped with" in served.log_text()


def test_token_on_every_route_but_health(guarded):
    port, bearer = guarded.port, {"Authorization": f"Bearer {TOKEN}"}
    assert call(port, "GET", "/api/health").status == 200
    for path in ("/api/indexes", "/api/search?q=x", "/api/items/0", "/api/items/0/thumbnail", "/api/openapi.json",
                 "/nope"):
        r = call(port, "GET", path)
        assert r.status == 401 and "needs its access token" in r.json()["error"], path
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert call(port, "GET", path, headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"}).status == 401
    assert call(port, "GET", "/api/search?q=x", headers=bearer).status == 200
    assert call(port, "GET", "/api/items/0/thumbnail", headers=bearer).status == 200
    assert TOKEN not in guarded.log_text() and TOKEN not in " ".join(guarded.proc.args)


def test_the_page_signs_in_with_a_cookie_not_the_token(guarded):
    port = guarded.port
    form = call(port, "GET", "/?q=effusion")
    assert form.status == 401 and b'action=/login' in form.body and "unsafe" not in form.headers["content-security-policy"]
    link = call(port, "GET", f"/?token={TOKEN}&q=effusion")
    assert link.status == 303 and link.headers["location"] == "/?q=effusion"  # the token leaves the address
    cookie = link.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    jar = {"Cookie": cookie.split(";")[0]}
    assert call(port, "GET", "/", headers=jar).status == 200
    assert call(port, "GET", "/api/indexes", headers=jar).status == 200
    wrong = call(port, "POST", "/login", b"token=nope", {"Content-Type": "application/x-www-form-urlencoded"})
    assert wrong.status == 401 and b"That token is not this server" in wrong.body
    right = call(port, "POST", "/login", f"token={TOKEN}".encode(), {"Content-Type": "application/x-www-form-urlencoded"})
    assert right.status == 303 and right.headers["set-cookie"].split(";")[0] == jar["Cookie"]


def test_cors_only_for_the_origin_named(guarded):
    port, ris = guarded.port, "https://ris.example.org"
    pre = call(port, "OPTIONS", "/api/search", headers={"Origin": ris, "Access-Control-Request-Method": "GET",
                                                         "Access-Control-Request-Headers": "authorization"})
    assert pre.status == 204 and pre.headers["access-control-allow-origin"] == ris
    assert "Authorization" in pre.headers["access-control-allow-headers"]
    r = call(port, "GET", "/api/search?q=x", headers={"Origin": ris, "Authorization": f"Bearer {TOKEN}"})
    assert r.status == 200 and r.headers["access-control-allow-origin"] == ris
    assert "access-control-allow-credentials" not in r.headers
    other = call(port, "GET", "/api/search?q=x", headers={"Origin": "https://ris.example.org.evil.example",
                                                          "Authorization": f"Bearer {TOKEN}"})
    assert other.status == 403 and "access-control-allow-origin" not in other.headers


@contextmanager
def hammered(port: int, paths: tuple[str, ...], clients: int = 2):
    """Clients calling `paths` in a loop while the body runs; yields the list of calls that did not answer 200."""
    failures, stop = [], threading.Event()

    def hammer():
        while not stop.is_set():
            for path in paths:
                r = call(port, "GET", path)
                if r.status != 200:
                    failures.append((path, r.status, r.body[:200]))

    threads = [threading.Thread(target=hammer) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield failures
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_an_index_changed_on_disk_is_seen_without_restart(port, search_server, search_indexes, tiny_export,
                                                          tmp_path):
    """`embed --append` into a served index while clients search it: no request fails, the next sees the new
    items (here the first image again, now its own nearest neighbour). Then a new index swapped in whole (as
    `embed --out` writes one) while clients fetch items: none fails, and an item route alone (no search first)
    already sees the new index."""
    from convirt_cli.torchfree.files import staged_dir
    from convirt_cli.torchfree.serve.index import open_index

    before = {ix["name"]: ix["count"] for ix in get(port, "/api/indexes")["indexes"]}["images"]
    first = get(port, "/api/items/0")
    lines = tmp_path / "more.txt"
    lines.write_text(open_index(search_server.images).items[0]["path"] + "\n")
    with hammered(port, ("/api/search?like=0&k=3", "/api/search?q=effusion&k=3", "/api/items/1/thumbnail")) as bad:
        r = CliRunner().invoke(app, ["embed", str(lines), "--model", str(tiny_export), "--out",
                                     str(search_server.images), "--append", "--runs-dir", str(tmp_path / "runs")])
        assert r.exit_code == 0, r.output
    assert not bad, bad[:3]
    after = get(port, "/api/indexes")["indexes"][0]
    assert after["count"] == before + 1
    nearest = get(port, "/api/search?like=0&k=1")["hits"][0]
    assert nearest["id"] == before and nearest["score"] == pytest.approx(1, abs=1e-5)
    assert get(port, f"/api/items/{nearest['id']}")["columns"] == {} and first["id"] == 0

    # the original index swapped back in
    with hammered(port, ("/api/items/1", "/api/items/2/thumbnail")) as bad, staged_dir(search_server.images) as tmp:
        for f in search_indexes["images"].iterdir():
            shutil.copy2(f, tmp / f.name)
    assert not bad, bad[:3]
    gone = call(port, "GET", f"/api/items/{before}")
    assert gone.status == 404 and gone.json()["error"] == f"index 'images' has no item {before}"
    assert get(port, "/api/indexes")["indexes"][0]["count"] == before
    assert get(port, "/api/search?like=0&k=1")["hits"][0]["id"] != before
