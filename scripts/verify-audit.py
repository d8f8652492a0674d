#!/usr/bin/env python3
"""Independent verifier of an LLMKG audit export (format llmkg-audit-export/v1).

Uses only the Python standard library: SHA-256 / SHA-512 from hashlib and an ed25519
signature check written from the curve arithmetic of RFC 8032. The format it checks is
specified in docs/audit-format.md.

Usage: verify-audit.py EXPORT.json
Exit status 0 if every check passes, 1 (with a message on stderr) otherwise.
"""

import base64
import binascii
import hashlib
import json
import sys

FORMAT = "llmkg-audit-export/v1"
MAX_NOTE_LEN = 64 * 1024
MAX_NOTE_SIGNATURES = 100
MAX_ENTRY_LEN = 64 * 1024
MAX_PROOF_LEN = 128
EM_DASH = "\u2014"


class Invalid(Exception):
    """A check failed."""


# ---------------------------------------------------------------------------
# ed25519 (the twisted Edwards curve -x^2 + y^2 = 1 + d x^2 y^2 over GF(2^255 - 19))
# ---------------------------------------------------------------------------

FIELD_P = 2**255 - 19
GROUP_L = 2**252 + 27742317777372353535851937790883648493


def _inv(a):
    return pow(a, FIELD_P - 2, FIELD_P)


CURVE_D = (-121665 * _inv(121666)) % FIELD_P
SQRT_M1 = pow(2, (FIELD_P - 1) // 4, FIELD_P)


def _recover_x(y, sign):
    """The x coordinate for y with the given low bit, or None if y is not on the curve."""
    if y >= FIELD_P:
        return None
    x2 = (y * y - 1) * _inv(CURVE_D * y * y + 1) % FIELD_P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (FIELD_P + 3) // 8, FIELD_P)
    if (x * x - x2) % FIELD_P != 0:
        x = x * SQRT_M1 % FIELD_P
    if (x * x - x2) % FIELD_P != 0:
        return None
    if x & 1 != sign:
        x = FIELD_P - x
    return x


# Points in extended coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z.
_BY = 4 * _inv(5) % FIELD_P
_BX = _recover_x(_BY, 0)
BASE = (_BX, _BY, 1, _BX * _BY % FIELD_P)
NEUTRAL = (0, 1, 1, 0)


def _add(p1, p2):
    """Unified addition on the a = -1 twisted Edwards curve (also doubles)."""
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % FIELD_P
    b = (y1 + x1) * (y2 + x2) % FIELD_P
    c = 2 * CURVE_D * t1 * t2 % FIELD_P
    dd = 2 * z1 * z2 % FIELD_P
    e, f, g, h = b - a, dd - c, dd + c, b + a
    return (e * f % FIELD_P, g * h % FIELD_P, f * g % FIELD_P, e * h % FIELD_P)


def _mul(k, point):
    result = NEUTRAL
    addend = point
    while k:
        if k & 1:
            result = _add(result, addend)
        addend = _add(addend, addend)
        k >>= 1
    return result


def _same_point(p1, p2):
    x1, y1, z1, _ = p1
    x2, y2, z2, _ = p2
    return (x1 * z2 - x2 * z1) % FIELD_P == 0 and (y1 * z2 - y2 * z1) % FIELD_P == 0


def _decode_point(b):
    if len(b) != 32:
        return None
    n = int.from_bytes(b, "little")
    sign = n >> 255
    y = n & ((1 << 255) - 1)
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % FIELD_P)


def ed25519_verify(public_key, message, signature):
    """True if signature (64 bytes) is a valid ed25519 signature of message under public_key."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    a = _decode_point(public_key)
    r = _decode_point(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= GROUP_L:
        return False
    k = int.from_bytes(hashlib.sha512(signature[:32] + public_key + message).digest(), "little")
    k %= GROUP_L
    return _same_point(_mul(s, BASE), _add(r, _mul(k, a)))


# ---------------------------------------------------------------------------
# RFC 6962 / RFC 9162 Merkle trees
# ---------------------------------------------------------------------------


def leaf_hash(entry):
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def tree_root(leaves):
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(tree_root(leaves[:k]), tree_root(leaves[k:]))


def verify_inclusion(leaf, index, size, proof, root):
    if not 0 <= index < size:
        raise Invalid(f"leaf index {index} not below tree size {size}")
    if len(proof) > MAX_PROOF_LEN:
        raise Invalid("proof too long")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise Invalid("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise Invalid("inclusion proof too short")
    if r != root:
        raise Invalid("inclusion proof does not lead to the root")


def verify_consistency(old_size, new_size, old_root, new_root, proof):
    if old_size > new_size:
        raise Invalid("old size larger than new size")
    if len(proof) > MAX_PROOF_LEN:
        raise Invalid("proof too long")
    if old_size == 0:
        if proof or old_root != hashlib.sha256(b"").digest():
            raise Invalid("bad consistency proof from the empty tree")
        return
    if old_size == new_size:
        if proof or old_root != new_root:
            raise Invalid("equal sizes need an empty proof and equal roots")
        return
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    if not path:
        raise Invalid("consistency proof is empty")
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise Invalid("consistency proof too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise Invalid("consistency proof too short")
    if fr != old_root:
        raise Invalid("consistency proof does not lead to the old root")
    if sr != new_root:
        raise Invalid("consistency proof does not lead to the new root")


# ---------------------------------------------------------------------------
# Signed notes, checkpoints, keys
# ---------------------------------------------------------------------------


def b64decode(text, what):
    if not isinstance(text, str):
        raise Invalid(f"{what} is not a string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise Invalid(f"{what} is not standard base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise Invalid(f"{what} is not canonical base64")
    return raw


def decode_hash(text, what):
    raw = b64decode(text, what)
    if len(raw) != 32:
        raise Invalid(f"{what} is not a 32-byte hash")
    return raw


def valid_key_name(name):
    return 0 < len(name.encode()) <= 256 and not any(
        c.isspace() or c == "+" or ord(c) < 0x20 or ord(c) == 0x7F for c in name
    )


def key_id(name, alg, public_key):
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()[:4]


def parse_vkey(vkey, alg, what):
    """Parses name+<8 hex key id>+base64(alg || key); returns (name, key id, public key)."""
    if not isinstance(vkey, str):
        raise Invalid(f"{what} is not a string")
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise Invalid(f"{what} is not name+keyid+key")
    name, id_hex, key_b64 = parts
    if not valid_key_name(name):
        raise Invalid(f"{what} has an invalid name")
    if len(id_hex) != 8 or any(c not in "0123456789abcdefABCDEF" for c in id_hex):
        raise Invalid(f"{what} key id is not 8 hex digits")
    raw = b64decode(key_b64, what)
    if len(raw) != 33 or raw[0] != alg:
        raise Invalid(f"{what} is not a key of type 0x{alg:02x}")
    kid = key_id(name, alg, raw[1:])
    if kid != bytes.fromhex(id_hex):
        raise Invalid(f"{what} key id does not match its name and key")
    return name, kid, raw[1:]


def parse_note(text, what):
    """Returns (body, [(name, key id, signature bytes)]) of a signed note."""
    if not isinstance(text, str):
        raise Invalid(f"{what} is not a string")
    if len(text.encode()) > MAX_NOTE_LEN:
        raise Invalid(f"{what} is too long")
    if any((ord(c) < 0x20 and c != "\n") or ord(c) == 0x7F for c in text):
        raise Invalid(f"{what} holds a control character")
    cut = text.rfind("\n\n")
    if cut < 0:
        raise Invalid(f"{what} has no blank line before its signatures")
    body, sig_block = text[: cut + 1], text[cut + 2 :]
    if not sig_block.endswith("\n"):
        raise Invalid(f"{what} does not end with a newline")
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_NOTE_SIGNATURES:
        raise Invalid(f"{what} has too many signatures")
    sigs = []
    for line in lines:
        if not line.startswith(EM_DASH + " "):
            raise Invalid(f"{what}: signature line does not start with an em dash and a space")
        fields = line[2:].split(" ", 1)
        if len(fields) != 2 or not valid_key_name(fields[0]):
            raise Invalid(f"{what}: malformed signature line")
        raw = b64decode(fields[1], f"{what} signature")
        if len(raw) < 5:
            raise Invalid(f"{what}: signature too short")
        sigs.append((fields[0], raw[:4], raw[4:]))
    return body, sigs


def parse_checkpoint(body, what):
    """Returns (origin, size, root) of a checkpoint body."""
    if not body.endswith("\n"):
        raise Invalid(f"{what} body does not end with a newline")
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise Invalid(f"{what} body has fewer than three lines")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not origin:
        raise Invalid(f"{what} has an empty origin")
    if not size_text.isascii() or not size_text.isdigit() or (len(size_text) > 1 and size_text[0] == "0"):
        raise Invalid(f"{what} size is not a canonical decimal")
    size = int(size_text)
    if size >= 2**64:
        raise Invalid(f"{what} size does not fit 64 bits")
    root = decode_hash(root_text, f"{what} root hash")
    if any(line == "" for line in lines[3:]):
        raise Invalid(f"{what} has an empty extension line")
    return origin, size, root


def check_log_signature(body, sigs, log_key, what):
    name, kid, public_key = log_key
    mine = [s for s in sigs if s[0] == name and s[1] == kid]
    if not mine:
        raise Invalid(f"{what} carries no signature by the log key {name}")
    for _, _, sig in mine:
        if not ed25519_verify(public_key, body.encode(), sig):
            raise Invalid(f"{what}: the log's signature does not verify")


def check_cosignature(body, sigs, witness, what):
    """The timestamp of the witness's valid cosignature, None if there is none."""
    name, kid, public_key = witness
    found = None
    for sname, skid, raw in sigs:
        if sname != name or skid != kid:
            continue
        if len(raw) != 72:
            raise Invalid(f"{what}: cosignature of {name} is not 72 bytes")
        timestamp = int.from_bytes(raw[:8], "big")
        message = f"cosignature/v1\ntime {timestamp}\n".encode() + body.encode()
        if not ed25519_verify(public_key, message, raw[8:]):
            raise Invalid(f"{what}: cosignature of {name} does not verify")
        found = timestamp
    return found


# ---------------------------------------------------------------------------
# The export
# ---------------------------------------------------------------------------

FIELDS = {
    "format",
    "origin",
    "log_key",
    "witness_keys",
    "checkpoint",
    "entries",
    "earlier_checkpoints",
    "inclusion_proofs",
}


def verify_export(doc):
    if not isinstance(doc, dict) or set(doc) != FIELDS:
        raise Invalid("the document does not have exactly the export's fields")
    if doc["format"] != FORMAT:
        raise Invalid(f"unknown format {doc['format']!r}")
    origin = doc["origin"]
    log_key = parse_vkey(doc["log_key"], 0x01, "log key")
    if not isinstance(doc["witness_keys"], list):
        raise Invalid("witness_keys is not a list")
    witnesses = [parse_vkey(k, 0x04, f"witness key {i}") for i, k in enumerate(doc["witness_keys"])]

    # 1-2. The latest checkpoint: the log's signature, the origin, every witness's cosignature.
    body, sigs = parse_note(doc["checkpoint"], "latest checkpoint")
    check_log_signature(body, sigs, log_key, "latest checkpoint")
    cp_origin, size, root = parse_checkpoint(body, "latest checkpoint")
    if cp_origin != origin:
        raise Invalid("latest checkpoint has another origin than the document")
    cosigned = []
    for w in witnesses:
        t = check_cosignature(body, sigs, w, "latest checkpoint")
        if t is None:
            raise Invalid(f"witness {w[0]} did not cosign the latest checkpoint")
        cosigned.append((w[0], t))

    # 3. The entries hash to the root.
    entries = doc["entries"]
    if not isinstance(entries, list) or len(entries) != size:
        raise Invalid(f"expected {size} entries")
    leaves = []
    for i, e in enumerate(entries):
        raw = b64decode(e, f"entry {i}")
        if len(raw) > MAX_ENTRY_LEN:
            raise Invalid(f"entry {i} is too long")
        leaves.append(leaf_hash(raw))
    if tree_root(leaves) != root:
        raise Invalid("the entries do not hash to the latest checkpoint's root")

    # 4. Earlier checkpoints: signed, same origin, valid cosignatures, consistent.
    earlier = doc["earlier_checkpoints"]
    if not isinstance(earlier, list):
        raise Invalid("earlier_checkpoints is not a list")
    for i, item in enumerate(earlier):
        what = f"earlier checkpoint {i}"
        if not isinstance(item, dict) or set(item) != {"checkpoint", "consistency_proof"}:
            raise Invalid(f"{what} does not have exactly its fields")
        e_body, e_sigs = parse_note(item["checkpoint"], what)
        check_log_signature(e_body, e_sigs, log_key, what)
        e_origin, e_size, e_root = parse_checkpoint(e_body, what)
        if e_origin != origin:
            raise Invalid(f"{what} has another origin")
        for w in witnesses:
            check_cosignature(e_body, e_sigs, w, what)
        if not isinstance(item["consistency_proof"], list):
            raise Invalid(f"{what} proof is not a list")
        proof = [decode_hash(h, f"{what} proof") for h in item["consistency_proof"]]
        try:
            verify_consistency(e_size, size, e_root, root, proof)
        except Invalid as err:
            raise Invalid(f"{what}: {err}") from None

    # 5. Inclusion proofs.
    inclusion = doc["inclusion_proofs"]
    if not isinstance(inclusion, list):
        raise Invalid("inclusion_proofs is not a list")
    for i, item in enumerate(inclusion):
        what = f"inclusion proof {i}"
        if not isinstance(item, dict) or set(item) != {"index", "proof"}:
            raise Invalid(f"{what} does not have exactly its fields")
        index = item["index"]
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
            raise Invalid(f"{what}: index out of range")
        if not isinstance(item["proof"], list):
            raise Invalid(f"{what} proof is not a list")
        proof = [decode_hash(h, what) for h in item["proof"]]
        try:
            verify_inclusion(leaves[index], index, size, proof, root)
        except Invalid as err:
            raise Invalid(f"{what} (entry {index}): {err}") from None

    return origin, size, root, cosigned, len(earlier), len(inclusion)


def main(argv):
    if len(argv) != 2:
        print("usage: verify-audit.py EXPORT.json", file=sys.stderr)
        return 2
    try:
        with open(argv[1], "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
        origin, size, root, cosigned, earlier, inclusion = verify_export(doc)
    except Invalid as err:
        print(f"FAIL: {err}", file=sys.stderr)
        return 1
    except (OSError, ValueError, RecursionError) as err:
        print(f"FAIL: cannot read the export: {err}", file=sys.stderr)
        return 1
    print(f"OK: {origin}: {size} entries, root {base64.b64encode(root).decode()}")
    for name, t in cosigned:
        print(f"  cosigned by {name} at {t}")
    print(f"  {earlier} earlier checkpoints consistent, {inclusion} inclusion proofs verified")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
