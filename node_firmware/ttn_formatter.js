// The Things Stack payload formatter for the thermal nodes: PROTOCOL.md version 1.
//
// Paste this whole file into the TTN console (Applications > your app > Payload formatters >
// Uplink and Downlink, formatter type "Custom Javascript formatter"). Plain ES5: no modules,
// no require at top level. The last line exports the functions for Node.js tests only.
//
// Uplinks:   FPort 1 thermal fragment, FPort 2 node status.
// Downlinks: FPort 10 settings {fan: "on"|"off", mode: "slow"|"fast", threshold: -40..150}.

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
var MODES = ["slow", "fast"];
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

function decodeFragment(bytes) {
  if (bytes.length < HEADER_BYTES) {
    return failure(
      "payload length: a fragment is at least " + HEADER_BYTES + " bytes, got " + bytes.length
    );
  }
  var modeBits = bytes[0] >> 6;
  if (modeBits > 1) {
    return failure("byte 0: mode " + modeBits + " is reserved (0 slow, 1 fast)");
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
  if (bytes[1] & 0x3e) {
    warnings.push("byte 1: reserved bits 5..1 are set (ignored)");
  }
  return {
    data: {
      type: "status",
      version: bytes[0],
      fan_requested: onOff(bytes[1] & 0x80),
      fan_running: onOff(bytes[1] & 0x40),
      mode: MODES[bytes[1] & 0x01],
      threshold: signed16(bytes[2], bytes[3]),
      ambient: ambientOf(bytes[4])
    },
    warnings: warnings,
    errors: []
  };
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
    errors.push('mode must be "slow" or "fast", got ' + JSON.stringify(data.mode));
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
        key !== "fan" && key !== "mode" && key !== "threshold") {
      warnings.push("unknown field " + JSON.stringify(key) + " ignored");
    }
  }
  if (errors.length) {
    return { errors: errors, warnings: warnings };
  }
  var raw = t & 0xffff;
  return {
    bytes: [fanBit | modeBit, (raw >> 8) & 0xff, raw & 0xff],
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
  if (bytes.length !== SETTINGS_BYTES) {
    return failure(
      "payload length: settings are " + SETTINGS_BYTES + " bytes, got " + bytes.length
    );
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
  return {
    data: { fan: onOff(bytes[0] & 0x80), mode: MODES[bytes[0] & 0x01], threshold: threshold },
    warnings: warnings,
    errors: []
  };
}

if (typeof module !== "undefined") module.exports = { decodeUplink, encodeDownlink, decodeDownlink };
