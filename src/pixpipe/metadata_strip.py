"""Metadata removal from a source kept as it is: the container is rewritten, pixels untouched."""

from __future__ import annotations

from PIL import Image

# APPn segments a decoder needs: JFIF's pixel density, the colour profile (possibly split over
# several APP2 segments) and Adobe's colour-transform flag, without which a CMYK or YCCK
# picture decodes to other colours. Every other APPn (EXIF and its GPS, XMP, MPF, Photoshop's
# IPTC, ...) and every comment is dropped.
_JFIF = (0xE0, b"JFIF\x00")
_ICC = (0xE2, b"ICC_PROFILE\x00")
_ADOBE = (0xEE, b"Adobe")
_SOI, _EOI, _SOS, _COM = 0xD8, 0xD9, 0xDA, 0xFE
# Markers without a length: restart markers and TEM.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})

# WebP chunks that carry the picture; EXIF, XMP and any unknown chunk are dropped.
_WEBP_PICTURE_CHUNKS = frozenset({b"VP8X", b"VP8 ", b"VP8L", b"ALPH", b"ANIM", b"ANMF"})
_VP8X_ICC, _VP8X_EXIF, _VP8X_XMP = 0x20, 0x08, 0x04


def strip_metadata(source: bytes, fmt: str, *, keep_icc: bool,
                   orientation: int | None = None) -> bytes | None:
    """``source`` without EXIF (GPS included), XMP, comments and other metadata.

    The coded picture is copied byte for byte, so it decodes to exactly the same pixels.
    ``keep_icc`` keeps the colour profile; an ``orientation`` other than 1 is written back
    as the only EXIF tag, since the stored picture is only upright with it. None when the
    format is not one this rewrites (AVIF) or the container does not parse.
    """
    exif = _orientation_exif(orientation)
    if fmt == "jpeg":
        return _strip_jpeg(source, keep_icc, exif)
    if fmt == "webp":
        return _strip_webp(source, keep_icc, exif)
    return None


def _orientation_exif(orientation: int | None) -> bytes | None:
    if orientation is None or orientation == 1:
        return None
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()  # starts with JPEG's b"Exif\0\0"


def _strip_jpeg(source: bytes, keep_icc: bool, exif: bytes | None) -> bytes | None:
    if not source.startswith(b"\xff\xd8"):
        return None
    kept: list[bytes] = []
    size = len(source)
    position = 2
    while position < size:
        if source[position] != 0xFF:
            return None
        while position < size and source[position] == 0xFF:  # fill bytes before a marker
            position += 1
        if position >= size:
            return None
        marker = source[position]
        position += 1
        if marker == _EOI:
            # Anything after the first picture (an MPO's other frames, each with its own
            # EXIF) goes too.
            return _assemble_jpeg(kept, exif)
        if marker in _STANDALONE:
            kept.append(bytes((0xFF, marker)))
            continue
        if marker == _SOI or position + 2 > size:
            return None
        length = int.from_bytes(source[position:position + 2], "big")
        end = position + length
        if length < 2 or end > size:
            return None
        if _keep_segment(marker, source[position + 2:end], keep_icc):
            kept.append(bytes((0xFF, marker)) + source[position:end])
        position = end
        if marker == _SOS:
            scan_end = _end_of_scan(source, position)
            if scan_end is None:
                return None
            kept.append(source[position:scan_end])
            position = scan_end
    return None  # no end-of-image marker


def _keep_segment(marker: int, body: bytes, keep_icc: bool) -> bool:
    if marker == _COM:
        return False
    if not 0xE0 <= marker <= 0xEF:
        return True  # tables, frame and scan headers: the picture itself
    if keep_icc and (marker, body[:len(_ICC[1])]) == _ICC:
        return True
    return any((marker, body[:len(signature)]) == (app, signature)
               for app, signature in (_JFIF, _ADOBE))


def _end_of_scan(source: bytes, start: int) -> int | None:
    """Where the entropy-coded data starting at ``start`` ends: at the next real marker."""
    position = start
    while True:
        position = source.find(b"\xff", position)
        if position < 0 or position + 1 >= len(source):
            return None
        following = source[position + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:  # a stuffed 0xFF, a restart
            position += 2
            continue
        return position


def _assemble_jpeg(segments: list[bytes], exif: bytes | None) -> bytes:
    if exif is not None:
        # EXIF's place is right after SOI, or after JFIF's APP0 when there is one.
        at = 1 if segments and segments[0][:2] == b"\xff\xe0" else 0
        segments.insert(at, b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif)
    return b"\xff\xd8" + b"".join(segments) + b"\xff\xd9"


def _strip_webp(source: bytes, keep_icc: bool, exif: bytes | None) -> bytes | None:
    if len(source) < 12 or source[:4] != b"RIFF" or source[8:12] != b"WEBP":
        return None
    riff_end = 8 + int.from_bytes(source[4:8], "little")
    if riff_end > len(source):
        return None
    chunks: list[tuple[bytes, bytes]] = []
    position = 12
    while position < riff_end:
        if position + 8 > riff_end:
            return None
        fourcc = source[position:position + 4]
        length = int.from_bytes(source[position + 4:position + 8], "little")
        end = position + 8 + length + (length & 1)  # chunks are padded to an even length
        if end > riff_end:
            return None
        chunks.append((fourcc, source[position:end]))
        position = end
    if not chunks:
        return None
    if chunks[0][0] != b"VP8X":
        if exif is not None:
            return None  # a simple WebP has no EXIF to carry the orientation
        return source[:riff_end]  # a simple WebP (one VP8 or VP8L chunk) has no metadata
    wanted = _WEBP_PICTURE_CHUNKS | ({b"ICCP"} if keep_icc else set())
    kept = [chunk for fourcc, chunk in chunks if fourcc in wanted]
    header = bytearray(kept[0])
    if len(header) < 9:
        return None
    header[8] &= ~(_VP8X_EXIF | _VP8X_XMP) & 0xFF
    if not keep_icc:
        header[8] &= ~_VP8X_ICC & 0xFF
    if exif is not None:
        header[8] |= _VP8X_EXIF
        body = exif.removeprefix(b"Exif\x00\x00")  # WebP's EXIF chunk holds the TIFF data
        kept.append(b"EXIF" + len(body).to_bytes(4, "little") + body + b"\x00" * (len(body) & 1))
    kept[0] = bytes(header)
    payload = b"WEBP" + b"".join(kept)
    return b"RIFF" + len(payload).to_bytes(4, "little") + payload
