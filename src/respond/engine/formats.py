"""Formats of what users send: data URLs, images (checked from their own headers) and documents
turned into text for the model (PDF through ``pypdf``, text files decoded).

Rules: pure functions on bytes, no I/O; every refusal is a ``FormatError`` whose message is
safe and useful to show to a client ("the PNG header is damaged"), never a library's
traceback. PDF parsing is CPU work: callers run ``document_text`` in a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import mimetypes
import struct
import zlib
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_SIDE = 16384  # pixels, either side
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024
MAX_PDF_PAGES = 100

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")

# Declared types read as text besides text/*: structured text formats and source code.
_TEXT_TYPES = {
    "application/json", "application/ld+json", "application/xml", "application/x-yaml",
    "application/yaml", "application/toml", "application/x-toml", "application/javascript",
    "application/x-javascript", "application/typescript", "application/x-sh",
    "application/x-python", "application/sql", "application/csv", "application/x-ndjson",
    "application/jsonl", "application/xhtml+xml", "application/x-tex", "application/rtf",
}
_TEXT_SUFFIXES = {
    ".txt", ".md", ".markdown", ".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".xml", ".yaml",
    ".yml", ".toml", ".ini", ".cfg", ".conf", ".log", ".html", ".htm", ".css", ".js", ".ts",
    ".py", ".rb", ".go", ".rs", ".java", ".kt", ".c", ".h", ".cpp", ".hpp", ".cs", ".php",
    ".sh", ".sql", ".tex", ".rst", ".swift", ".scala", ".r", ".lua", ".pl", ".vue", ".svelte",
}


class FormatError(ValueError):
    """The content cannot be used; the message says why, for the client."""


# -- data URLs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataURL:
    media_type: str  # lower-cased, without parameters; "" when the URL names none
    data: bytes


def is_data_url(value: str) -> bool:
    return value[:5].lower() == "data:"


def parse_data_url(value: str) -> DataURL:
    """``data:[<type>][;param...][;base64],<data>`` decoded (RFC 2397)."""
    header, comma, payload = value[5:].partition(",")
    if not comma:
        raise FormatError("The data URL has no ',' before its data.")
    params = [p.strip() for p in header.split(";")]
    media_type = params[0].lower()
    if "base64" in (p.lower() for p in params[1:]):
        return DataURL(media_type, decode_base64(payload))
    return DataURL(media_type, unquote_to_bytes(payload))


def decode_base64(payload: str) -> bytes:
    """Standard base64 (whitespace ignored); a malformed payload is a ``FormatError``."""
    compact = "".join(payload.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError("The data is not valid base64.") from None


def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


# -- images -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageInfo:
    media_type: str
    width: int
    height: int


def image_info(data: bytes) -> ImageInfo:
    """The type (from the magic bytes) and size (from the headers) of an image, checked
    against the limits; ``FormatError`` for anything else or a damaged header."""
    if len(data) > MAX_IMAGE_BYTES:
        raise FormatError(f"The image is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}.")
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        info = _png(data)
    elif data.startswith(b"\xff\xd8\xff"):
        info = _jpeg(data)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        info = _gif(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        info = _webp(data)
    else:
        raise FormatError("The image is not a PNG, JPEG, GIF or WebP image (judged by its "
                          "first bytes).")
    if not (0 < info.width <= MAX_IMAGE_SIDE and 0 < info.height <= MAX_IMAGE_SIDE):
        raise FormatError(f"The image is {info.width}x{info.height} pixels; each side must be "
                          f"between 1 and {MAX_IMAGE_SIDE}.")
    return info


def _png(data: bytes) -> ImageInfo:
    # signature, then the IHDR chunk: length 13, type, width, height, 5 more bytes, CRC
    if len(data) < 33 or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise FormatError("The PNG header is damaged: it does not start with an IHDR chunk.")
    if zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]:
        raise FormatError("The PNG header is damaged: its IHDR checksum does not match.")
    width, height = struct.unpack(">II", data[16:24])
    return ImageInfo("image/png", width, height)


# JPEG markers that carry the frame size: SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes) -> ImageInfo:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2:
            break
        if marker in _SOF:
            if pos + 9 > len(data) or length < 7:
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return ImageInfo("image/jpeg", width, height)
        pos += 2 + length
    raise FormatError("The JPEG header is damaged: no frame header gives the image's size.")


def _gif(data: bytes) -> ImageInfo:
    if len(data) < 13:
        raise FormatError("The GIF header is damaged: it is too short.")
    width, height = struct.unpack("<HH", data[6:10])
    return ImageInfo("image/gif", width, height)


def _webp(data: bytes) -> ImageInfo:
    chunk = data[12:16]
    body = data[20:]
    if chunk == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", body[6:10])
        return ImageInfo("image/webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
        bits = int.from_bytes(body[1:5], "little")
        return ImageInfo("image/webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X" and len(body) >= 10:
        width = int.from_bytes(body[4:7], "little") + 1
        height = int.from_bytes(body[7:10], "little") + 1
        return ImageInfo("image/webp", width, height)
    raise FormatError("The WebP header is damaged: no VP8, VP8L or VP8X chunk gives its size.")


# -- documents --------------------------------------------------------------------------------


def guess_type(filename: str | None, declared: str | None, data: bytes) -> str:
    """The content type of a file: its magic bytes first, then the declared type (unless it
    is the generic octet-stream), then the file name's extension."""
    sniffed = sniff_type(data)
    if sniffed is not None:
        return sniffed
    declared = (declared or "").split(";")[0].strip().lower()
    if declared and declared != "application/octet-stream":
        return declared
    guessed = mimetypes.guess_type(filename or "", strict=False)[0]
    if guessed:
        return guessed
    if _suffix(filename) in _TEXT_SUFFIXES:
        return "text/plain"
    return "application/octet-stream"


def sniff_type(data: bytes) -> str | None:
    """The type the first bytes show (PDF and the four image types), or None."""
    if b"%PDF-" in data[:1024]:
        return "application/pdf"
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
          (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))


def _suffix(filename: str | None) -> str:
    name = (filename or "").lower()
    return name[name.rfind("."):] if "." in name else ""


def _is_text_type(media_type: str, filename: str | None) -> bool:
    return (media_type.startswith("text/") or media_type in _TEXT_TYPES
            or media_type.endswith(("+json", "+xml")) or _suffix(filename) in _TEXT_SUFFIXES)


def document_text(data: bytes, *, filename: str | None, media_type: str | None) -> str:
    """The text of a document for the model: a PDF's pages, or a text file decoded.
    ``FormatError`` for a damaged PDF, an undecodable text or an unsupported type."""
    name = filename or "the file"
    if len(data) > MAX_DOCUMENT_BYTES:
        raise FormatError(f"{name} is {len(data)} bytes; the limit for files is "
                          f"{MAX_DOCUMENT_BYTES}.")
    media_type = (media_type or "").split(";")[0].strip().lower()
    if b"%PDF-" in data[:1024]:
        return pdf_text(data, name)
    if media_type == "application/pdf" or _suffix(filename) == ".pdf":
        raise FormatError(f"{name} is not a valid PDF: it has no %PDF header.")
    if media_type in IMAGE_TYPES or media_type.startswith(("image/", "audio/", "video/")):
        raise FormatError(f"{name} is of type {media_type}, which is not read as a document. "
                          "Send images as input_image parts.")
    text = _decoded(data)
    if text is None:
        if _is_text_type(media_type, filename):
            raise FormatError(f"{name} is not valid UTF-8 (or UTF-16) text.")
        kind = f"type {media_type}" if media_type else "an unknown type"
        raise FormatError(f"{name} is of {kind}, which is not supported: send a PDF or a text "
                          "file (plain text, Markdown, CSV, JSON, code...).")
    return text


def _decoded(data: bytes) -> str | None:
    """Text from UTF-8 (BOM or not) or BOM-marked UTF-16; None for anything else, or for
    bytes that decode but hold control characters no text file has."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        return None
    if any(ch in text for ch in "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x7f"):
        return None
    return text


def pdf_text(data: bytes, name: str = "the PDF") -> str:
    """The text of every page, pages separated by a blank line. Blocking and CPU-bound."""
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise FormatError(f"{name} is encrypted with a password; send it unencrypted.")
        count = len(reader.pages)
        if count == 0:
            raise FormatError(f"{name} is not a readable PDF: it has no pages.")
        if count > MAX_PDF_PAGES:
            raise FormatError(f"{name} has {count} pages; the limit is {MAX_PDF_PAGES}.")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except FormatError:
        raise
    except FileNotDecryptedError:
        raise FormatError(f"{name} is encrypted with a password; send it unencrypted.") from None
    except Exception as exc:  # noqa: BLE001 - any failure of the parser means a bad PDF
        log.info("could not read a PDF: %r", exc)
        raise FormatError(f"{name} is not a readable PDF: it is damaged or truncated "
                          f"({type(exc).__name__}).") from None
    text = "\n\n".join(page for page in pages if page)
    if not text:
        return "(This PDF has no extractable text: its pages may be scanned images.)"
    return text
