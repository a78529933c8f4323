"""Hard limits of protocol v1. Every decoder enforces them before trusting input."""

from typing import Final

PROTOCOL_VERSION: Final = 1

LENGTH_PREFIX_SIZE: Final = 4  # TCP framing: unsigned 32-bit big-endian length
MAX_FRAME_SIZE: Final = 1024 * 1024  # bytes of one msgpack frame body
MAX_HELLO_SIZE: Final = 4096  # bytes of a frame before Welcome (Hello fits: token <= 2048)
# Maps and arrays in one frame (decoding work is bounded by these, not only by bytes): a
# client frame has a few (a Send with 16 media references: 18); a server frame at most a
# history page's (200 items, each with its media).
MAX_CONTAINERS_FROM_CLIENT: Final = 64
MAX_CONTAINERS_FROM_SERVER: Final = 8192
MAX_BODY_SIZE: Final = 64 * 1024  # opaque message body
MAX_ID_LEN: Final = 64  # user, device, group and client message ids
MAX_CONV_LEN: Final = 2 * MAX_ID_LEN + 3
MAX_TOKEN_LEN: Final = 2048
MAX_TEXT_LEN: Final = 256  # names, reasons, error messages, mime types
MAX_LIST_LEN: Final = 4096  # any array (members, seqs, users)
MAX_MAP_LEN: Final = 32  # any map (frames, media refs, events)
MAX_MEDIA_PER_MESSAGE: Final = 16
MAX_PREVIEW_SIZE: Final = 8192  # inline preview of one image (body + previews <= MAX_BODY_SIZE)
MAX_HISTORY_PAGE: Final = 200
MAX_UINT: Final = 2**63 - 1
