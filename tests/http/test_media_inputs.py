"""Files, PDFs and images as response input, end to end with the official SDK: what reaches
a real OpenAI-compatible upstream (the PDF's text, the image's exact bytes), what is refused
(corrupt files, unknown ids, damaged images, URLs the egress policy forbids), and what is
stored (the parts exactly as sent, replayed by ``previous_response_id``).

Servers: the upstream test server, one respond in front of it with a text-only model
(``text``), a vision model (``vis``) and a dead vision model (``dead``); a second respond
whose ``[network] allow`` lists 127.0.0.1; and a static HTTP server on loopback that serves
images and documents by URL.
"""

# ruff: noqa: F811  (pytest fixtures imported from e2e are parameters here)

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from documents import StaticServer, data_url, decode_data_url, make_image, make_pdf
from e2e import (  # noqa: F401  (upstream: a fixture)
    EMBEDDED_MODEL,
    client_for,
    finished,
    free_port,
    sdk_error,
    upstream,
)
from servers import RunningServer, serve
from wire import check_response

from respond.testing.upstream import UpstreamServer

PAGES = ["The secret word is PERIWINKLE.", "Page two mentions a LIGHTHOUSE by the sea."]
PDF = make_pdf(PAGES)
PNG = make_image("PNG", (7, 5))
JPEG = make_image("JPEG", (12, 9))


def models(upstream: UpstreamServer) -> dict[str, Any]:
    return {
        "text": {"backend": "openai", "base_url": upstream.base_url, "timeout": 10},
        "vis": {"backend": "openai", "base_url": upstream.base_url, "vision": True,
                "timeout": 10},
        "dead": {"backend": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1",
                 "vision": True, "timeout": 2},
    }


@pytest.fixture(scope="module")
def server(upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RunningServer]:
    with serve({"models": models(upstream)}, tmp_path_factory.mktemp("media")) as running:
        yield running


@pytest.fixture(scope="module")
def allowing(upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[RunningServer]:
    config = {"models": models(upstream), "network": {"allow": ["127.0.0.1"]}}
    with serve(config, tmp_path_factory.mktemp("media-allow")) as running:
        yield running


@pytest.fixture(scope="module")
def static() -> Iterator[StaticServer]:
    with StaticServer() as running:
        running.routes["/photo.jpg"] = ("image/jpeg", JPEG)
        running.routes["/report.pdf"] = ("application/pdf", PDF)
        running.routes["/notes.txt"] = ("text/plain; charset=utf-8", "Notes: ÆBLE.".encode())
        yield running


@pytest.fixture(autouse=True)
def _fresh(upstream: UpstreamServer) -> None:
    upstream.reset()


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return client_for(server)


def ask(*parts: dict[str, Any], text: str = "What does it say?") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "input_text", "text": text}, *parts]}]


def user_content(upstream: UpstreamServer, index: int = -1) -> Any:
    """The content of the first user message of a recorded upstream request."""
    messages = upstream.requests[index].body["messages"]
    return next(m["content"] for m in messages if m["role"] == "user")


def image_parts(upstream: UpstreamServer) -> list[dict[str, Any]]:
    content = user_content(upstream)
    assert isinstance(content, list), content
    return [p for p in content if p["type"] == "image_url"]


# -- PDFs and text files ---------------------------------------------------------------------


def test_a_pdf_by_file_id_reaches_the_model_as_text(client: openai.OpenAI,
                                                    upstream: UpstreamServer) -> None:
    uploaded = client.files.create(file=("report.pdf", PDF), purpose="user_data")
    raw = client.responses.with_raw_response.create(model="text", input=ask(
        {"type": "input_file", "file_id": uploaded.id}))
    response = check_response(raw.http_response.json())
    assert response.status == "completed"
    content = user_content(upstream)
    assert isinstance(content, str)  # a text-only model gets one string
    assert content.startswith("What does it say?\n[file: report.pdf]\n")
    assert "PERIWINKLE" in content and "LIGHTHOUSE" in content


def test_a_pdf_by_file_data_reaches_the_model_as_text(client: openai.OpenAI,
                                                      upstream: UpstreamServer) -> None:
    client.responses.create(model="vis", input=ask(
        {"type": "input_file", "filename": "inline.pdf",
         "file_data": data_url("application/pdf", PDF)}))
    content = user_content(upstream)
    assert content.startswith("What does it say?\n[file: inline.pdf]\n")
    assert "PERIWINKLE" in content and "LIGHTHOUSE" in content
    # beside an image, the file is a text part of its own
    client.responses.create(model="vis", input=ask(
        {"type": "input_file", "filename": "inline.pdf",
         "file_data": data_url("application/pdf", PDF)},
        {"type": "input_image", "image_url": data_url("image/png", PNG)}))
    parts = user_content(upstream)
    assert [p["type"] for p in parts] == ["text", "text", "image_url"]
    assert parts[1]["text"] == content.removeprefix("What does it say?\n")


def test_text_files_are_read_as_text(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    csv = b"name,colour\nsky,blue\n"
    uploaded = client.files.create(file=("colours.csv", csv), purpose="user_data")
    client.responses.create(model="text", input=ask(
        {"type": "input_file", "file_id": uploaded.id},
        {"type": "input_file", "filename": "notes.md",
         "file_data": "data:text/markdown;base64," + base64.b64encode(b"# Title\nbody").decode()},
    ))
    content = user_content(upstream)
    assert "[file: colours.csv]\nname,colour\nsky,blue\n" in content
    assert "[file: notes.md]\n# Title\nbody" in content


def test_a_corrupt_pdf_is_a_400_naming_the_part(client: openai.OpenAI,
                                                upstream: UpstreamServer) -> None:
    broken = PDF[: len(PDF) // 2]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="text", input=ask(
            {"type": "input_file", "filename": "broken.pdf",
             "file_data": data_url("application/pdf", broken)}))
    error = sdk_error(caught.value, 400, param="input[0].content[1]")
    assert "broken.pdf" in error["message"] and "PDF" in error["message"]
    uploaded = client.files.create(file=("broken.pdf", broken), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as by_id:
        client.responses.create(model="text", input=[
            {"role": "user", "content": "first"},
            {"role": "user", "content": [{"type": "input_file", "file_id": uploaded.id}]}])
    sdk_error(by_id.value, 400, param="input[1].content[0]")
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.responses.create(model="text", input=ask(
            {"type": "input_file", "filename": "blob.bin",
             "file_data": data_url("application/octet-stream", b"\x00\x01\x02binary")}))
    assert "not supported" in sdk_error(unsupported.value, 400)["message"]
    assert upstream.requests == []


def test_an_unknown_file_id_is_a_404_naming_the_param(client: openai.OpenAI) -> None:
    for part in ({"type": "input_file", "file_id": "file-doesnotexist"},
                 {"type": "input_image", "file_id": "file-doesnotexist"}):
        with pytest.raises(openai.NotFoundError) as caught:
            client.responses.create(model="vis", input=ask(part))
        error = sdk_error(caught.value, 404, param="input[0].content[1].file_id")
        assert "file-doesnotexist" in error["message"]


def test_chaining_replays_the_files_text(client: openai.OpenAI,
                                         upstream: UpstreamServer) -> None:
    uploaded = client.files.create(file=("report.pdf", PDF), purpose="user_data")
    first = client.responses.create(model="text", input=ask(
        {"type": "input_file", "file_id": uploaded.id}))
    second = client.responses.create(model="text", input="And the second page?",
                                     previous_response_id=first.id)
    assert second.status == "completed"
    replayed = user_content(upstream)
    assert replayed == user_content(upstream, 0)
    assert "PERIWINKLE" in replayed
    assert upstream.requests[-1].body["messages"][-1]["content"] == "And the second page?"
    # the stored input is the reference as sent, not the text
    listed = client.responses.input_items.with_raw_response.list(first.id)
    [item] = listed.http_response.json()["data"]
    assert item["content"][1] == {"type": "input_file", "file_id": uploaded.id}

    client.files.delete(uploaded.id)  # a conversation whose file is gone cannot go on
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="text", input="More?", previous_response_id=first.id)
    error = sdk_error(caught.value, 404, param="previous_response_id")
    assert uploaded.id in error["message"]


def test_a_file_url_is_fetched_through_the_egress_policy(
        server: RunningServer, allowing: RunningServer, static: StaticServer,
        upstream: UpstreamServer) -> None:
    part = {"type": "input_file", "file_url": static.url("/report.pdf")}
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(server).responses.create(model="text", input=ask(part))
    error = sdk_error(caught.value, 400, param="input[0].content[1].file_url")
    assert "loopback" in error["message"] and "[network] allow" in error["message"]
    assert upstream.requests == []

    client_for(allowing).responses.create(model="text", input=ask(
        part, {"type": "input_file", "file_url": static.url("/notes.txt")}))
    content = user_content(upstream)
    assert "[file: report.pdf]\n" in content and "PERIWINKLE" in content
    assert "[file: notes.txt]\nNotes: ÆBLE." in content
    with pytest.raises(openai.BadRequestError) as missing:
        client_for(allowing).responses.create(model="text", input=ask(
            {"type": "input_file", "file_url": static.url("/nothing.pdf")}))
    assert "404" in sdk_error(missing.value, 400, param="input[0].content[1].file_url")[
        "message"]


# -- images ----------------------------------------------------------------------------------


def test_a_data_url_image_arrives_byte_exact(client: openai.OpenAI,
                                             upstream: UpstreamServer) -> None:
    sent = data_url("image/png", PNG)
    response = client.responses.create(model="vis", input=ask(
        {"type": "input_image", "image_url": sent, "detail": "low"}))
    assert response.status == "completed"
    [part] = image_parts(upstream)
    assert part["image_url"]["detail"] == "low"
    assert decode_data_url(part["image_url"]["url"]) == ("image/png", PNG)


def test_a_file_id_image_arrives_byte_exact(client: openai.OpenAI,
                                            upstream: UpstreamServer) -> None:
    uploaded = client.files.create(file=("photo.jpg", JPEG), purpose="vision")
    client.responses.create(model="vis", input=ask(
        {"type": "input_image", "file_id": uploaded.id}))
    [part] = image_parts(upstream)
    assert decode_data_url(part["image_url"]["url"]) == ("image/jpeg", JPEG)
    assert part["image_url"]["detail"] == "auto"


def test_every_image_type_is_accepted(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    images = {"image/gif": make_image("GIF"), "image/webp": make_image("WEBP")}
    client.responses.create(model="vis", input=ask(
        *({"type": "input_image", "image_url": data_url(kind, data)}
          for kind, data in images.items())))
    got = [decode_data_url(p["image_url"]["url"]) for p in image_parts(upstream)]
    assert got == list(images.items())


def test_an_image_url_on_loopback_is_refused_unless_allowed(
        server: RunningServer, allowing: RunningServer, static: StaticServer,
        upstream: UpstreamServer) -> None:
    part = {"type": "input_image", "image_url": static.url("/photo.jpg")}
    hits = len(static.hits)
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(server).responses.create(model="vis", input=ask(part))
    error = sdk_error(caught.value, 400, param="input[0].content[1].image_url")
    assert "127.0.0.1" in error["message"] and "loopback" in error["message"]
    assert len(static.hits) == hits  # never contacted
    assert upstream.requests == []

    client_for(allowing).responses.create(model="vis", input=ask(part))
    [sent] = image_parts(upstream)
    assert decode_data_url(sent["image_url"]["url"]) == ("image/jpeg", JPEG)


def test_damaged_images_are_400s(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    bad_header = bytearray(PNG)
    bad_header[20] ^= 0xFF  # inside IHDR: its checksum no longer matches
    cases = {
        data_url("image/png", bytes(bad_header)): "PNG header",
        data_url("image/png", b"\x89PNG\r\n\x1a\n"): "PNG header",
        data_url("image/png", b"GIF? no, plain text"): "not a PNG, JPEG, GIF or WebP",
        "data:image/png;base64,@@not base64@@": "base64",
    }
    for url, words in cases.items():
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="vis", input=ask(
                {"type": "input_image", "image_url": url}))
        error = sdk_error(caught.value, 400)
        assert error["param"].startswith("input[0].content[1]"), error
        assert words in error["message"], error
    with pytest.raises(openai.BadRequestError) as scheme:
        client.responses.create(model="vis", input=ask(
            {"type": "input_image", "image_url": "ftp://example.com/a.png"}))
    sdk_error(scheme.value, 400, param="input[0].content[1].image_url")
    assert upstream.requests == []


def test_images_on_a_text_only_model_are_refused(client: openai.OpenAI) -> None:
    uploaded = client.files.create(file=("photo.jpg", JPEG), purpose="vision")
    for part in ({"type": "input_image", "file_id": uploaded.id},
                 {"type": "input_image", "image_url": data_url("image/png", PNG)}):
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="text", input=ask(part))
        error = sdk_error(caught.value, 400, param="input[0].content[1]")
        assert "does not accept images" in error["message"]


def test_input_items_return_images_as_sent(client: openai.OpenAI) -> None:
    uploaded = client.files.create(file=("photo.jpg", JPEG), purpose="vision")
    inline = data_url("image/png", PNG)
    response = client.responses.create(model="vis", input=ask(
        {"type": "input_image", "image_url": inline, "detail": "high"},
        {"type": "input_image", "file_id": uploaded.id}))
    listed = client.responses.input_items.with_raw_response.list(response.id)
    [item] = listed.http_response.json()["data"]
    parts = item["content"]
    assert parts[1] == {"type": "input_image", "image_url": inline, "detail": "high",
                        "file_id": None}
    assert parts[2] == {"type": "input_image", "file_id": uploaded.id, "detail": "auto",
                        "image_url": None}


def test_chaining_replays_images_exactly(client: openai.OpenAI,
                                         upstream: UpstreamServer) -> None:
    first = client.responses.create(model="vis", input=ask(
        {"type": "input_image", "image_url": data_url("image/png", PNG)}))
    client.responses.create(model="vis", input="And now?", previous_response_id=first.id)
    [part] = image_parts(upstream)
    assert decode_data_url(part["image_url"]["url"]) == ("image/png", PNG)


def test_background_responses_resolve_files_in_the_worker(client: openai.OpenAI,
                                                          upstream: UpstreamServer) -> None:
    pdf = client.files.create(file=("report.pdf", PDF), purpose="user_data")
    image = client.files.create(file=("photo.jpg", JPEG), purpose="vision")
    job = client.responses.create(model="vis", background=True, input=ask(
        {"type": "input_file", "file_id": pdf.id}, {"type": "input_image", "file_id": image.id}))
    job = finished(client, job.id)
    assert job.status == "completed", job.error
    content = user_content(upstream)
    assert "PERIWINKLE" in next(p["text"] for p in content if p["type"] == "text"
                                and p["text"].startswith("[file:"))
    [part] = image_parts(upstream)
    assert decode_data_url(part["image_url"]["url"]) == ("image/jpeg", JPEG)


def test_a_dead_upstream_is_a_5xx_or_a_failed_response(client: openai.OpenAI) -> None:
    parts = ({"type": "input_image", "image_url": data_url("image/png", PNG)},
             {"type": "input_file", "filename": "r.pdf",
              "file_data": data_url("application/pdf", PDF)})
    with pytest.raises(openai.InternalServerError) as caught:
        client.responses.create(model="dead", input=ask(*parts))
    assert caught.value.status_code == 502
    job = finished(client, client.responses.create(model="dead", background=True,
                                                   input=ask(*parts)).id)
    assert job.status == "failed"
    assert job.error is not None


# -- the embedded model ----------------------------------------------------------------------


def test_the_embedded_model_reads_a_pdf(embedded: RunningServer) -> None:
    client = client_for(embedded, timeout=60)
    uploaded = client.files.create(file=("report.pdf", PDF), purpose="user_data")
    short = {"max_output_tokens": 16, "temperature": 0}
    plain = client.responses.create(model=EMBEDDED_MODEL, input=ask(), **short)
    by_id = client.responses.create(model=EMBEDDED_MODEL, **short, input=ask(
        {"type": "input_file", "file_id": uploaded.id}))
    by_data = client.responses.create(model=EMBEDDED_MODEL, **short, input=ask(
        {"type": "input_file", "filename": "report.pdf",
         "file_data": data_url("application/pdf", PDF)}))
    assert plain.usage is not None and by_id.usage is not None and by_data.usage is not None
    backend = embedded.service.backends[EMBEDDED_MODEL]
    seen = "What does it say?\n[file: report.pdf]\n" + "\n\n".join(PAGES)
    expected = (embedded.call(backend.count_tokens([{"role": "user", "content": seen}]))
                - embedded.call(backend.count_tokens([{"role": "user",
                                                       "content": "What does it say?"}])))
    rise = by_id.usage.input_tokens - plain.usage.input_tokens
    assert rise >= len(" ".join(PAGES).split())  # at least a token per word of the PDF
    assert abs(rise - expected) <= 2, (rise, expected)
    assert by_data.usage.input_tokens == by_id.usage.input_tokens


# -- images and files in function outputs ----------------------------------------------------


def tool_turn(*output: dict[str, Any], calls: int = 1) -> list[dict[str, Any]]:
    """A manual history: a question, ``calls`` function calls, each answered by ``output``."""
    items: list[dict[str, Any]] = [{"role": "user", "content": "Look at the camera."}]
    items += [{"type": "function_call", "call_id": f"call_{n}", "name": "snapshot",
               "arguments": "{}"} for n in range(calls)]
    items += [{"type": "function_call_output", "call_id": f"call_{n}", "output": list(output)}
              for n in range(calls)]
    return items


def test_a_function_output_shows_its_text_files_and_images(client: openai.OpenAI,
                                                           upstream: UpstreamServer) -> None:
    """Text and files in the tool message; images (which Chat Completions tool messages cannot
    carry) in a user message after every tool message of the turn."""
    client.responses.create(model="vis", input=tool_turn(
        {"type": "input_text", "text": "Snapshot taken."},
        {"type": "input_file", "filename": "log.txt",
         "file_data": data_url("text/plain", b"Door opened at 10:02.")},
        {"type": "input_image", "image_url": data_url("image/png", PNG)},
        calls=2))
    messages = upstream.requests[-1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "user"]
    for tool in messages[2:4]:
        assert tool["content"].startswith("Snapshot taken.\n")
        assert "Door opened at 10:02." in tool["content"]
    images = messages[4]["content"]
    assert [p["type"] for p in images] == ["text", "image_url", "text", "image_url"]
    assert images[0]["text"] == "Images returned by the function call call_0:"
    assert decode_data_url(images[1]["image_url"]["url"]) == ("image/png", PNG)


def test_a_function_output_image_is_replayed_by_chaining(client: openai.OpenAI,
                                                         upstream: UpstreamServer) -> None:
    first = client.responses.create(model="vis", input=tool_turn(
        {"type": "input_image", "image_url": data_url("image/jpeg", JPEG)}))
    client.responses.create(model="vis", input="And now?", previous_response_id=first.id)
    messages = upstream.requests[-1].body["messages"]
    assert [m["role"] for m in messages][:4] == ["user", "assistant", "tool", "user"]
    [image] = [p for p in messages[3]["content"] if p["type"] == "image_url"]
    assert decode_data_url(image["image_url"]["url"]) == ("image/jpeg", JPEG)


def test_a_function_output_image_on_a_text_only_model_is_refused(client: openai.OpenAI,
                                                                 upstream: UpstreamServer
                                                                 ) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="text", input=tool_turn(
            {"type": "input_text", "text": "Snapshot taken."},
            {"type": "input_image", "image_url": data_url("image/png", PNG)}))
    error = sdk_error(caught.value, 400, param="input[2].output[1]")
    assert "does not accept images" in error["message"]
    assert upstream.requests == []


def test_a_damaged_image_in_a_function_output_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="vis", input=tool_turn(
            {"type": "input_image", "image_url": "data:image/png;base64,bm90IGFuIGltYWdl"}))
    error = sdk_error(caught.value, 400)
    assert error["param"].startswith("input[2].output[0]"), error
