// Hard limits of protocol v1 (chatd/protocol/limits.py). Decoders enforce them before trusting input.

export const PROTOCOL_VERSION = 1;
export const LENGTH_PREFIX_SIZE = 4; // TCP framing: unsigned 32-bit big-endian length
export const MAX_FRAME_SIZE = 1024 * 1024;
export const MAX_HELLO_SIZE = 4096; // a frame before Welcome (server side)
export const MAX_CONTAINERS_FROM_CLIENT = 64;
export const MAX_CONTAINERS_FROM_SERVER = 8192;
export const MAX_BODY_SIZE = 64 * 1024;
export const MAX_ID_LEN = 64;
export const MAX_CONV_LEN = 2 * MAX_ID_LEN + 3;
export const MAX_TOKEN_LEN = 2048;
export const MAX_TEXT_LEN = 256;
export const MAX_LIST_LEN = 4096;
export const MAX_MAP_LEN = 32;
export const MAX_MEDIA_PER_MESSAGE = 16;
export const MAX_PREVIEW_SIZE = 8192;
export const MAX_HISTORY_PAGE = 200;
export const MAX_UINT = 2 ** 63 - 1; // (a JS number: exact only up to 2^53)
