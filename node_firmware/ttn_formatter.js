// The Things Stack payload formatter for the thermal nodes: PROTOCOL.md version 1, with this
// project's compressed mode (mode 2) of docs/protocol.md.
//
// Paste this whole file into the TTN console (Applications > your app > Payload formatters >
// Uplink and Downlink, formatter type "Custom Javascript formatter"). Plain ES5: no modules,
// no require at top level. The last line exports the functions for Node.js tests only.
//
// Uplinks:   FPort 1 thermal fragment, FPort 2 node status.
// Downlinks: FPort 10 settings {fan: "on"|"off", mode: "slow"|"fast"|"compressed",
//            threshold: -40..150, step: 0.1|0.2|0.5|1.0 (compressed only)}.

var FRAGMENT_PORT = 1;
var STATUS_PORT = 2;
var SETTINGS_PORT = 10;
var HEADER_BYTES = 3;
var STATUS_BYTES = 5;
var SETTINGS_BYTES = 3;
var NO_DATA_RAW = -2048; // 0x800: "no data for this pixel"
var AMBIENT_NO_READING = -128; // 0x80
var THRESHOLD_MIN_C = -40;
var THRESHOLD_MAX_C = 150;
var MODES = ["slow", "fast", "compressed"];
// docs/protocol.md "Compressed mode".
var STEPS_TENTHS = [1, 2, 5, 10];
var STEPS = [0.1, 0.2, 0.5, 1.0];
var COMPRESSED_HEADER_BYTES = 6;
var MAX_PAYLOAD_BYTES = 51;
var FRAME_PIXELS = 768;
var COLS = 32;
var RICE_ESCAPE_PREFIX = 3;
var ESCAPE_ORDER_EXTRA = 2;
var ESCAPE_ZEROS_MAX = 16;
var PIXEL_RAW_MAX = 2047;
// Per mode: fragments per frame, grid rows per fragment, pixels per fragment, payload bytes.
var LAYOUT = {
  slow: { fragments: 24, rowsPerFragment: 1, pixels: 32, bytes: 51 },
  fast: { fragments: 2, rowsPerFragment: 3, pixels: 24, bytes: 39 }
};

function signed8(b) {
  return b & 0x80 ? b - 0x100 : b;
}

function signed16(hi, lo) {
  var v = (hi << 8) | lo;
  return v & 0x8000 ? v - 0x10000 : v;
}

function signed12(v) {
  return v & 0x800 ? v - 0x1000 : v;
}

function onOff(bit) {
  return bit ? "on" : "off";
}

function ambientOf(b) {
  var v = signed8(b);
  return v === AMBIENT_NO_READING ? null : v;
}

// PROTOCOL.md "Pixel packing": a[11..4] | a[3..0] b[11..8] | b[7..0]; 0x800 = no data.
function unpackPixels(bytes, start) {
  var out = [];
  for (var k = start; k + 2 < bytes.length; k += 3) {
    var a = signed12((bytes[k] << 4) | (bytes[k + 1] >> 4));
    var b = signed12(((bytes[k + 1] & 0x0f) << 8) | bytes[k + 2]);
    out.push(a === NO_DATA_RAW ? null : a / 10);
    out.push(b === NO_DATA_RAW ? null : b / 10);
  }
  return out;
}

function failure(message) {
  return { errors: [message], warnings: [] };
}

// The prediction of pixel p from pixels start..p-1 (LOCO-I's median edge detector inside a
// fragment; the fragment's first row uses the previous pixel).
function predict(values, p, start) {
  var left = p % COLS > 0;
  var up = p - COLS;
  if (up >= start) {
    var b = values[up];
    if (!left) return b;
    var a = values[p - 1];
    if (up - 1 < start) return (a + b) >> 1;
    var c = values[up - 1];
    if (c >= Math.max(a, b)) return Math.min(a, b);
    if (c <= Math.min(a, b)) return Math.max(a, b);
    return a + b - c;
  }
  return values[p - 1];
}

function unzigzag(m) {
  return m % 2 === 0 ? m / 2 : -(m + 1) / 2;
}

function decodeCompressed(bytes) {
  if (bytes.length < COMPRESSED_HEADER_BYTES || bytes.length > MAX_PAYLOAD_BYTES) {
    return failure(
      "payload length: a compressed fragment is " + COMPRESSED_HEADER_BYTES + ".." +
        MAX_PAYLOAD_BYTES + " bytes, got " + bytes.length
    );
  }
  var last = (bytes[3] & 0x80) !== 0;
  var k = (bytes[3] >> 4) & 0x07;
  var start = ((bytes[3] & 0x0f) << 6) | (bytes[4] >> 2);
  var count = ((bytes[4] & 0x03) << 8) | bytes[5];
  if (count === 0 || start >= FRAME_PIXELS || start + count > FRAME_PIXELS) {
    return failure(
      "bytes 3..5: start pixel " + start + " and count " + count + " must lie within 0.." +
        (FRAME_PIXELS - 1) + " (count at least 1)"
    );
  }
  if (last !== (start + count === FRAME_PIXELS)) {
    return failure(
      "byte 3 bit 7: last is " + (last ? 1 : 0) + " but the pixels end at " + (start + count - 1)
    );
  }
  var stepCode = (bytes[1] >> 5) & 0x03;
  var tenths = STEPS_TENTHS[stepCode];
  var low = Math.floor((-2 * PIXEL_RAW_MAX + tenths) / (2 * tenths));
  var high = Math.floor((2 * PIXEL_RAW_MAX + tenths) / (2 * tenths));
  var total = (bytes.length - COMPRESSED_HEADER_BYTES) * 8;
  var pos = 0;
  var error = null;
  function bit() {
    var i = COMPRESSED_HEADER_BYTES + (pos >> 3);
    var b = (bytes[i] >> (7 - (pos & 7))) & 1;
    pos += 1;
    return b;
  }
  function read(n, pixel) {
    if (pos + n > total) {
      throw "byte " + (COMPRESSED_HEADER_BYTES + (pos >> 3)) +
        ": the bit stream ends inside pixel " + pixel;
    }
    var v = 0;
    for (var i = 0; i < n; i++) v = v * 2 + bit();
    return v;
  }
  function checked(q, pixel) {
    if (q < low || q > high) {
      throw "byte " + (COMPRESSED_HEADER_BYTES + ((pos - 1) >> 3)) + ": pixel " + pixel +
        " decodes outside ±204.7 °C";
    }
    return q;
  }
  function toCelsius(q) {
    return q === null ? null : (q * tenths) / 10;
  }
  var values = [];
  var pixels = [];
  try {
    var raw = read(12, start);
    var first = raw === 0x800 ? null : checked(signed12(raw), start);
    values[start] = first === null ? 0 : first;
    pixels.push(toCelsius(first));
    for (var p = start + 1; p < start + count; p++) {
      var prediction = predict(values, p, start);
      var u = 0;
      while (u < RICE_ESCAPE_PREFIX && read(1, p)) u += 1;
      var q;
      if (u === RICE_ESCAPE_PREFIX) {
        var j = k + ESCAPE_ORDER_EXTRA;
        var zeros = 0;
        while (!read(1, p)) {
          zeros += 1;
          if (zeros > ESCAPE_ZEROS_MAX) {
            throw "byte " + (COMPRESSED_HEADER_BYTES + ((pos - 1) >> 3)) + ": pixel " + p +
              "'s escape code has too many leading 0-bits";
          }
        }
        var v = Math.pow(2, zeros + j) + read(zeros + j, p) - Math.pow(2, j);
        q = v === 0 ? null :
          checked(prediction + unzigzag(v - 1 + RICE_ESCAPE_PREFIX * Math.pow(2, k)), p);
      } else {
        q = checked(prediction + unzigzag(u * Math.pow(2, k) + read(k, p)), p);
      }
      values[p] = q === null ? prediction : q;
      pixels.push(toCelsius(q));
    }
    if (total - pos >= 8) {
      throw "byte " + (COMPRESSED_HEADER_BYTES + ((pos + 7) >> 3)) + ": " +
        ((total - pos) >> 3) + " byte(s) left over after the last pixel";
    }
    while (pos < total) {
      if (bit()) throw "byte " + (bytes.length - 1) + ": the padding bits must be 0";
    }
  } catch (message) {
    error = "compressed data: " + message;
  }
  if (error !== null) return failure(error);
  var rows = [];
  for (var r = Math.floor(start / COLS); r <= Math.floor((start + count - 1) / COLS); r++) {
    rows.push(r);
  }
  return {
    data: {
      type: "fragment",
      mode: "compressed",
      frame_number: bytes[0] & 0x3f,
      fan: onOff(bytes[1] & 0x80),
      index: bytes[1] & 0x1f,
      ambient: ambientOf(bytes[2]),
      last: last,
      step: STEPS[stepCode],
      rice_k: k,
      start: start,
      rows: rows,
      pixels: pixels
    },
    warnings: [],
    errors: []
  };
}

function decodeFragment(bytes) {
  if (bytes.length < HEADER_BYTES) {
    return failure(
      "payload length: a fragment is at least " + HEADER_BYTES + " bytes, got " + bytes.length
    );
  }
  var modeBits = bytes[0] >> 6;
  if (modeBits > 2) {
    return failure("byte 0: mode " + modeBits + " is reserved (0 slow, 1 fast, 2 compressed)");
  }
  if (modeBits === 2) {
    return decodeCompressed(bytes);
  }
  var mode = MODES[modeBits];
  var layout = LAYOUT[mode];
  if (bytes.length !== layout.bytes) {
    return failure(
      "payload length: a " + mode + " fragment is " + layout.bytes + " bytes, got " + bytes.length
    );
  }
  var index = bytes[1] & 0x1f;
  if (index >= layout.fragments) {
    return failure(
      "byte 1: fragment index " + index + " is out of range 0.." + (layout.fragments - 1) +
        " for " + mode + " mode"
    );
  }
  var warnings = [];
  if (bytes[1] & 0x60) {
    warnings.push("byte 1: reserved bits 6..5 are set (ignored)");
  }
  var rows = [];
  for (var r = 0; r < layout.rowsPerFragment; r++) {
    rows.push(index * layout.rowsPerFragment + r);
  }
  return {
    data: {
      type: "fragment",
      mode: mode,
      frame_number: bytes[0] & 0x3f,
      fan: onOff(bytes[1] & 0x80),
      index: index,
      ambient: ambientOf(bytes[2]),
      rows: rows,
      pixels: unpackPixels(bytes, HEADER_BYTES)
    },
    warnings: warnings,
    errors: []
  };
}

function decodeStatus(bytes) {
  if (bytes.length !== STATUS_BYTES) {
    return failure("payload length: a status is " + STATUS_BYTES + " bytes, got " + bytes.length);
  }
  var warnings = [];
  if (bytes[0] !== 1) {
    warnings.push("byte 0: protocol version " + bytes[0] + "; this formatter knows version 1");
  }
  if (bytes[1] & 0x30) {
    warnings.push("byte 1: reserved bits 5..4 are set (ignored)");
  }
  // docs/protocol.md: byte 1 bit 1 = compressed, bits 3..2 its step.
  var compressed = (bytes[1] & 0x02) !== 0;
  var data = {
    type: "status",
    version: bytes[0],
    fan_requested: onOff(bytes[1] & 0x80),
    fan_running: onOff(bytes[1] & 0x40),
    mode: compressed ? "compressed" : MODES[bytes[1] & 0x01],
    threshold: signed16(bytes[2], bytes[3]),
    ambient: ambientOf(bytes[4])
  };
  if (compressed) data.step = STEPS[(bytes[1] >> 2) & 0x03];
  return { data: data, warnings: warnings, errors: [] };
}

function decodeUplink(input) {
  var bytes = (input && input.bytes) || [];
  var fPort = input && input.fPort;
  if (fPort === FRAGMENT_PORT) {
    return decodeFragment(bytes);
  }
  if (fPort === STATUS_PORT) {
    return decodeStatus(bytes);
  }
  return failure("FPort " + fPort + " is not part of the protocol (1 fragment, 2 status)");
}

function isWholeNumber(v) {
  return typeof v === "number" && isFinite(v) && Math.floor(v) === v;
}

function encodeDownlink(input) {
  var data = (input && input.data) || {};
  var errors = [];
  var warnings = [];
  var fan = data.fan;
  var fanBit = 0;
  if (fan === "on" || fan === true) {
    fanBit = 0x80;
  } else if (fan !== "off" && fan !== false) {
    errors.push('fan must be "on" or "off" (or true / false), got ' + JSON.stringify(fan));
  }
  var modeBit = MODES.indexOf(data.mode);
  if (modeBit < 0) {
    errors.push('mode must be "slow", "fast" or "compressed", got ' + JSON.stringify(data.mode));
  }
  var stepCode = 0;
  if (data.mode === "compressed" && data.step !== undefined) {
    stepCode = STEPS.indexOf(data.step);
    if (stepCode < 0) {
      errors.push("step must be 0.1, 0.2, 0.5 or 1.0 °C, got " + JSON.stringify(data.step));
    }
  }
  var t = data.threshold;
  if (!isWholeNumber(t) || t < THRESHOLD_MIN_C || t > THRESHOLD_MAX_C) {
    errors.push(
      "threshold must be a whole number of °C from " + THRESHOLD_MIN_C + " to " +
        THRESHOLD_MAX_C + ", got " + JSON.stringify(t)
    );
  }
  for (var key in data) {
    if (Object.prototype.hasOwnProperty.call(data, key) &&
        key !== "fan" && key !== "mode" && key !== "threshold" &&
        !(key === "step" && data.mode === "compressed")) {
      warnings.push("unknown field " + JSON.stringify(key) + " ignored");
    }
  }
  if (errors.length) {
    return { errors: errors, warnings: warnings };
  }
  var raw = t & 0xffff;
  var out = [fanBit | (modeBit === 2 ? 0 : modeBit), (raw >> 8) & 0xff, raw & 0xff];
  if (modeBit === 2) out.push(0x80 | stepCode); // docs/protocol.md: byte 3 = compressed, step
  return {
    bytes: out,
    fPort: SETTINGS_PORT,
    warnings: warnings,
    errors: []
  };
}

function decodeDownlink(input) {
  var bytes = (input && input.bytes) || [];
  var fPort = input && input.fPort;
  if (fPort !== SETTINGS_PORT) {
    return failure("FPort " + fPort + " is not a settings downlink (FPort 10)");
  }
  if (bytes.length !== SETTINGS_BYTES && bytes.length !== SETTINGS_BYTES + 1) {
    return failure(
      "payload length: settings are " + SETTINGS_BYTES + " bytes (slow, fast) or " +
        (SETTINGS_BYTES + 1) + " (compressed), got " + bytes.length
    );
  }
  if (bytes.length === SETTINGS_BYTES + 1 && !(bytes[3] & 0x80)) {
    return failure("byte 3: lacks the compressed bit 7 (a 4-byte settings downlink is compressed)");
  }
  var threshold = signed16(bytes[1], bytes[2]);
  if (threshold < THRESHOLD_MIN_C || threshold > THRESHOLD_MAX_C) {
    return failure(
      "bytes 1..2: threshold " + threshold + " °C is outside " + THRESHOLD_MIN_C + ".." +
        THRESHOLD_MAX_C
    );
  }
  var warnings = [];
  if (bytes[0] & 0x7e) {
    warnings.push("byte 0: reserved bits 6..1 are set (ignored)");
  }
  var data = { fan: onOff(bytes[0] & 0x80), mode: MODES[bytes[0] & 0x01], threshold: threshold };
  if (bytes.length === SETTINGS_BYTES + 1) {
    data.mode = "compressed";
    data.step = STEPS[bytes[3] & 0x03];
  }
  return { data: data, warnings: warnings, errors: [] };
}

if (typeof module !== "undefined") module.exports = { decodeUplink, encodeDownlink, decodeDownlink };
