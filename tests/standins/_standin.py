"""Shared code for the test stand-ins of geth 1.13.15, bootnode and ethstats-server.

Test-only: lives under tests/, never shipped. Python 3.11 standard library only, and only cheap
imports at module level (the stand-ins must start fast).

Contents:
  * keccak256 (the Ethereum one, not NIST SHA3) and secp256k1 public-key derivation, pure Python;
  * Go `flag` package parsing (also what urfave/cli v2 uses underneath for geth);
  * geth's log formats (terminal, logfmt, json) and utils.Fatalf;
  * fault switches read from the environment and from a JSON file re-read while running;
  * the STANDIN_*_RECORD invocation record;
  * an RFC 6455 websocket client (WsClient), primus helpers and ethstats_dashboard().
"""

import json
import os
import sys
import threading
import time

# ---------------------------------------------------------------------------------------------
# Keccak-256 (Ethereum flavour: pad byte 0x01, not SHA3's 0x06; hashlib's sha3_256 is the other
# one and OpenSSL's KECCAK-256 is not always there). Keccak-f[1600] is generated once, on first
# use, as straight-line Python over 25 local lanes: about 0.25 ms per permutation, so a 600-byte
# block header (5 permutations) hashes in ~1.3 ms.

_KECCAK_F = None


def _keccak_f_source():
    rot = [[0] * 5 for _ in range(5)]
    x, y = 1, 0
    for t in range(24):
        rot[x][y] = ((t + 1) * (t + 2) // 2) % 64
        x, y = y, (2 * x + 3 * y) % 5
    rcs, r = [], 1
    for _ in range(24):
        c = 0
        for j in range(7):
            r = ((r << 1) ^ ((r >> 7) * 0x71)) % 256
            if r & 2:
                c ^= 1 << ((1 << j) - 1)
        rcs.append(c)
    names = ["a%d%d" % (x, y) for y in range(5) for x in range(5)]  # lane (x, y) is s[x + 5y]
    w = ["def f1600(s, M=0xFFFFFFFFFFFFFFFF):", "    " + ", ".join(names) + " = s",
         "    for rc in (%s,):" % ", ".join("0x%X" % c for c in rcs)]
    for x in range(5):
        w.append("        c%d = a%d0 ^ a%d1 ^ a%d2 ^ a%d3 ^ a%d4" % ((x,) * 6))
    for x in range(5):
        p, q = (x + 4) % 5, (x + 1) % 5
        w.append("        d%d = c%d ^ (((c%d << 1) | (c%d >> 63)) & M)" % (x, p, q, q))
    for x in range(5):
        for y in range(5):
            w.append("        a%d%d ^= d%d" % (x, y, x))
    for x in range(5):  # rho and pi: b[y][2x+3y] = rot(a[x][y])
        for y in range(5):
            nx, ny, rr = y, (2 * x + 3 * y) % 5, rot[x][y]
            if rr == 0:
                w.append("        b%d%d = a%d%d" % (nx, ny, x, y))
            else:
                w.append("        b%d%d = ((a%d%d << %d) | (a%d%d >> %d)) & M" % (nx, ny, x, y, rr, x, y, 64 - rr))
    for y in range(5):  # chi
        for x in range(5):
            w.append("        a%d%d = b%d%d ^ ((b%d%d ^ M) & b%d%d)" % (x, y, x, y, (x + 1) % 5, y, (x + 2) % 5, y))
    w.append("        a00 ^= rc")
    w.append("    return [" + ", ".join(names) + "]")
    return "\n".join(w) + "\n"


def keccak256(data: bytes) -> bytes:
    global _KECCAK_F
    f = _KECCAK_F
    if f is None:
        scope = {}
        exec(compile(_keccak_f_source(), "<keccak-f1600>", "exec"), scope)
        f = _KECCAK_F = scope["f1600"]
    rate = 136
    pad = rate - len(data) % rate
    msg = bytes(data) + (b"\x81" if pad == 1 else b"\x01" + bytes(pad - 2) + b"\x80")
    s = [0] * 25
    for off in range(0, len(msg), rate):
        lanes = memoryview(msg)[off:off + rate].cast("Q") if _LITTLE else None
        for i in range(17):
            s[i] ^= lanes[i] if lanes is not None else int.from_bytes(msg[off + 8 * i:off + 8 * i + 8], "little")
        s = f(s)
    return b"".join(s[i].to_bytes(8, "little") for i in range(4))


_LITTLE = sys.byteorder == "little"


# ---------------------------------------------------------------------------------------------
# RLP (Ethereum's recursive length prefix): items are bytes or lists of items.


def rlp_int(n: int) -> bytes:
    """An unsigned integer as RLP wants it: minimal big-endian, 0 is the empty string."""
    return n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""


def _rlp_len(n: int, short: int) -> bytes:
    if n < 56:
        return bytes([short + n])
    b = rlp_int(n)
    return bytes([short + 55 + len(b)]) + b


def rlp_encode(item) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        if len(item) == 1 and item[0] < 0x80:
            return bytes(item)
        return _rlp_len(len(item), 0x80) + bytes(item)
    if isinstance(item, int):
        return rlp_encode(rlp_int(item))
    body = b"".join(rlp_encode(x) for x in item)
    return _rlp_len(len(body), 0xC0) + body


def rlp_list_payload(payload: bytes) -> bytes:
    """The list whose already-encoded items are `payload`."""
    return _rlp_len(len(payload), 0xC0) + payload


class RlpError(ValueError):
    """A decode error, with go-ethereum's rlp package text where it has one ('unexpected EOF', ...)."""


def rlp_item_at(buf, pos: int, end=None):
    """The RLP item starting at buf[pos]: (is_list, payload_start, item_end). Raises RlpError."""
    if end is None:
        end = len(buf)
    if pos >= end:
        raise RlpError("unexpected EOF")
    b = buf[pos]
    if b < 0x80:
        return False, pos, pos + 1
    if b < 0xB8:
        size, start, is_list = b - 0x80, pos + 1, False
        if size == 1 and start < end and buf[start] < 0x80:
            raise RlpError("rlp: non-canonical size information")
    elif b < 0xC0:
        n = b - 0xB7
        if pos + 1 + n > end:
            raise RlpError("unexpected EOF")
        size, start, is_list = int.from_bytes(buf[pos + 1:pos + 1 + n], "big"), pos + 1 + n, False
        if buf[pos + 1] == 0 or size < 56:
            raise RlpError("rlp: non-canonical size information")
    elif b < 0xF8:
        size, start, is_list = b - 0xC0, pos + 1, True
    else:
        n = b - 0xF7
        if pos + 1 + n > end:
            raise RlpError("unexpected EOF")
        size, start, is_list = int.from_bytes(buf[pos + 1:pos + 1 + n], "big"), pos + 1 + n, True
        if buf[pos + 1] == 0 or size < 56:
            raise RlpError("rlp: non-canonical size information")
    if start + size > end:
        raise RlpError("unexpected EOF")
    return is_list, start, start + size


def rlp_split(buf, start: int, end: int):
    """The (is_list, payload_start, item_end, item_start) of each item of a list payload buf[start:end]."""
    items, pos = [], start
    while pos < end:
        try:
            is_list, s, e = rlp_item_at(buf, pos, end)
        except RlpError as err:
            if str(err) == "unexpected EOF":  # inside a list the list's size is the limit
                raise RlpError("rlp: value size exceeds available input length") from None
            raise
        items.append((is_list, s, e, pos))
        pos = e
    return items


def go_duration(sec: float) -> str:
    """time.Duration.String() of a duration in seconds: 1.5s, 12.345678ms, 2m3.5s, 0s."""
    ns = int(round(sec * 1e9))
    if ns == 0:
        return "0s"
    neg, ns = ns < 0, abs(ns)
    if ns < 1000:
        s = "%dns" % ns
    elif ns < 1_000_000:
        s = ("%d.%03d" % divmod(ns, 1000)).rstrip("0").rstrip(".") + "\u00b5s"
    elif ns < 1_000_000_000:
        s = ("%d.%06d" % divmod(ns, 1_000_000)).rstrip("0").rstrip(".") + "ms"
    else:
        whole, frac = divmod(ns, 1_000_000_000)
        h, rem = divmod(whole, 3600)
        m, sec_ = divmod(rem, 60)
        s = ("%d.%09d" % (sec_, frac)).rstrip("0").rstrip(".") + "s"
        if h or m:
            s = "%dm" % m + s
        if h:
            s = "%dh" % h + s
    return "-" + s if neg else s


# ---------------------------------------------------------------------------------------------
# secp256k1

SECP_P = 2**256 - 2**32 - 977
SECP_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP_G = (
    0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
    0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8,
)


def _ec_add(p, q):
    if p is None:
        return q
    if q is None:
        return p
    if p[0] == q[0]:
        if (p[1] + q[1]) % SECP_P == 0:
            return None
        lam = 3 * p[0] * p[0] * pow(2 * p[1], -1, SECP_P) % SECP_P
    else:
        lam = (q[1] - p[1]) * pow(q[0] - p[0], -1, SECP_P) % SECP_P
    x = (lam * lam - p[0] - q[0]) % SECP_P
    return (x, (lam * (p[0] - x) - p[1]) % SECP_P)


def ec_mul(k: int, point=SECP_G):
    """Scalar multiplication k*point (double-and-add). Returns None for the point at infinity."""
    result = None
    addend = point
    while k:
        if k & 1:
            result = _ec_add(result, addend)
        addend = _ec_add(addend, addend)
        k >>= 1
    return result


def pubkey_from_priv(priv: bytes) -> bytes:
    """64-byte uncompressed public key (X||Y, without the 0x04 prefix), as geth's node IDs."""
    d = int.from_bytes(priv, "big")
    if not 0 < d < SECP_N:
        raise ValueError("invalid private key")
    x, y = ec_mul(d)
    return x.to_bytes(32, "big") + y.to_bytes(32, "big")


def address_from_pub(pub64: bytes) -> str:
    return "0x" + keccak256(pub64)[12:].hex()


def checksum_address(addr: str) -> str:
    """EIP-55 mixed-case form (what geth's common.Address.Hex() prints in logs)."""
    a = addr.lower().removeprefix("0x")
    h = keccak256(a.encode()).hex()
    return "0x" + "".join(c.upper() if c.isalpha() and int(h[i], 16) >= 8 else c for i, c in enumerate(a))


def go_quote_byte(b: int) -> str:
    """fmt's %q of a byte (a rune literal)."""
    if b == 0x27:
        return "'\\''"
    if b == 0x5C:
        return "'\\\\'"
    if 0x20 <= b < 0x7F:
        return "'" + chr(b) + "'"
    named = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v"}
    if b in named:
        return "'" + named[b] + "'"
    if b < 0x80:
        return "'\\x%02x'" % b
    return "'\\u%04x'" % b


def go_hex_decode(s: str):
    """encoding/hex.DecodeString semantics. Returns (bytes, None) or (None, ('byte', b) | ('length',))."""
    raw = s.encode("latin-1", "replace")
    hexdigits = b"0123456789abcdefABCDEF"
    n = len(raw) - (len(raw) % 2)
    for i in range(0, n, 2):
        for b in raw[i:i + 2]:
            if b not in hexdigits:
                return None, ("byte", b)
    if len(raw) % 2:
        if raw[-1] not in hexdigits:
            return None, ("byte", raw[-1])
        return None, ("length",)
    return bytes.fromhex(s), None


def hex_to_ecdsa(hexkey: str) -> bytes:
    """crypto.HexToECDSA of geth: returns the 32-byte key or raises ValueError with geth's message."""
    b, err = go_hex_decode(hexkey)
    if err and err[0] == "byte":
        raise ValueError("invalid hex character %s in private key" % go_quote_byte(err[1]))
    if err:
        raise ValueError("invalid hex data for private key")
    if len(b) * 8 != 256:
        raise ValueError("invalid length, need 256 bits")
    d = int.from_bytes(b, "big")
    if d >= SECP_N:
        raise ValueError("invalid private key, >=N")
    if d == 0:
        raise ValueError("invalid private key, zero or negative")
    return b


def load_ecdsa(path: str) -> bytes:
    """crypto.LoadECDSA of geth 1.13: 64 hex chars, at most two trailing newline characters."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(go_os_error("open", path, e)) from None
    buf = bytearray()
    i = 0
    while len(buf) < 64:
        if i >= len(data) or data[i] < ord("!"):
            break
        buf.append(data[i])
        i += 1
    if len(buf) != 64:
        raise ValueError("key file too short, want 64 hex characters")
    # readASCII consumed the byte that stopped it (a control char) only when it stopped early; here
    # the buffer is full, so checkKeyFileEnd sees everything after the 64 chars.
    rest = data[i:]
    for k, b in enumerate(rest):
        if b not in (0x0A, 0x0D):
            raise ValueError("invalid character %s at end of key file" % go_quote_byte(b))
        if k >= 2:
            raise ValueError("key file too long, want 64 hex characters")
    return hex_to_ecdsa(buf.decode("latin-1"))


def go_os_error(op: str, path: str, e: OSError) -> str:
    """Go's *PathError text: 'open /x: no such file or directory'."""
    import errno as _errno

    msgs = {
        _errno.ENOENT: "no such file or directory",
        _errno.EACCES: "permission denied",
        _errno.EISDIR: "is a directory",
        _errno.ENOTDIR: "not a directory",
        _errno.EEXIST: "file exists",
        _errno.EROFS: "read-only file system",
        _errno.ENOSPC: "no space left on device",
    }
    return "%s %s: %s" % (op, path, msgs.get(e.errno, (e.strerror or str(e)).lower()))


# ---------------------------------------------------------------------------------------------
# Go `flag` package parsing (geth's urfave/cli v2 uses it underneath; bootnode uses it directly).


class FlagError(Exception):
    """A parse error with Go's exact message (e.g. 'flag provided but not defined: -foo')."""


class HelpRequested(Exception):
    """-h / -help given to a FlagSet that does not define them (Go returns flag.ErrHelp)."""


_BOOL_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_BOOL_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def go_parse_bool(s):
    if s in _BOOL_TRUE:
        return True
    if s in _BOOL_FALSE:
        return False
    raise ValueError("parse error")


def go_parse_int(s, unsigned=False, bits=64):
    """strconv.ParseInt/ParseUint with base 0 (0x, 0o, 0b, leading-0 octal, '_' after a prefix)."""
    t = s
    neg = False
    if not unsigned and t[:1] in ("+", "-"):
        neg = t[0] == "-"
        t = t[1:]
    if not t:
        raise ValueError("parse error")
    base = 10
    low = t.lower()
    if low.startswith("0x"):
        base, t = 16, t[2:]
    elif low.startswith("0o"):
        base, t = 8, t[2:]
    elif low.startswith("0b"):
        base, t = 2, t[2:]
    elif len(t) > 1 and t[0] == "0":
        base, t = 8, t[1:]
    if "_" in t:
        if base == 10 or t.startswith("_") or t.endswith("_") or "__" in t:
            raise ValueError("parse error")
        t = t.replace("_", "")
    if not t:
        raise ValueError("parse error")
    try:
        v = int(t, base)
    except ValueError:
        raise ValueError("parse error") from None
    if neg:
        v = -v
    if unsigned:
        if v >= 1 << bits:
            raise ValueError("value out of range")
    elif not -(1 << (bits - 1)) <= v < (1 << (bits - 1)):
        raise ValueError("value out of range")
    return v


_DUR_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_parse_duration(s):
    """time.ParseDuration; returns seconds as float or raises ValueError('parse error')."""
    import re

    orig = s
    neg = False
    if s[:1] in ("+", "-"):
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError("parse error")
    total = 0.0
    pat = re.compile(r"([0-9]*(?:\.[0-9]*)?)([a-z\u00b5\u03bc]+)")
    pos = 0
    while pos < len(s):
        m = pat.match(s, pos)
        if not m or m.group(1) in ("", ".") or m.group(2) not in _DUR_UNITS:
            raise ValueError("parse error")
        total += float(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    del orig
    return -total if neg else total


class FlagSpec:
    __slots__ = ("name", "kind", "default", "usage", "aliases", "check")

    def __init__(self, name, kind="string", default=None, usage="", aliases=(), check=None):
        self.name = name
        self.kind = kind  # bool string int uint float duration big slice
        self.default = default
        self.usage = usage
        self.aliases = tuple(aliases)
        self.check = check  # optional callable(value) raising ValueError(msg) (flag.Value.Set errors)


def convert_flag_value(spec, value):
    """Converts like flag.Value.Set; raises ValueError(go message suffix)."""
    k = spec.kind
    if k == "bool":
        return go_parse_bool(value)
    if k == "int":
        return go_parse_int(value)
    if k == "uint":
        return go_parse_int(value, unsigned=True)
    if k == "float":
        try:
            return float(value.replace("_", "x") if "_" in value else value)
        except ValueError:
            raise ValueError("parse error") from None
    if k == "duration":
        return go_parse_duration(value)
    if k == "big":
        v = value
        try:
            if v.lower().startswith("0x"):
                n = int(v[2:], 16)
            else:
                if not v or not (v.isdigit()):
                    raise ValueError
                n = int(v)
        except ValueError:
            raise ValueError("invalid integer syntax") from None
        if n >= 1 << 256:
            raise ValueError("invalid integer syntax")
        return n
    if spec.check is not None:
        spec.check(value)
    return value


def go_flag_parse(args, specs, values=None, present=None):
    """Parses `args` exactly like Go's flag.FlagSet.Parse (ContinueOnError).

    specs: dict name -> FlagSpec (aliases must also be keys). Returns the remaining (non-flag) args.
    `values` receives canonical-name -> value; `present` the set of canonical names given.
    Raises FlagError with Go's message, or HelpRequested for an undefined -h/-help.
    """
    if values is None:
        values = {}
    if present is None:
        present = set()
    args = list(args)
    while args:
        s = args[0]
        if len(s) < 2 or s[0] != "-":
            break
        minuses = 1
        if s[1] == "-":
            minuses = 2
            if len(s) == 2:
                args.pop(0)
                break
        name = s[minuses:]
        if not name or name[0] in "-=":
            raise FlagError("bad flag syntax: %s" % s)
        args.pop(0)
        has_value = False
        value = ""
        eq = name.find("=", 1)
        if eq > 0:
            value = name[eq + 1:]
            name = name[:eq]
            has_value = True
        spec = specs.get(name)
        if spec is None:
            if name in ("help", "h"):
                raise HelpRequested()
            raise FlagError("flag provided but not defined: -%s" % name)
        if spec.kind == "bool":
            if has_value:
                try:
                    v = go_parse_bool(value)
                except ValueError as e:
                    raise FlagError("invalid boolean value %s for -%s: %s" % (go_quote(value), name, e)) from None
            else:
                v = True
        else:
            if not has_value and args:
                value = args.pop(0)
                has_value = True
            if not has_value:
                raise FlagError("flag needs an argument: -%s" % name)
            try:
                v = convert_flag_value(spec, value)
            except ValueError as e:
                raise FlagError("invalid value %s for flag -%s: %s" % (go_quote(value), name, e)) from None
        if spec.kind == "slice":
            values.setdefault(spec.name, []).append(v)
        else:
            values[spec.name] = v
        present.add(spec.name)
    return args


def go_quote(s: str) -> str:
    """strconv.Quote (close enough for ASCII and common escapes)."""
    return json.dumps(s, ensure_ascii=False).replace("\\u007f", "\\x7f")


# ---------------------------------------------------------------------------------------------
# geth logging


class Hash(str):
    """A 32-byte hash value: abbreviated in terminal format (6bd5e6..9f0c0b), full in json/logfmt."""


class Duration(float):
    """Seconds; printed like common.PrettyDuration."""


class Age(float):
    """A unix timestamp; printed like common.PrettyAge (time since)."""


class Bytes(float):
    """A byte count printed like common.StorageSize (e.g. 16.00MiB)."""


def pretty_duration(sec: float) -> str:
    ns = int(round(sec * 1e9))
    if ns == 0:
        return "0s"
    if ns < 1000:
        return "%dns" % ns
    if ns < 1_000_000:
        v, unit = ns / 1e3, "\u00b5s"
    elif ns < 1_000_000_000:
        v, unit = ns / 1e6, "ms"
    else:
        v, unit = ns / 1e9, "s"
        if v >= 60:
            m, s = divmod(v, 60)
            if m >= 60:
                h, m = divmod(m, 60)
                return "%dh%dm%ss" % (h, m, ("%.3f" % s).rstrip("0").rstrip("."))
            return "%dm%ss" % (m, ("%.3f" % s).rstrip("0").rstrip("."))
    txt = ("%.3f" % v).rstrip("0").rstrip(".")
    return txt + unit


def pretty_age(ts: float) -> str:
    diff = time.time() - ts
    if diff < 1:
        return "0"
    units = [(12 * 30 * 86400, "y"), (30 * 86400, "mo"), (7 * 86400, "w"), (86400, "d"), (3600, "h"), (60, "m"), (1, "s")]
    out, prec = "", 0
    for size, sym in units:
        if diff > size:
            out += "%d%s" % (diff // size, sym)
            diff %= size
            prec += 1
            if prec >= 3:
                break
    return out


def storage_size(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return "%.2f%s" % (n / size, unit)
    return "%.2fB" % n


def _commas(n: int) -> str:
    if -99999 <= n <= 99999:
        return str(n)
    return "{:,}".format(n)


def _needs_quoting(s: str) -> bool:
    for ch in s:
        if ch in ' ="' or ch < " " or ch > "~":
            return True
    return False


_LEVELS = {"crit": (0, "CRIT ", "crit"), "error": (1, "ERROR", "eror"), "warn": (2, "WARN ", "warn"),
           "info": (3, "INFO ", "info"), "debug": (4, "DEBUG", "debug"), "trace": (5, "TRACE", "trace")}


class GethLogger:
    """geth 1.13.15's log handlers: terminal (default, also when not a tty), logfmt, json."""

    TERM_MSG_JUST = 40
    TERM_CTX_MAX_PADDING = 40

    def __init__(self, fmt="terminal", verbosity=3, stream=None, files=()):
        self.fmt = fmt
        self.verbosity = verbosity
        self.stream = stream if stream is not None else sys.stderr
        self.files = list(files)
        self.lock = threading.RLock()  # re-entrant: the SIGTERM handler logs on the main thread
        self.padding = {}

    def _term_value(self, v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, Hash):
            h = v.removeprefix("0x")
            return "%s..%s" % (h[:6], h[-6:]) if len(h) == 64 else str(v)
        if isinstance(v, Duration):
            return pretty_duration(v)
        if isinstance(v, Age):
            return pretty_age(v)
        if isinstance(v, Bytes):
            return storage_size(v)
        if isinstance(v, int):
            return _commas(v)
        if isinstance(v, float):
            return "%.3f" % v
        if v is None:
            return "<nil>"
        if isinstance(v, (list, tuple)):
            return "[" + " ".join(str(x) for x in v) + "]"
        s = str(v)
        return go_quote(s) if _needs_quoting(s) else s

    def _json_value(self, v):
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, Hash):
            return str(v)
        if isinstance(v, Duration):
            return pretty_duration(v)
        if isinstance(v, Age):
            return pretty_age(v)
        if isinstance(v, Bytes):
            return storage_size(v)
        if isinstance(v, (int, float)):
            return v
        if isinstance(v, (list, tuple)):
            return [self._json_value(x) for x in v]
        return str(v)

    def enabled(self, lvl):
        return _LEVELS[lvl][0] <= self.verbosity

    def log(self, lvl, msg, *kv):
        if not self.enabled(lvl):
            return
        now = time.time()
        pairs = [(str(kv[i]), kv[i + 1] if i + 1 < len(kv) else None) for i in range(0, len(kv), 2)]
        if self.fmt == "json":
            obj = {"t": rfc3339nano(now), "lvl": _LEVELS[lvl][2], "msg": msg}
            for k, v in pairs:
                obj[k] = self._json_value(v)
            line = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        elif self.fmt == "logfmt":
            parts = ["t=" + rfc3339ms(now), "lvl=" + _LEVELS[lvl][2], "msg=" + (go_quote(msg) if _needs_quoting(msg) else msg)]
            for k, v in pairs:
                parts.append("%s=%s" % (k, self._term_value(v) if not isinstance(v, Hash) else str(v)))
            line = " ".join(parts)
        else:
            lt = time.localtime(now)
            stamp = time.strftime("%m-%d|%H:%M:%S", lt) + ".%03d" % int((now % 1) * 1000)
            line = "%s[%s] %s" % (_LEVELS[lvl][1], stamp, msg)
            if pairs and len(msg) < self.TERM_MSG_JUST:
                line += " " * (self.TERM_MSG_JUST - len(msg))
            for i, (k, v) in enumerate(pairs):
                val = self._term_value(v)
                line += " %s=%s" % (k, val)
                if i < len(pairs) - 1:
                    pad = self.padding.get(k, 0)
                    n = len(val)
                    if pad < n <= self.TERM_CTX_MAX_PADDING:
                        pad = n
                        self.padding[k] = pad
                    if pad > n:
                        line += " " * (pad - n)
        self.write_line(line)

    def write_line(self, line):
        with self.lock:
            for out in [self.stream] + self.files:
                try:
                    out.write(line + "\n")
                    out.flush()
                except (OSError, ValueError):
                    pass

    def info(self, msg, *kv):
        self.log("info", msg, *kv)

    def warn(self, msg, *kv):
        self.log("warn", msg, *kv)

    def error(self, msg, *kv):
        self.log("error", msg, *kv)

    def debug(self, msg, *kv):
        self.log("debug", msg, *kv)


def rfc3339nano(t: float) -> str:
    ns = int(t * 1e9) % 1_000_000_000
    lt = time.localtime(t)
    frac = ("%09d" % ns).rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", lt) + ("." + frac if frac else "") + _tz(lt)


def rfc3339ms(t: float) -> str:
    lt = time.localtime(t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", lt) + ".%03d" % int((t % 1) * 1000) + _tz(lt)


def _tz(lt) -> str:
    off = lt.tm_gmtoff or 0
    if off == 0:
        return "Z"
    sign = "+" if off > 0 else "-"
    off = abs(off)
    return "%s%02d:%02d" % (sign, off // 3600, (off % 3600) // 60)


def same_file(a, b) -> bool:
    try:
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
        return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
    except (OSError, ValueError, AttributeError):
        return False


def fatalf(msg: str, code: int = 1):
    """geth's utils.Fatalf: 'Fatal: ...' on stdout AND stderr (once if they are the same file), exit 1."""
    line = "Fatal: " + msg + "\n"
    outs = [sys.stderr] if same_file(sys.stdout, sys.stderr) else [sys.stdout, sys.stderr]
    for out in outs:
        try:
            out.write(line)
            out.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


# ---------------------------------------------------------------------------------------------
# Fault switches and invocation records


class Faults:
    """Fault switches: env STANDIN_<PROG>_<KEY> overridden by a JSON file re-read every 0.5 s.

    Keys in the file are the env names lowercased without the prefix, e.g. {"crash_after": 2}.
    """

    def __init__(self, prefix: str, file_path=None):
        self.prefix = prefix
        self.file_path = file_path
        self.file_values = {}
        self.file_mtime = None
        self.lock = threading.RLock()  # re-entrant: the SIGTERM handler reads switches on the main thread
        self._load_file()

    def set_file(self, path):
        with self.lock:
            self.file_path = path
        self._load_file()

    def _load_file(self):
        path = self.file_path
        if not path:
            return
        try:
            st = os.stat(path)
        except OSError:
            with self.lock:
                self.file_values, self.file_mtime = {}, None
            return
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key == self.file_mtime:
            return
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            return  # keep the previous values while a writer is mid-way
        with self.lock:
            self.file_values = {str(k).lower(): v for k, v in data.items()}
            self.file_mtime = key

    def start_polling(self, interval=0.5):
        def loop():
            while True:
                time.sleep(interval)
                self._load_file()

        threading.Thread(target=loop, name="faults", daemon=True).start()

    def raw(self, key):
        with self.lock:
            if key in self.file_values:
                return self.file_values[key]
        return os.environ.get(self.prefix + key.upper())

    def number(self, key, default=None):
        v = self.raw(key)
        if v is None or v == "":
            return default
        try:
            return float(v)
        except (TypeError, ValueError):
            return default

    def flag(self, key) -> bool:
        v = self.raw(key)
        if isinstance(v, bool):
            return v
        if v is None:
            return False
        return str(v).strip().lower() not in ("", "0", "false", "no", "off")


def write_record(path, program, argv):
    """Appends one JSON line describing this invocation (what a supervisor actually passed)."""
    if not path:
        return
    rec = {
        "program": program,
        "argv": list(argv),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": sorted(os.getgroups()),
        "cwd": os.getcwd(),
        "env_keys": sorted(os.environ.keys()),
        "umask": _umask(),
        "time": time.time(),
    }
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
    except OSError as e:
        sys.stderr.write("standin: cannot write record file %s: %s\n" % (path, e))


def _umask():
    m = os.umask(0)
    os.umask(m)
    return "%04o" % m


def die_by_signal(signum):
    """Terminate the way a process without a handler for `signum` does (wait status: signaled)."""
    import signal as _signal

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    _signal.signal(signum, _signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(5)
    os._exit(128 + signum)


# ---------------------------------------------------------------------------------------------
# A small RFC 6455 websocket client (what geth's ethstats service dials with gorilla/websocket),
# the primus conventions goerli/ethstats-server speaks over it, and a dashboard reader for tests.

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_READ_LIMIT = 15 * 1024 * 1024  # ethstats.go messageSizeLimit (gorilla SetReadLimit)

_WS_CLOSE_NAMES = {1000: "normal", 1001: "going away", 1002: "protocol error", 1003: "unsupported data",
                   1005: "no status", 1006: "abnormal closure", 1007: "invalid payload data",
                   1008: "policy violation", 1009: "message too big", 1010: "mandatory extension missing",
                   1011: "internal server error", 1012: "service restart", 1013: "try again later",
                   1015: "TLS handshake error"}


class WsError(Exception):
    """A websocket failure; str() is the text gorilla/websocket (or Go's net package) would give."""


class WsClosed(WsError):
    """The connection ended: a close frame (code, reason) or EOF (1006, 'unexpected EOF')."""

    def __init__(self, code, reason=""):
        self.code, self.reason = code, reason
        text = "websocket: close %d" % code
        if code in _WS_CLOSE_NAMES:
            text += " (%s)" % _WS_CLOSE_NAMES[code]
        if reason:
            text += ": " + reason
        super().__init__(text)


def _go_errno_text(e):
    import errno as _errno

    names = {_errno.ECONNREFUSED: "connection refused", _errno.ECONNRESET: "connection reset by peer",
             _errno.EPIPE: "broken pipe", _errno.EHOSTUNREACH: "no route to host",
             _errno.ENETUNREACH: "network is unreachable", _errno.ETIMEDOUT: "connection timed out"}
    if getattr(e, "errno", None) in names:
        return names[e.errno]
    s = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return s[:1].lower() + s[1:]


class WsClient:
    """RFC 6455 client, standard library only. One reader and one writer thread may use it at
    once (sends are serialised by a lock; close() may be called from any thread).

      connect(host, port, path="/", timeout=5, tls=False, headers=None)
      send_json(obj)            one masked text frame with the compact JSON of obj
      recv_json(timeout=None)   next complete message, parsed; answers pings; raises WsClosed on a
                                close frame or EOF, TimeoutError on timeout, WsError otherwise
      close(frame=True)         close frame 1000 (frame=False: just drop the TCP connection, which
                                is what gorilla's Conn.Close and so geth do), then close the socket
    """

    def __init__(self):
        import threading as _threading

        self.sock = None
        self.status = None
        self.local = self.remote = ""
        self._buf = bytearray()
        self._wlock = _threading.Lock()
        self._closed = False
        self._close_sent = False
        self._frags = None  # (opcode, bytearray) of a fragmented message in progress

    # --- handshake
    def connect(self, host, port, path="/", timeout=5.0, tls=False, headers=None):
        import base64
        import hashlib
        import socket

        deadline = time.monotonic() + timeout
        hostport = "%s:%d" % (host, port)
        try:
            infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
        except socket.gaierror:
            raise WsError("dial tcp: lookup %s: no such host" % host) from None
        fam, _t, _p, _c, addr = infos[0]
        dial = "dial tcp %s" % (("[%s]:%d" % addr[:2]) if fam == socket.AF_INET6 else "%s:%d" % addr[:2])
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                sock.connect(addr)
            except socket.timeout:
                raise WsError(dial + ": i/o timeout") from None
            except OSError as e:
                raise WsError("%s: connect: %s" % (dial, _go_errno_text(e))) from None
            if tls:
                import ssl

                try:
                    sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
                except ssl.SSLError as e:
                    raise WsError("tls: %s" % (e.reason or e)) from None
            self.sock = sock
            self.local = "%s:%d" % sock.getsockname()[:2]
            self.remote = "%s:%d" % sock.getpeername()[:2]
            key = base64.b64encode(os.urandom(16)).decode()
            hdrs = [("Host", hostport if port not in ((443,) if tls else (80,)) else host),
                    ("User-Agent", "Go-http-client/1.1"), ("Connection", "Upgrade"), ("Origin", "http://localhost"),
                    ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")]
            for k, v in (headers or {}).items():
                hdrs = [(a, b) for a, b in hdrs if a.lower() != k.lower()] + [(k, v)]
            req = "GET %s HTTP/1.1\r\n" % (path or "/") + "".join("%s: %s\r\n" % kv for kv in hdrs) + "\r\n"
            sock.sendall(req.encode("latin-1"))
            raw = bytearray()
            while b"\r\n\r\n" not in raw:
                if len(raw) > 65536:
                    raise WsError("websocket: bad handshake")
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = sock.recv(4096)
                except socket.timeout:
                    raise WsError("%s: i/o timeout" % dial.replace("dial", "read", 1)) from None
                except OSError as e:
                    raise WsError("read tcp %s->%s: %s" % (self.local, self.remote, _go_errno_text(e))) from None
                if not chunk:
                    raise WsError("unexpected EOF" if raw else "EOF")
                raw += chunk
            head, _sep, rest = bytes(raw).partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            resp = {}
            for ln in lines[1:]:
                k, _c2, v = ln.partition(":")
                resp[k.strip().lower()] = v.strip()
            want = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            if (len(parts) < 2 or parts[1] != "101" or resp.get("upgrade", "").lower() != "websocket"
                    or "upgrade" not in resp.get("connection", "").lower()
                    or resp.get("sec-websocket-accept") != want):
                raise WsError("websocket: bad handshake")
            self.status = int(parts[1])
            self._buf = bytearray(rest)
            sock.settimeout(10.0)  # sends only: receives wait in select()
            return self
        except BaseException:
            self.sock = None
            try:
                sock.close()
            except OSError:
                pass
            raise

    # --- frames
    def _send_frame(self, opcode, payload):
        data = ws_frame(opcode, payload, os.urandom(4))
        with self._wlock:
            if self._closed or self.sock is None:
                raise WsError("write tcp %s->%s: use of closed network connection" % (self.local, self.remote))
            if self._close_sent:
                raise WsError("websocket: close sent")
            if opcode == 0x8:
                self._close_sent = True
            try:
                self.sock.sendall(data)
            except OSError as e:
                raise WsError("write tcp %s->%s: %s" % (self.local, self.remote, _go_errno_text(e))) from None

    def send_text(self, text):
        self._send_frame(0x1, text.encode("utf-8"))

    def send_json(self, obj):
        # gorilla's WriteJSON is encoding/json's Encoder: compact, with a trailing newline
        self.send_text(json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n")

    def _parse_frame(self):
        b = self._buf
        if len(b) < 2:
            return None
        fin, rsv, opcode = b[0] & 0x80, b[0] & 0x70, b[0] & 0x0F
        masked, n, pos = b[1] & 0x80, b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, pos = int.from_bytes(b[2:4], "big"), 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, pos = int.from_bytes(b[2:10], "big"), 10
        if rsv:
            raise WsError("websocket: unexpected reserved bits 0x%02x" % rsv)
        if opcode >= 0x8 and (n > 125 or not fin):
            raise WsError("websocket: control frame length > 125" if n > 125 else "websocket: control frame not final")
        if n > WS_READ_LIMIT:
            raise WsError("websocket: read limit exceeded")
        mask = None
        if masked:
            if len(b) < pos + 4:
                return None
            mask, pos = bytes(b[pos:pos + 4]), pos + 4
        if len(b) < pos + n:
            return None
        payload = bytes(b[pos:pos + n])
        del b[:pos + n]
        if mask:
            payload = _ws_mask(payload, mask)
        return bool(fin), opcode, payload

    def _fill(self, deadline):
        import select
        import socket

        sock = self.sock
        if sock is None or self._closed:
            raise WsError("read tcp %s->%s: use of closed network connection" % (self.local, self.remote))
        pending = getattr(sock, "pending", None)
        if not (pending and pending()):
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                r, _w, _x = select.select([sock], [], [], wait)
            except (OSError, ValueError):
                raise WsError("read tcp %s->%s: use of closed network connection" % (self.local, self.remote)) from None
            if not r:
                raise TimeoutError("read tcp %s->%s: i/o timeout" % (self.local, self.remote))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return
        except (OSError, ValueError) as e:
            if self._closed:
                raise WsError("read tcp %s->%s: use of closed network connection" % (self.local, self.remote)) from None
            raise WsError("read tcp %s->%s: %s" % (self.local, self.remote, _go_errno_text(e))) from None
        if not chunk:
            if self._closed:
                raise WsError("read tcp %s->%s: use of closed network connection" % (self.local, self.remote))
            raise WsClosed(1006, "unexpected EOF")
        self._buf += chunk

    def recv_message(self, timeout=None):
        """Next complete data message as (opcode, bytes); control frames are handled here."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = self._parse_frame()
            if frame is None:
                self._fill(deadline)
                continue
            fin, opcode, payload = frame
            if opcode == 0x9:  # ping -> pong with the same payload
                try:
                    self._send_frame(0xA, payload)
                except WsError:
                    pass
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                reason = payload[2:].decode("utf-8", "replace")
                if not self._close_sent:
                    try:
                        self._send_frame(0x8, payload[:2])
                    except WsError:
                        pass
                raise WsClosed(code, reason)
            if opcode == 0x0:
                if self._frags is None:
                    raise WsError("websocket: continuation after FIN")
                self._frags[1].extend(payload)
                if len(self._frags[1]) > WS_READ_LIMIT:
                    raise WsError("websocket: read limit exceeded")
                if fin:
                    op, data = self._frags
                    self._frags = None
                    return op, bytes(data)
                continue
            if opcode in (0x1, 0x2):
                if self._frags is not None:
                    raise WsError("websocket: data before FIN")
                if fin:
                    return opcode, payload
                self._frags = (opcode, bytearray(payload))
                continue
            raise WsError("websocket: unknown opcode %d" % opcode)

    def recv_json(self, timeout=None):
        _op, data = self.recv_message(timeout)
        return json.loads(data.decode("utf-8"))

    def close(self, frame=True):
        import socket

        if self._closed:
            return
        if frame and self.sock is not None and not self._close_sent:
            try:
                self._send_frame(0x8, (1000).to_bytes(2, "big"))
            except WsError:
                pass
        with self._wlock:
            self._closed = True
            sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass


def ws_frame(opcode, payload, mask=None):
    """One final frame: masked with the 4-byte `mask` as a client sends it, unmasked (None) as a server does."""
    n = len(payload)
    hdr = bytearray([0x80 | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        hdr.append(bit | n)
    elif n < 1 << 16:
        hdr.append(bit | 126)
        hdr += n.to_bytes(2, "big")
    else:
        hdr.append(bit | 127)
        hdr += n.to_bytes(8, "big")
    if not mask:
        return bytes(hdr) + payload
    hdr += mask
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload)) if n < 4096 else _ws_mask(payload, mask)
    return bytes(hdr) + masked


def _ws_mask(data, mask):
    n = len(data)
    if not n:
        return b""
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


def primus_emit(ws, event, *args):
    """primus-emit's message: {"emit": [event, *args]}."""
    ws.send_json({"emit": [event, *args]})


def primus_pong(ws, msg):
    """Answers a primus heartbeat ("primus::ping::<ts>" -> "primus::pong::<ts>", as geth does).
    Returns True when msg was one."""
    if isinstance(msg, str) and msg.startswith("primus::ping::"):
        ws.send_json(msg.replace("ping", "pong"))
        return True
    return False


def ethstats_dashboard(host, port, timeout=5):
    """The nodes an ethstats server lists, read the way its dashboard does: connect to /primus,
    emit "ready", wait for {"emit": ["init", {"nodes": [...]}]} (skipping charts, client-ping and
    other messages). Each node: {"id", "info": {"name", ...}, "stats": {"active", "block": {...}, ...}, ...}."""
    deadline = time.monotonic() + timeout
    ws = WsClient().connect(host, port, "/primus", timeout)
    try:
        primus_emit(ws, "ready")
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("ethstats dashboard %s:%d: no init message within %gs" % (host, port, timeout))
            msg = ws.recv_json(left)
            if primus_pong(ws, msg):
                continue
            if isinstance(msg, dict) and isinstance(msg.get("emit"), list) and msg["emit"][:1] == ["init"]:
                return (msg["emit"][1] if len(msg["emit"]) > 1 else {}).get("nodes", [])
    finally:
        ws.close()
