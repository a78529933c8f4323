// chatd protocol v1, sans-IO (a mirror of chatd/protocol/): frames in, frames out, no socket.
export * from "./codec.js";
export * from "./connection.js";
export * from "./errors.js";
export * from "./frames.js";
export * from "./limits.js";
