// The TTN payload formatter against the golden vectors of the Python codec.
// Run: node --test tests/node_firmware/
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const vm = require("node:vm");

const FORMATTER = path.join(__dirname, "..", "..", "node_firmware", "ttn_formatter.js");
const vectors = JSON.parse(fs.readFileSync(path.join(__dirname, "vectors.json"), "utf8"));
const { decodeUplink, encodeDownlink, decodeDownlink } = require(FORMATTER);

// How each Python error class shows in the formatter's error message.
const ERROR_PATTERNS = {
  PayloadLengthError: /payload length/,
  ReservedModeError: /mode \d is reserved/,
  FragmentIndexError: /fragment index \d+ is out of range/,
  UnknownPortError: /FPort \d+ is not part of the protocol/,
  FieldValueError: /threshold|mode|start pixel|last is|compressed bit/,
  CompressedDataError: /compressed data: byte \d+/,
};

function hexToBytes(hex) {
  const out = [];
  for (let i = 0; i < hex.length; i += 2) out.push(parseInt(hex.slice(i, i + 2), 16));
  return out;
}

test("the formatter runs as a plain script, as pasted into the TTN console", () => {
  // No module, no require: the console evaluates the file and calls the functions by name.
  const source = fs.readFileSync(FORMATTER, "utf8");
  const sandbox = {};
  vm.createContext(sandbox);
  vm.runInContext(source, sandbox);
  assert.equal(typeof sandbox.decodeUplink, "function");
  assert.equal(typeof sandbox.encodeDownlink, "function");
  assert.equal(typeof sandbox.decodeDownlink, "function");
  const out = sandbox.decodeUplink({ bytes: hexToBytes("0100003219"), fPort: 2 });
  assert.equal(out.data.threshold, 50);
});

test("the vectors cover every kind of payload", () => {
  assert.equal(vectors.protocol_version, 1);
  assert.ok(vectors.uplinks.some((v) => v.decoded.type === "fragment" && v.decoded.mode === "slow"));
  assert.ok(vectors.uplinks.some((v) => v.decoded.type === "fragment" && v.decoded.mode === "fast"));
  assert.ok(vectors.uplinks.some((v) => v.decoded.type === "status"));
  assert.ok(vectors.uplinks.some((v) => v.decoded.type === "fragment" && v.decoded.pixels.includes(null)));
  const kinds = new Set(vectors.invalid_uplinks.map((v) => v.error));
  for (const kind of ["PayloadLengthError", "ReservedModeError", "FragmentIndexError", "UnknownPortError"]) {
    assert.ok(kinds.has(kind), kind);
  }
});

test("PROTOCOL.md's pixel pair 0F AF 83 decodes to 25.0 and -12.5", () => {
  const v = vectors.uplinks[0];
  assert.equal(v.hex.slice(6, 12), "0FAF83");
  const out = decodeUplink({ bytes: hexToBytes(v.hex), fPort: 1 });
  assert.deepEqual(out.data.pixels.slice(0, 2), [25.0, -12.5]);
});

test("pixel pairs decode as the Python codec packs them", () => {
  for (const pair of vectors.pixel_pairs) {
    const header = [0x00, 0x00, 0x18];
    const bytes = header.concat(hexToBytes(pair.hex));
    for (let i = 0; i < 15; i++) bytes.push(0, 0, 0);
    const out = decodeUplink({ bytes, fPort: 1 });
    assert.deepEqual(out.errors, []);
    assert.deepEqual(out.data.pixels.slice(0, 2), pair.celsius);
  }
});

for (const v of vectors.uplinks) {
  test(`decodeUplink: ${v.name}`, () => {
    const out = decodeUplink({ bytes: hexToBytes(v.hex), fPort: v.f_port });
    assert.deepEqual(out.errors, []);
    assert.deepEqual(out.data, v.decoded);
    if (v.warns) assert.ok(out.warnings.length > 0, "expected a warning");
    else assert.deepEqual(out.warnings, []);
  });
}

for (const v of vectors.invalid_uplinks) {
  test(`decodeUplink rejects: ${v.name}`, () => {
    const out = decodeUplink({ bytes: hexToBytes(v.hex), fPort: v.f_port });
    assert.equal(out.data, undefined);
    assert.equal(out.errors.length, 1);
    assert.match(out.errors[0], ERROR_PATTERNS[v.error]);
  });
}

for (const v of vectors.downlinks) {
  test(`decodeDownlink: ${v.name}`, () => {
    const out = decodeDownlink({ bytes: hexToBytes(v.hex), fPort: v.f_port });
    assert.deepEqual(out.errors, []);
    assert.deepEqual(out.data, v.data);
    if (v.warns) assert.ok(out.warnings.length > 0, "expected a warning");
  });
  if (!v.warns) {
    test(`encodeDownlink: ${v.name}`, () => {
      const out = encodeDownlink({ data: v.data });
      assert.deepEqual(out.errors, []);
      assert.equal(out.fPort, 10);
      assert.deepEqual(out.bytes, hexToBytes(v.hex));
    });
  }
}

for (const v of vectors.invalid_downlinks) {
  test(`decodeDownlink rejects: ${v.name}`, () => {
    const out = decodeDownlink({ bytes: hexToBytes(v.hex), fPort: v.f_port });
    assert.equal(out.data, undefined);
    assert.ok(out.errors.length > 0);
    assert.match(out.errors[0], ERROR_PATTERNS[v.error]);
  });
}

for (const v of vectors.invalid_settings) {
  test(`encodeDownlink rejects: ${v.name}`, () => {
    const out = encodeDownlink({ data: v.data });
    assert.equal(out.bytes, undefined);
    assert.ok(out.errors.length > 0);
    assert.match(out.errors.join("; "), ERROR_PATTERNS[v.error]);
  });
}

test("encodeDownlink accepts booleans for the fan", () => {
  assert.deepEqual(encodeDownlink({ data: { fan: true, mode: "fast", threshold: 50 } }).bytes, [0x81, 0x00, 0x32]);
  assert.deepEqual(encodeDownlink({ data: { fan: false, mode: "slow", threshold: -5 } }).bytes, [0x00, 0xff, 0xfb]);
});

test("encodeDownlink names every bad or missing field", () => {
  const out = encodeDownlink({ data: { fan: "maybe", mode: 1, threshold: 12.5 } });
  assert.equal(out.bytes, undefined);
  assert.equal(out.errors.length, 3);
  assert.match(out.errors[0], /fan/);
  assert.match(out.errors[1], /mode/);
  assert.match(out.errors[2], /threshold/);
  const missing = encodeDownlink({ data: {} });
  assert.equal(missing.errors.length, 3);
  assert.match(encodeDownlink({ data: { fan: "on", mode: "slow", threshold: "50" } }).errors[0], /threshold/);
  assert.ok(encodeDownlink({}).errors.length > 0);
});

test("encodeDownlink warns about unknown fields but still encodes", () => {
  const out = encodeDownlink({ data: { fan: "off", mode: "slow", threshold: 40, colour: "red" } });
  assert.deepEqual(out.bytes, [0x00, 0x00, 0x28]);
  assert.equal(out.warnings.length, 1);
});

test("decodeDownlink rejects other ports", () => {
  assert.ok(decodeDownlink({ bytes: [0x81, 0x00, 0x32], fPort: 11 }).errors.length > 0);
});

test("encodeDownlink and decodeDownlink round-trip every threshold", () => {
  for (let t = -40; t <= 150; t++) {
    for (const mode of ["slow", "fast"]) {
      for (const fan of ["on", "off"]) {
        const data = { fan, mode, threshold: t };
        const enc = encodeDownlink({ data });
        assert.deepEqual(decodeDownlink({ bytes: enc.bytes, fPort: enc.fPort }).data, data);
      }
    }
  }
});

test("encodeDownlink and decodeDownlink round-trip every compressed step", () => {
  for (const step of [0.1, 0.2, 0.5, 1.0]) {
    const data = { fan: "on", mode: "compressed", threshold: 45, step };
    const enc = encodeDownlink({ data });
    assert.deepEqual(enc.errors, []);
    assert.equal(enc.bytes.length, 4);
    assert.deepEqual(decodeDownlink({ bytes: enc.bytes, fPort: 10 }).data, data);
  }
  assert.match(encodeDownlink({ data: { fan: "on", mode: "compressed", threshold: 4, step: 0.3 } }).errors[0], /step/);
});
