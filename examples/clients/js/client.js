#!/usr/bin/env node
// A client of the supervise control protocol, written from docs/protocol.md alone.
//
//   const { Client } = require("./client.js");
//   const client = new Client("ipc:///path/to/.supervise/control.sock", { timeoutMs: 5000 });
//   console.log(await client.call("status"));
//   client.close();
//
// or from a shell:  node client.js ENDPOINT CMD [JSON_ARGS] [--timeout=SECONDS] [--retries=N]

"use strict";

const crypto = require("node:crypto");
const zmq = require("zeromq");
const msgpack = require("@msgpack/msgpack");

const PROTOCOL_VERSION = 1;
const MAX_REQUEST_BYTES = 1024 * 1024; // the supervisor's frame limit: larger is dropped unanswered
const MAX_REPLY_BYTES = 64 * 1024 * 1024;
const IDEMPOTENT = new Set(["ping", "status", "help"]); // the only commands worth retrying

/** The supervisor answered `ok: false`; branch on `code` (e.g. "not_found"), never on `message`. */
class RemoteError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "RemoteError";
    this.code = code;
  }
}

/** No reply within the deadline, on every attempt. */
class ClientTimeout extends Error {
  constructor(endpoint, timeoutMs, attempts) {
    const tries = attempts > 1 ? ` (tried ${attempts} times)` : "";
    super(
      `no reply from supervisor at ${endpoint} within ${timeoutMs / 1000} s${tries}; ` +
        "is it running? Start it with 'supervise start CONFIG'",
    );
    this.name = "ClientTimeout";
    this.endpoint = endpoint;
    this.timeoutMs = timeoutMs;
    this.attempts = attempts;
  }
}

/** A reply that breaks the protocol, or a request the supervisor would refuse unread. */
class ProtocolError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "ProtocolError";
    this.code = code;
  }
}

/**
 * One DEALER connection to a supervisor's control socket.
 *
 * Requests take turns: each sends one frame and waits for the reply with its id,
 * discarding late replies to requests that already timed out. On a timeout the
 * socket is closed (linger 0) and a new one opened for the next request (the
 * zguide's "Lazy Pirate"), so a timed-out request never leaves the client stuck.
 */
class Client {
  constructor(endpoint, { timeoutMs = 5000 } = {}) {
    if (!(timeoutMs > 0)) throw new RangeError(`timeoutMs must be a positive number, got ${timeoutMs}`);
    this.endpoint = endpoint;
    this.timeoutMs = timeoutMs;
    this._prefix = crypto.randomBytes(4).toString("hex");
    this._counter = 0;
    this._socket = null;
    this._turn = Promise.resolve(); // requests take turns: one receive at a time per socket
    this._closed = false;
  }

  /** Run `cmd` with `args` and resolve to its result; reject with RemoteError, ClientTimeout or ProtocolError. */
  request(cmd, args = {}, { timeoutMs = this.timeoutMs, retries = 0 } = {}) {
    if (this._closed) return Promise.reject(new Error(`this client of ${this.endpoint} is closed; create a new one`));
    const id = `${this._prefix}-${++this._counter}`;
    const frame = msgpack.encode({ v: PROTOCOL_VERSION, id, cmd, args }, { ignoreUndefined: true });
    if (frame.length > MAX_REQUEST_BYTES) {
      const error = new ProtocolError(
        "too_large",
        `${cmd}: request of ${frame.length} bytes exceeds the supervisor's limit of ${MAX_REQUEST_BYTES} bytes; send less per request`,
      );
      return Promise.reject(error);
    }
    const run = async () => {
      for (let attempt = 1; attempt <= retries + 1; attempt++) {
        const reply = await this._attempt(id, frame, timeoutMs);
        if (reply !== null) {
          if (reply.ok) return reply.result;
          throw new RemoteError(reply.error.code, reply.error.message);
        }
      }
      throw new ClientTimeout(this.endpoint, timeoutMs, retries + 1);
    };
    const result = this._turn.then(run, run);
    this._turn = result.catch(() => {});
    return result;
  }

  /** `request` with keyword-style arguments; retries only idempotent commands, when asked. */
  call(cmd, args = {}, options = {}) {
    const retries = IDEMPOTENT.has(cmd) ? (options.retries ?? 0) : 0;
    return this.request(cmd, args, { ...options, retries });
  }

  ping(options) {
    return this.call("ping", {}, options);
  }

  status(name, options) {
    return this.call("status", name === undefined ? {} : { name }, options);
  }

  /** Close the socket; pending requests fail and the client cannot be used again. */
  close() {
    this._closed = true;
    this._reset();
  }

  async _attempt(id, frame, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    const socket = this._open();
    try {
      socket.sendTimeout = Math.max(0, deadline - Date.now());
      await socket.send(frame);
      for (;;) {
        const remaining = deadline - Date.now();
        if (remaining <= 0) break;
        socket.receiveTimeout = remaining;
        const reply = matchReply(await socket.receive(), id);
        if (reply !== null) return reply;
      }
    } catch (error) {
      if (error.code !== "EAGAIN") {
        this._reset(); // whatever happened, a late reply must not meet the next request
        throw error;
      }
    }
    this._reset(); // Lazy Pirate: drop the request still queued, and any late reply
    return null;
  }

  _open() {
    if (this._socket === null) {
      this._socket = new zmq.Dealer({ linger: 0, maxMessageSize: MAX_REPLY_BYTES });
      this._socket.connect(this.endpoint);
    }
    return this._socket;
  }

  _reset() {
    if (this._socket !== null) {
      this._socket.close();
      this._socket = null;
    }
  }
}

/** The reply in `frames` if it answers request `id` (or has id nil); null for a stale one. */
function matchReply(frames, id) {
  if (frames.length === 2 && frames[0].length === 0) frames = frames.slice(1); // a server treating us as REQ
  if (frames.length !== 1) throw new ProtocolError("malformed", `reply must be exactly 1 frame, got ${frames.length}`);
  let reply;
  try {
    reply = msgpack.decode(frames[0]);
  } catch (error) {
    throw new ProtocolError("malformed", `reply is not valid msgpack: ${error.message}`);
  }
  if (reply === null || typeof reply !== "object" || Array.isArray(reply)) {
    throw new ProtocolError("malformed", "reply must be a map");
  }
  if (reply.v !== PROTOCOL_VERSION) {
    throw new ProtocolError("version", `reply has protocol version ${reply.v}; this client speaks ${PROTOCOL_VERSION}`);
  }
  if (reply.id !== null && reply.id !== id) return null; // a late answer to a request we gave up on
  if (typeof reply.ok !== "boolean" || (!reply.ok && (typeof reply.error !== "object" || reply.error === null))) {
    throw new ProtocolError("bad_request", 'reply needs "ok" (boolean), and "error" {code, message} when ok is false');
  }
  return reply;
}

// -- command line -------------------------------------------------------------

const USAGE = "usage: node client.js ENDPOINT CMD [JSON_ARGS] [--timeout=SECONDS] [--retries=N]";

function parseArgv(argv) {
  const options = { timeoutMs: 5000, retries: 0 };
  const positional = [];
  for (const arg of argv) {
    const flag = /^--(timeout|retries)=(.+)$/.exec(arg);
    if (flag && flag[1] === "timeout") options.timeoutMs = Number(flag[2]) * 1000;
    else if (flag) options.retries = Number(flag[2]);
    else if (arg === "-h" || arg === "--help") return null;
    else positional.push(arg);
  }
  if (positional.length < 2 || positional.length > 3) return null;
  if (!(options.timeoutMs > 0) || !Number.isInteger(options.retries) || options.retries < 0) return null;
  const [endpoint, cmd, json = "{}"] = positional;
  let args;
  try {
    args = JSON.parse(json);
  } catch (error) {
    throw new UsageError(`JSON_ARGS is not valid JSON (${error.message}); e.g. '{"name": "web"}'`);
  }
  if (args === null || typeof args !== "object" || Array.isArray(args)) {
    throw new UsageError(`JSON_ARGS must be a JSON object of argument names to values, e.g. '{"name": "web"}'`);
  }
  return { endpoint, cmd, args, options };
}

class UsageError extends Error {}

// Exit codes as the supervise CLI's: 0 done, 1 refused, 2 bad command line, 3 no supervisor answered.
async function main(argv) {
  let parsed;
  try {
    parsed = parseArgv(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`client.js: ${error.message}`);
    return 2;
  }
  if (parsed === null) {
    console.error(USAGE);
    return 2;
  }
  const { endpoint, cmd, args, options } = parsed;
  const client = new Client(endpoint, { timeoutMs: options.timeoutMs });
  try {
    const result = await client.call(cmd, args, { retries: options.retries });
    console.log(JSON.stringify(result, null, 2));
    return 0;
  } catch (error) {
    if (error instanceof RemoteError || error instanceof ProtocolError) {
      console.error(JSON.stringify({ error: { code: error.code, message: error.message } }));
      return 1;
    }
    if (error instanceof ClientTimeout) {
      console.error(error.message);
      return 3;
    }
    throw error;
  } finally {
    client.close();
  }
}

module.exports = { Client, RemoteError, ClientTimeout, ProtocolError, PROTOCOL_VERSION };

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
