"""Formats: images judged by their own headers, data URLs, and documents turned into text."""

from __future__ import annotations

import struct
import zlib

import pytest
from documents import make_image, make_pdf
from fpdf import FPDF

from respond.engine import formats
from respond.engine.formats import (
    FormatError,
    document_text,
    guess_type,
    image_info,
    parse_data_url,
)


@pytest.mark.parametrize(("kind", "media_type"), [
    ("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp")])
@pytest.mark.parametrize("size", [(1, 1), (33, 17), (300, 2)])
def test_every_accepted_image_type_and_its_size(kind: str, media_type: str,
                                                size: tuple[int, int]) -> None:
    info = image_info(make_image(kind, size))
    assert (info.media_type, info.width, info.height) == (media_type, *size)


def test_lossless_and_extended_webp() -> None:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGBA", (40, 30), (1, 2, 3, 128)).save(out, format="WEBP", lossless=True)
    assert (image_info(out.getvalue()).width, image_info(out.getvalue()).height) == (40, 30)


def png_header(width: int, height: int) -> bytes:
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr
            + struct.pack(">I", zlib.crc32(ihdr)))


def test_damaged_and_oversized_images_are_refused() -> None:
    png = bytearray(make_image("PNG"))
    png[17] ^= 0x01
    with pytest.raises(FormatError, match="checksum"):
        image_info(bytes(png))
    with pytest.raises(FormatError, match="IHDR"):
        image_info(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    with pytest.raises(FormatError, match="JPEG header"):
        image_info(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 8)
    with pytest.raises(FormatError, match="not a PNG, JPEG, GIF or WebP"):
        image_info(b"BM" + b"\x00" * 60)  # a BMP
    assert image_info(png_header(16384, 3)).width == 16384
    with pytest.raises(FormatError, match="20000x3"):
        image_info(png_header(20000, 3))
    with pytest.raises(FormatError, match="0x3"):
        image_info(png_header(0, 3))
    with pytest.raises(FormatError, match="limit"):
        image_info(png_header(5, 5) + b"\x00" * formats.MAX_IMAGE_BYTES)


def test_data_urls() -> None:
    assert parse_data_url("data:image/PNG;base64,aGk=") == formats.DataURL("image/png", b"hi")
    assert parse_data_url("data:text/plain;charset=utf-8;base64,aG\nk=").data == b"hi"
    assert parse_data_url("data:,a%20b") == formats.DataURL("", b"a b")
    with pytest.raises(FormatError, match="base64"):
        parse_data_url("data:image/png;base64,***")
    with pytest.raises(FormatError, match="','"):
        parse_data_url("data:image/png;base64")


def test_pdf_pages_become_text() -> None:
    pdf = make_pdf(["First page.", "Second page.", ""])
    assert document_text(pdf, filename="a.pdf", media_type="application/pdf") == \
        "First page.\n\nSecond page."


def test_pdf_limits_and_damage() -> None:
    with pytest.raises(FormatError, match=f"101 pages; the limit is {formats.MAX_PDF_PAGES}"):
        document_text(make_pdf(["x"] * 101), filename="long.pdf", media_type=None)
    with pytest.raises(FormatError, match="long.pdf is .* bytes; the limit"):
        document_text(b"%PDF-" + b"\x00" * formats.MAX_DOCUMENT_BYTES, filename="long.pdf",
                      media_type=None)
    pdf = make_pdf(["Some text."])
    with pytest.raises(FormatError, match="cut.pdf is not a readable PDF"):
        document_text(pdf[: len(pdf) // 2], filename="cut.pdf", media_type=None)
    with pytest.raises(FormatError, match="no %PDF header"):
        document_text(b"hello", filename="fake.pdf", media_type=None)
    scanned = FPDF()
    scanned.add_page()
    assert "no extractable text" in document_text(bytes(scanned.output()), filename="s.pdf",
                                                  media_type=None)


def test_encrypted_pdfs() -> None:
    locked = FPDF()
    locked.set_encryption(owner_password="owner", user_password="secret")
    locked.add_page()
    locked.set_font("helvetica", size=12)
    locked.cell(text="Hidden.")
    with pytest.raises(FormatError, match="encrypted"):
        document_text(bytes(locked.output()), filename="locked.pdf", media_type=None)
    opened = FPDF()
    opened.set_encryption(owner_password="owner")  # no user password: anyone may read it
    opened.add_page()
    opened.set_font("helvetica", size=12)
    opened.cell(text="Readable.")
    assert document_text(bytes(opened.output()), filename="open.pdf", media_type=None) == \
        "Readable."


def test_text_files() -> None:
    assert document_text("Grüße\n".encode(), filename="a.txt", media_type=None) == "Grüße\n"
    assert document_text(b"\xef\xbb\xbfbom", filename="a.csv", media_type="text/csv") == "bom"
    assert document_text("hé".encode("utf-16"), filename="a.txt", media_type=None) == "hé"
    assert document_text(b"def f(): pass", filename="x.py", media_type=None) == "def f(): pass"
    with pytest.raises(FormatError, match="not valid UTF-8"):
        document_text(b"abc\x80", filename="a.txt", media_type=None)
    with pytest.raises(FormatError, match="not supported"):
        document_text(b"PK\x03\x04\x00\x00", filename="a.docx", media_type=None)
    with pytest.raises(FormatError, match="input_image"):
        document_text(make_image("PNG"), filename="a.png", media_type="image/png")


def test_guess_type() -> None:
    assert guess_type("x.bin", None, make_pdf(["a"])) == "application/pdf"
    assert guess_type("x.txt", "application/octet-stream", make_image("GIF")) == "image/gif"
    assert guess_type("x", "text/markdown; charset=utf-8", b"# hi") == "text/markdown"
    assert guess_type("notes.md", "application/octet-stream", b"# hi") == "text/markdown"
    assert guess_type("data.jsonl", None, b"{}") in ("application/jsonl", "text/plain")
    assert guess_type("blob", None, b"\x00\x01") == "application/octet-stream"
